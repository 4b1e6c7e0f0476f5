//! Evaluation metrics for binary fraud scores: PR-AUC (average precision), ROC-AUC, F1 at a
//! threshold, recall at a false-positive-rate budget, the curves behind them, and the choice
//! of a decision threshold on validation data.
//!
//! Conventions, the same everywhere in this module:
//! - A higher score means more likely fraud; a transaction is flagged when
//!   `score >= threshold`.
//! - Equal scores are one group: every sweep over thresholds moves past a whole group at a
//!   time, so the order of tied rows never changes a result.
//! - A metric that is undefined for the data (no positives, or no negatives where the metric
//!   needs them) is an error ([`MetricError::NoPositives`], [`MetricError::NoNegatives`])
//!   from the single-metric functions and `None` in [`Metrics`]: never NaN, so JSON stays valid.
//! - Bad input (scores and labels of different lengths, a NaN score) is an error, never a
//!   panic.
//!
//! All arithmetic is f64; counts are exact integers.

use serde::{Deserialize, Serialize};

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    /// `scores` and `labels` differ in length.
    #[error("{scores} scores but {labels} labels")]
    LengthMismatch {
        /// Length of `scores`.
        scores: usize,
        /// Length of `labels`.
        labels: usize,
    },
    /// A score is NaN (it cannot be ranked).
    #[error("score {index} is NaN")]
    NanScore {
        /// Its index in `scores`.
        index: usize,
    },
    /// The metric needs at least one positive (fraud) label and there is none.
    #[error("no positive labels: the metric is undefined")]
    NoPositives,
    /// The metric needs at least one negative (legitimate) label and there is none.
    #[error("no negative labels: the metric is undefined")]
    NoNegatives,
    /// A false-positive-rate budget outside `[0, 1]` (or NaN).
    #[error("false-positive rate budget {0} is not in [0, 1]")]
    InvalidFpr(f64),
}

/// A binary label: whether a row is positive (fraud).
///
/// Implemented for `bool`, integers (positive when non-zero) and floats (positive when
/// `> 0.5`, so LightGBM's `f32` labels work directly; NaN counts as negative).
pub trait Label: Copy {
    /// Whether this label marks a positive (fraud) row.
    fn is_positive(self) -> bool;
}

impl Label for bool {
    fn is_positive(self) -> bool {
        self
    }
}

macro_rules! int_label {
    ($($t:ty),*) => {$(
        impl Label for $t {
            fn is_positive(self) -> bool {
                self != 0
            }
        }
    )*};
}
int_label!(u8, u16, u32, u64, i8, i16, i32, i64, usize);

impl Label for f32 {
    fn is_positive(self) -> bool {
        self > 0.5
    }
}

impl Label for f64 {
    fn is_positive(self) -> bool {
        self > 0.5
    }
}

/// One group of equal scores, in descending score order, with the running counts after it.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// The group's score: flagging `score >= threshold` includes this group and all before.
    threshold: f64,
    /// Positives in this group.
    pos: u64,
    /// Negatives in this group.
    neg: u64,
    /// Positives with a score `>= threshold`.
    tp: u64,
    /// Negatives with a score `>= threshold`.
    fp: u64,
}

/// The ranking of scores as groups of ties, highest first, with the class totals.
struct Ranking {
    steps: Vec<Step>,
    positives: u64,
    negatives: u64,
}

impl Ranking {
    fn new<L: Label>(scores: &[f64], labels: &[L]) -> Result<Ranking, MetricError> {
        if scores.len() != labels.len() {
            return Err(MetricError::LengthMismatch {
                scores: scores.len(),
                labels: labels.len(),
            });
        }
        if let Some(index) = scores.iter().position(|s| s.is_nan()) {
            return Err(MetricError::NanScore { index });
        }
        let mut order: Vec<(f64, bool)> = scores
            .iter()
            .zip(labels)
            .map(|(&s, &l)| (s, l.is_positive()))
            .collect();
        order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut steps: Vec<Step> = Vec::new();
        let (mut tp, mut fp) = (0u64, 0u64);
        for (score, positive) in order {
            // -0.0 and 0.0 are one score.
            if steps.last().is_none_or(|s| s.threshold != score) {
                steps.push(Step {
                    threshold: score,
                    pos: 0,
                    neg: 0,
                    tp,
                    fp,
                });
            }
            let step = steps.last_mut().expect("pushed above");
            if positive {
                step.pos += 1;
                tp += 1;
            } else {
                step.neg += 1;
                fp += 1;
            }
            step.tp = tp;
            step.fp = fp;
        }
        Ok(Ranking {
            steps,
            positives: tp,
            negatives: fp,
        })
    }

