//! Training parameters of the LightGBM fallback and their translation to LightGBM's.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::GbdtError;

/// The validation metric that early stopping watches (LightGBM's `metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalMetric {
    /// Average precision (PR-AUC): the headline metric for rare fraud. Higher is better.
    AveragePrecision,
    /// ROC-AUC. Higher is better.
    Auc,
    /// Log loss. Lower is better.
    BinaryLogloss,
}

impl EvalMetric {
    /// LightGBM's name of the metric.
    pub fn lightgbm_name(self) -> &'static str {
        match self {
            EvalMetric::AveragePrecision => "average_precision",
            EvalMetric::Auc => "auc",
            EvalMetric::BinaryLogloss => "binary_logloss",
        }
    }
}

/// How the fallback is trained: a binary LightGBM GBDT. Every field has a default
/// (`#[serde(default)]`), so a config file names only what it changes; unknown fields are
/// refused.
///
/// Class imbalance: by default the classes are not reweighted, so predictions stay calibrated
/// probabilities and the decision threshold is chosen on validation data
/// ([`crate::metrics::threshold_for_best_f1`]). Set `scale_pos_weight` (e.g. negatives /
/// positives) or `is_unbalance` (not both) to weight the rare fraud class up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbdtParams {
    /// Boosting rounds at most (fewer with early stopping). Default 300.
    pub num_iterations: u32,
    /// Shrinkage. Default 0.05.
    pub learning_rate: f64,
    /// Leaves per tree. Default 31.
    pub num_leaves: u32,
    /// Minimum rows per leaf. Default 50. (Values below LightGBM's 20 can leave features
    /// unused: the dataset's pre-filter runs with 20.)
    pub min_data_in_leaf: u32,
    /// Share of features tried per tree, in `(0, 1]`. Default 0.8.
    pub feature_fraction: f64,
    /// Share of rows bagged per round, in `(0, 1]`. Default 0.8.
    pub bagging_fraction: f64,
    /// Rebag every this many rounds; 0 turns bagging off. Default 1.
    pub bagging_freq: u32,
    /// L2 regularisation of leaf values. Default 1.0.
    pub lambda_l2: f64,
    /// Weight of positive rows (LightGBM's `scale_pos_weight`), `> 0`. Default 1.0 (none).
    pub scale_pos_weight: f64,
    /// Let LightGBM balance the classes itself. Default false.
    pub is_unbalance: bool,
    /// Seed of every random choice (bagging, feature sampling). Default 42.
    pub seed: u64,
    /// Stop when the validation metric has not improved for this many rounds and roll back
    /// to the best round; only with a validation set. `None` trains every round. Default 30.
    pub early_stopping_rounds: Option<u32>,
    /// The validation metric. Default average precision.
    pub metric: EvalMetric,
    /// Training threads; 0 lets LightGBM (OpenMP) choose. Default 0.
    pub num_threads: u32,
}

impl Default for GbdtParams {
    fn default() -> Self {
        GbdtParams {
            num_iterations: 300,
            learning_rate: 0.05,
            num_leaves: 31,
            min_data_in_leaf: 50,
            feature_fraction: 0.8,
            bagging_fraction: 0.8,
            bagging_freq: 1,
            lambda_l2: 1.0,
            scale_pos_weight: 1.0,
            is_unbalance: false,
            seed: 42,
            early_stopping_rounds: Some(30),
            metric: EvalMetric::AveragePrecision,
            num_threads: 0,
        }
    }
}

fn invalid(field: &'static str, message: String) -> GbdtError {
    GbdtError::InvalidParam { field, message }
}

impl GbdtParams {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), GbdtError> {
        if self.num_iterations == 0 {
            return Err(invalid("num_iterations", "must be at least 1".into()));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(invalid(
                "learning_rate",
                format!("must be > 0, got {}", self.learning_rate),
            ));
        }
        if self.num_leaves < 2 {
            return Err(invalid(
                "num_leaves",
                format!("must be at least 2, got {}", self.num_leaves),
            ));
        }
        for (field, v) in [
            ("feature_fraction", self.feature_fraction),
            ("bagging_fraction", self.bagging_fraction),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(invalid(field, format!("must be in (0, 1], got {v}")));
            }
        }
        if !(self.lambda_l2.is_finite() && self.lambda_l2 >= 0.0) {
            return Err(invalid(
                "lambda_l2",
                format!("must be >= 0, got {}", self.lambda_l2),
            ));
        }
        if !(self.scale_pos_weight.is_finite() && self.scale_pos_weight > 0.0) {
            return Err(invalid(
                "scale_pos_weight",
                format!("must be > 0, got {}", self.scale_pos_weight),
            ));
        }
        if self.is_unbalance && self.scale_pos_weight != 1.0 {
            return Err(invalid(
                "is_unbalance",
                "cannot be combined with scale_pos_weight != 1 (LightGBM refuses both)".into(),
            ));
        }
        if self.early_stopping_rounds == Some(0) {
            return Err(invalid(
                "early_stopping_rounds",
                "must be at least 1 (or absent)".into(),
            ));
        }
        Ok(())
    }

    /// LightGBM's parameters for these settings. `with_valid`: a validation set is attached,
    /// so early stopping (when set) applies. Training is deterministic for a given input,
    /// seed and thread count (`deterministic`, `force_col_wise`).
    pub fn to_lightgbm(&self, with_valid: bool) -> Value {
        let mut p = json!({
            "objective": "binary",
            "boosting": "gbdt",
            "num_iterations": self.num_iterations,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "scale_pos_weight": self.scale_pos_weight,
            "is_unbalance": self.is_unbalance,
            // LightGBM's seeds are C ints: fold the u64 into 31 bits.
            "seed": (self.seed ^ (self.seed >> 31)) & 0x7fff_ffff,
            "metric": self.metric.lightgbm_name(),
            "num_threads": self.num_threads,
            "deterministic": true,
            "force_col_wise": true,
            "verbosity": -1,
        });
        if let (true, Some(rounds)) = (with_valid, self.early_stopping_rounds) {
            p["early_stopping_rounds"] = json!(rounds);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let p = GbdtParams::default();
        p.validate().unwrap();
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"metric\":\"average_precision\""), "{text}");
        let back: GbdtParams = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        let partial: GbdtParams = serde_json::from_str(r#"{"num_leaves": 15}"#).unwrap();
        assert_eq!(partial.num_leaves, 15);
        assert_eq!(partial.learning_rate, 0.05);
        assert!(serde_json::from_str::<GbdtParams>(r#"{"num_leafs": 15}"#).is_err());
    }

    #[test]
    fn bad_fields_are_named() {
        let p = GbdtParams {
            feature_fraction: 0.0,
            ..GbdtParams::default()
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("feature_fraction"), "{e}");
        let p = GbdtParams {
            is_unbalance: true,
            scale_pos_weight: 10.0,
            ..GbdtParams::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("is_unbalance")
        );
    }

    #[test]
    fn early_stopping_only_with_a_validation_set() {
        let p = GbdtParams::default();
        assert!(p.to_lightgbm(false).get("early_stopping_rounds").is_none());
        assert_eq!(p.to_lightgbm(true)["early_stopping_rounds"], 30);
        assert_eq!(p.to_lightgbm(true)["objective"], "binary");
    }
}