    fn need_positives(&self) -> Result<(), MetricError> {
        if self.positives == 0 {
            Err(MetricError::NoPositives)
        } else {
            Ok(())
        }
    }

    fn need_negatives(&self) -> Result<(), MetricError> {
        if self.negatives == 0 {
            Err(MetricError::NoNegatives)
        } else {
            Ok(())
        }
    }

    /// Average precision: Σ (Rₖ − Rₖ₋₁)·Pₖ over the groups (step-wise, no interpolation).
    /// F1 of flagging `score >= threshold` (the last step at or above it).
    fn f1_at(&self, threshold: f64) -> f64 {
        let (tp, fp) = self
            .steps
            .iter()
            .take_while(|s| s.threshold >= threshold)
            .last()
            .map_or((0, 0), |s| (s.tp, s.fp));
        f1(tp, fp, self.positives)
    }

    fn average_precision(&self) -> Result<f64, MetricError> {
        self.need_positives()?;
        let p = self.positives as f64;
        let ap = self
            .steps
            .iter()
            .filter(|s| s.pos > 0)
            .map(|s| (s.pos as f64 / p) * (s.tp as f64 / (s.tp + s.fp) as f64))
            .sum();
        Ok(ap)
    }

    /// ROC-AUC as the Mann–Whitney statistic: the share of (positive, negative) pairs ranked
    /// correctly, ties counting one half.
    fn roc_auc(&self) -> Result<f64, MetricError> {
        self.need_positives()?;
        self.need_negatives()?;
        let n = self.negatives;
        // Twice the count of correctly ordered pairs, to stay in exact integers.
        let twice: u128 = self
            .steps
            .iter()
            .map(|s| {
                let below = u128::from(n - s.fp);
                u128::from(s.pos) * (2 * below + u128::from(s.neg))
            })
            .sum();
        Ok(twice as f64 / (2.0 * self.positives as f64 * n as f64))
    }

    fn recall_at_fpr(&self, fpr: f64) -> Result<f64, MetricError> {
        if !(0.0..=1.0).contains(&fpr) {
            return Err(MetricError::InvalidFpr(fpr));
        }
        self.need_positives()?;
        self.need_negatives()?;
        let n = self.negatives as f64;
        // Recall only grows down the ranking; keep the last group within the budget.
        let tp = self
            .steps
            .iter()
            .take_while(|s| s.fp as f64 / n <= fpr)
            .last()
            .map_or(0, |s| s.tp);
        Ok(tp as f64 / self.positives as f64)
    }
}

/// `2·tp / (2·tp + fp + fn)`, for `positives > 0`.
fn f1(tp: u64, fp: u64, positives: u64) -> f64 {
    2.0 * tp as f64 / (tp + fp + positives) as f64
}

/// PR-AUC as average precision: `Σ (Rₖ − Rₖ₋₁)·Pₖ` over the distinct score thresholds,
/// highest first (sklearn's `average_precision_score`). In `[0, 1]`; a random ranking scores
/// about the positive rate. Errors without positives.
pub fn pr_auc<L: Label>(scores: &[f64], labels: &[L]) -> Result<f64, MetricError> {
    Ranking::new(scores, labels)?.average_precision()
}

/// ROC-AUC (Mann–Whitney): the probability that a random positive scores above a random
/// negative, ties counting one half. 1 for a perfect ranking, 0 for a reversed one. Errors
/// without positives or without negatives.
pub fn roc_auc<L: Label>(scores: &[f64], labels: &[L]) -> Result<f64, MetricError> {
    Ranking::new(scores, labels)?.roc_auc()
}

/// F1 of flagging `score >= threshold`: `2·tp / (2·tp + fp + fn)`. Errors without positives
/// (F1 is then 0 or undefined, and neither is informative).
pub fn f1_at<L: Label>(scores: &[f64], labels: &[L], threshold: f64) -> Result<f64, MetricError> {
    let r = Ranking::new(scores, labels)?;
    r.need_positives()?;
    Ok(r.f1_at(threshold))
}

/// The highest recall reachable with a false-positive rate `<= fpr` when flagging by a
/// threshold on the score (tied scores flagged together; 0 when even the top group costs too
/// many false positives). `fpr` must be in `[0, 1]`; errors without positives or negatives.
pub fn recall_at_fpr<L: Label>(scores: &[f64], labels: &[L], fpr: f64) -> Result<f64, MetricError> {
    Ranking::new(scores, labels)?.recall_at_fpr(fpr)
}

/// The precision–recall curve as `(recall, precision)` points for plotting: `(0, 1)` first
/// (sklearn's convention), then one point per distinct score, highest score first, ending at
/// recall 1. Errors without positives.
pub fn pr_curve<L: Label>(scores: &[f64], labels: &[L]) -> Result<Vec<(f64, f64)>, MetricError> {
    let r = Ranking::new(scores, labels)?;
    r.need_positives()?;
    let p = r.positives as f64;
    let mut points = Vec::with_capacity(r.steps.len() + 1);
    points.push((0.0, 1.0));
    points.extend(
        r.steps
            .iter()
            .map(|s| (s.tp as f64 / p, s.tp as f64 / (s.tp + s.fp) as f64)),
    );
    Ok(points)
}

/// The ROC curve as `(false-positive rate, true-positive rate)` points for plotting: `(0, 0)`
/// first, then one point per distinct score, highest first, ending at `(1, 1)`. Errors
/// without positives or negatives.
pub fn roc_curve<L: Label>(scores: &[f64], labels: &[L]) -> Result<Vec<(f64, f64)>, MetricError> {
    let r = Ranking::new(scores, labels)?;
    r.need_positives()?;
    r.need_negatives()?;
    let (p, n) = (r.positives as f64, r.negatives as f64);
    let mut points = Vec::with_capacity(r.steps.len() + 1);
    points.push((0.0, 0.0));
    points.extend(r.steps.iter().map(|s| (s.fp as f64 / n, s.tp as f64 / p)));
    Ok(points)
}

/// A decision threshold chosen by [`threshold_for_best_f1`], with what it achieves on the
/// data it was chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdChoice {
    /// Flag `score >= threshold`. One of the scores of the data.
    pub threshold: f64,
    /// F1 at this threshold.
    pub f1: f64,
    /// Precision at this threshold.
    pub precision: f64,
    /// Recall at this threshold.
    pub recall: f64,
}

/// The threshold with the highest F1 (on validation data, to be applied to new data). The
/// candidates are the distinct scores; among equal F1s the highest threshold wins (fewer
/// alerts). Errors without positives.
pub fn threshold_for_best_f1<L: Label>(
    scores: &[f64],
    labels: &[L],
) -> Result<ThresholdChoice, MetricError> {
    let r = Ranking::new(scores, labels)?;
    r.need_positives()?;
    let mut best: Option<ThresholdChoice> = None;
    for s in &r.steps {
        let f = f1(s.tp, s.fp, r.positives);
        if best.is_none_or(|b| f > b.f1) {
            best = Some(ThresholdChoice {
                threshold: s.threshold,
                f1: f,
                precision: s.tp as f64 / (s.tp + s.fp) as f64,
                recall: s.tp as f64 / r.positives as f64,
            });
        }
    }
    // At least one step exists: there is a positive, so there is a score.
    best.ok_or(MetricError::NoPositives)
}

/// The headline evaluation of one model on one labelled set, as written to reports and
/// compared between models. JSON keys: `pr_auc`, `roc_auc`, `f1`, `recall_at_1pct_fpr`,
/// `threshold`, `positives`, `negatives`.
///
/// A metric that is undefined for the set (no positives; no negatives for ROC-AUC and
/// recall at 1% FPR) is `None`, written as JSON `null`: never NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Average precision ([`pr_auc`]).
    pub pr_auc: Option<f64>,
    /// ROC-AUC ([`roc_auc`]).
    pub roc_auc: Option<f64>,
    /// F1 at [`Metrics::threshold`] ([`f1_at`]).
    pub f1: Option<f64>,
    /// Recall at a false-positive rate of at most 1% ([`recall_at_fpr`]).
    pub recall_at_1pct_fpr: Option<f64>,
    /// The threshold the F1 was measured at.
    pub threshold: f64,
    /// Positive (fraud) rows.
    pub positives: u64,
    /// Negative (legitimate) rows.
    pub negatives: u64,
}

impl Metrics {
    /// Every metric of `scores` against `labels`, F1 at `threshold`. One sort for all of them.
    /// Errors only on bad input (length mismatch, NaN score); undefined metrics are `None`.
    pub fn compute<L: Label>(
        scores: &[f64],
        labels: &[L],
        threshold: f64,
    ) -> Result<Metrics, MetricError> {
        let r = Ranking::new(scores, labels)?;
        let f1 = (r.positives > 0).then(|| r.f1_at(threshold));
        Ok(Metrics {
            pr_auc: r.average_precision().ok(),
            roc_auc: r.roc_auc().ok(),
            f1,
            recall_at_1pct_fpr: r.recall_at_fpr(0.01).ok(),
            threshold,
            positives: r.positives,
            negatives: r.negatives,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SK_SCORES: [f64; 4] = [0.1, 0.4, 0.35, 0.8];
    const SK_LABELS: [u8; 4] = [0, 0, 1, 1];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn sklearn_example() {
        assert!(close(roc_auc(&SK_SCORES, &SK_LABELS).unwrap(), 0.75));
        assert!(close(pr_auc(&SK_SCORES, &SK_LABELS).unwrap(), 5.0 / 6.0));
        // Flag >= 0.35: 0.8 (tp), 0.4 (fp), 0.35 (tp) -> tp 2, fp 1, fn 0.
        assert!(close(f1_at(&SK_SCORES, &SK_LABELS, 0.35).unwrap(), 0.8));
        // Flag >= 0.5: only 0.8 -> tp 1, fn 1.
        assert!(close(
            f1_at(&SK_SCORES, &SK_LABELS, 0.5).unwrap(),
            2.0 / 3.0
        ));
        assert_eq!(
            roc_curve(&SK_SCORES, &SK_LABELS).unwrap(),
            vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
        );
        let pr = pr_curve(&SK_SCORES, &SK_LABELS).unwrap();
        assert_eq!(pr[0], (0.0, 1.0));
        assert_eq!(pr[1], (0.5, 1.0));
        assert_eq!(pr[3], (1.0, 2.0 / 3.0));
        assert_eq!(pr[4], (1.0, 0.5));
    }

    #[test]
    fn perfect_and_reversed_rankings() {
        let scores = [0.9, 0.8, 0.3, 0.2, 0.1];
        let good = [true, true, false, false, false];
        let bad = [false, false, true, true, true];
        assert_eq!(roc_auc(&scores, &good).unwrap(), 1.0);
        assert_eq!(pr_auc(&scores, &good).unwrap(), 1.0);
        assert_eq!(recall_at_fpr(&scores, &good, 0.0).unwrap(), 1.0);
        assert_eq!(roc_auc(&scores, &bad).unwrap(), 0.0);
        assert_eq!(recall_at_fpr(&scores, &bad, 0.01).unwrap(), 0.0);
        // Reversed: positives at ranks 3, 4, 5 -> AP = (1/3)(1/3 + 2/4 + 3/5).
        assert!(close(
            pr_auc(&scores, &bad).unwrap(),
            (1.0 / 3.0 + 0.5 + 0.6) / 3.0
        ));
    }

    #[test]
    fn ties_are_one_group() {
        // All scores equal: ROC-AUC 0.5, AP = the positive rate, no partial credit.
        let scores = [0.5; 4];
        let labels = [1, 0, 0, 1];
        assert_eq!(roc_auc(&scores, &labels).unwrap(), 0.5);
        assert_eq!(pr_auc(&scores, &labels).unwrap(), 0.5);
        // Flagging the tie costs FPR 1: nothing is reachable within 1%.
        assert_eq!(recall_at_fpr(&scores, &labels, 0.01).unwrap(), 0.0);
        assert_eq!(recall_at_fpr(&scores, &labels, 1.0).unwrap(), 1.0);
        // The order of tied rows does not matter.
        let a = [0.9, 0.5, 0.5, 0.1];
        assert_eq!(
            pr_auc(&a, &[1, 1, 0, 0]).unwrap(),
            pr_auc(&a, &[1, 0, 1, 0]).unwrap()
        );
        // Positives 0.9 and 0.5, negatives 0.5 and 0.1, however the tie is ordered: of the
        // four (pos, neg) pairs, the tied one counts one half.
        assert_eq!(roc_auc(&a, &[1, 1, 0, 0]).unwrap(), 3.5 / 4.0);
        assert_eq!(roc_auc(&a, &[1, 0, 1, 0]).unwrap(), 3.5 / 4.0);
    }

    #[test]
    fn recall_at_fpr_hand_computed() {
        // 100 negatives scored 0.00..0.99, 4 positives at 0.995, 0.985 (above one negative:
        // 0.99), 0.5 and 0.05.
        let mut scores: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let mut labels = vec![false; 100];
        scores.extend([0.995, 0.985, 0.505, 0.055]);
        labels.extend([true; 4]);
        // FPR <= 1%: flag >= 0.985 -> 1 false positive (0.99), 2 of 4 positives.
        assert_eq!(recall_at_fpr(&scores, &labels, 0.01).unwrap(), 0.5);
        assert_eq!(recall_at_fpr(&scores, &labels, 0.0).unwrap(), 0.25);
        assert_eq!(recall_at_fpr(&scores, &labels, 0.5).unwrap(), 0.75);
        let m = Metrics::compute(&scores, &labels, 0.98).unwrap();
        assert_eq!(m.recall_at_1pct_fpr, Some(0.5));
        assert_eq!((m.positives, m.negatives), (4, 100));
        // Flag >= 0.98: tp 2, fp 2 (0.98, 0.99), fn 2 -> F1 = 4 / 8.
        assert_eq!(m.f1, Some(0.5));
    }

    #[test]
    fn best_f1_threshold() {
        let choice = threshold_for_best_f1(&SK_SCORES, &SK_LABELS).unwrap();
        // >= 0.8: F1 2/3; >= 0.4: 2·1/(1+1+2) = 1/2; >= 0.35: 0.8; >= 0.1: 2·2/(2+2+2) = 2/3.
        assert_eq!(choice.threshold, 0.35);
        assert!(close(choice.f1, 0.8));
        assert!(close(choice.precision, 2.0 / 3.0));
        assert_eq!(choice.recall, 1.0);
        assert!(close(
            f1_at(&SK_SCORES, &SK_LABELS, choice.threshold).unwrap(),
            choice.f1
        ));
    }

    #[test]
    fn undefined_cases_are_errors_or_none_never_nan() {
        let scores = [0.2, 0.4];
        assert_eq!(
            pr_auc(&scores, &[0, 0]).unwrap_err(),
            MetricError::NoPositives
        );
        assert_eq!(
            roc_auc(&scores, &[1, 1]).unwrap_err(),
            MetricError::NoNegatives
        );
        assert_eq!(
            roc_auc(&scores, &[1]).unwrap_err(),
            MetricError::LengthMismatch {
                scores: 2,
                labels: 1
            }
        );
        assert_eq!(
            roc_auc(&[0.1, f64::NAN], &[1, 0]).unwrap_err(),
            MetricError::NanScore { index: 1 }
        );
        assert!(matches!(
            recall_at_fpr(&scores, &[1, 0], f64::NAN),
            Err(MetricError::InvalidFpr(_))
        ));
        // Only negatives: no metric but the counts.
        let m = Metrics::compute(&scores, &[0, 0], 0.5).unwrap();
        assert_eq!(m.pr_auc, None);
        assert_eq!(m.roc_auc, None);
        assert_eq!(m.f1, None);
        assert_eq!(m.recall_at_1pct_fpr, None);
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("NaN"), "{json}");
        assert!(json.contains("\"pr_auc\":null"), "{json}");
        // Only positives: PR-AUC and F1 are defined, ROC-AUC is not.
        let m = Metrics::compute(&scores, &[true, true], 0.3).unwrap();
        assert_eq!(m.pr_auc, Some(1.0));
        assert_eq!(m.roc_auc, None);
        assert!(close(m.f1.unwrap(), 2.0 / 3.0));
        // Empty input.
        let m = Metrics::compute::<bool>(&[], &[], 0.5).unwrap();
        assert_eq!((m.positives, m.negatives), (0, 0));
    }

    #[test]
    fn metrics_json_keys_round_trip() {
        let m = Metrics::compute(&SK_SCORES, &[0.0f32, 0.0, 1.0, 1.0], 0.5).unwrap();
        let value = serde_json::to_value(&m).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "pr_auc",
            "roc_auc",
            "f1",
            "recall_at_1pct_fpr",
            "threshold",
            "positives",
            "negatives",
        ] {
            assert!(keys.contains(&key), "{key} missing from {value}");
        }
        assert_eq!(value["roc_auc"], 0.75);
        let back: Metrics = serde_json::from_value(value).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn roc_auc_matches_brute_force_pairs() {
        // A small deterministic pseudo-random set with many ties.
        let mut x: u64 = 12345;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let scores: Vec<f64> = (0..300).map(|_| (next() % 20) as f64 / 20.0).collect();
        let labels: Vec<bool> = (0..300).map(|_| next() % 4 == 0).collect();
        let (mut num, mut den) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] && !labels[j] {
                    den += 1.0;
                    num += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!(close(roc_auc(&scores, &labels).unwrap(), num / den));
        // The trapezoid area under the ROC curve is the same number.
        let roc = roc_curve(&scores, &labels).unwrap();
        let area: f64 = roc
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!(close(area, num / den));
    }
}
