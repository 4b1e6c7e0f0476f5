//! The LightGBM fallback: the model that answers when the GNN cannot make the caller's
//! deadline.
//!
//! - [`tabular`]: the fixed-width feature row cut from a sampled subgraph
//!   ([`tabular_features`], [`tabular_feature_names`]).
//! - [`params`]: how it is trained ([`GbdtParams`]).
//! - [`Gbdt`]: training, probability prediction (batch and a fast single-row path), and the
//!   model file: a standard LightGBM text model, which Python's `lightgbm` (4.x) also reads.
//!
//! Threads: [`Gbdt`] is neither `Send` nor `Sync`, because `lightgbm3::Booster` (a raw C
//! handle) declares neither, and this crate allows no `unsafe` to assert otherwise. Build the
//! model on the thread that scores with it: call [`Gbdt::load`] (or [`Gbdt::from_model_text`]
//! with text read elsewhere) inside the dedicated inference thread, and move paths or model
//! text (plain `String`s), not the model, between threads.

pub mod params;
pub mod tabular;

use std::path::{Path, PathBuf};

use lightgbm3::{Booster, Dataset, ImportanceType};
use serde_json::json;

pub use params::{EvalMetric, GbdtParams};
pub use tabular::{tabular_feature_names, tabular_features, tabular_width};

/// Errors of training, predicting, saving and loading the fallback. Each names the input,
/// field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum GbdtError {
    /// A parameter is out of range.
    #[error("GBDT parameter `{field}`: {message}")]
    InvalidParam {
        /// The [`GbdtParams`] field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A feature matrix does not fit its width or its labels.
    #[error("{what}: {message}")]
    Shape {
        /// Which input (`train_x`, `valid_y`, `rows`, ...).
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A label is not 0 or 1.
    #[error("{what}[{index}] = {value}: labels must be 0 or 1")]
    BadLabel {
        /// Which label vector.
        what: &'static str,
        /// Its index.
        index: usize,
        /// The value found.
        value: f32,
    },
    /// LightGBM refused an operation.
    #[error("LightGBM, {context}: {source}")]
    Lightgbm {
        /// What was being done.
        context: String,
        /// LightGBM's message.
        #[source]
        source: lightgbm3::Error,
    },
    /// Reading or writing a model file failed.
    #[error("GBDT model file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A model's text cannot be a LightGBM model (e.g. it contains NUL bytes).
    #[error("GBDT model {origin}: {message}")]
    ModelText {
        /// The file, or `<model text>`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A model was trained on another number of features than this build's tabular layout.
    #[error(
        "GBDT model {origin} has {found} features but this build's tabular layout has {expected} \
         (retrain the fallback with this build)"
    )]
    FeatureCount {
        /// The file, or `<model text>`.
        origin: String,
        /// [`tabular_width`] of this build.
        expected: usize,
        /// The model's feature count.
        found: usize,
    },
    /// A model was trained on features named or ordered differently from this build's.
    #[error(
        "GBDT model {origin}: feature {index} is `{found}` but this build's tabular layout has \
         `{expected}` there (retrain the fallback with this build)"
    )]
    FeatureNames {
        /// The file, or `<model text>`.
        origin: String,
        /// The first differing column.
        index: usize,
        /// This build's name for it.
        expected: String,
        /// The model's name for it.
        found: String,
    },
    /// The model is not a binary classifier.
    #[error("GBDT model {origin} is not a binary classifier (objective `{objective}`)")]
    NotBinary {
        /// The file, or `<model text>`.
        origin: String,
        /// Its `objective=` line.
        objective: String,
    },
}

fn lgbm(context: impl Into<String>) -> impl FnOnce(lightgbm3::Error) -> GbdtError {
    move |source| GbdtError::Lightgbm {
        context: context.into(),
        source,
    }
}

/// Checks a row-major matrix against its width and returns its row count.
fn rows_of(what: &'static str, x: &[f32], width: usize) -> Result<usize, GbdtError> {
    if width == 0 || width > i32::MAX as usize {
        return Err(GbdtError::Shape {
            what,
            message: format!("width {width} is not in 1..={}", i32::MAX),
        });
    }
    if !x.len().is_multiple_of(width) {
        return Err(GbdtError::Shape {
            what,
            message: format!("{} values are not whole rows of width {width}", x.len()),
        });
    }
    let rows = x.len() / width;
    if rows > i32::MAX as usize {
        return Err(GbdtError::Shape {
            what,
            message: format!("{rows} rows, more than LightGBM takes at once"),
        });
    }
    Ok(rows)
}

/// Checks a labelled matrix: whole rows, one 0/1 label per row, at least one row.
fn check_labelled(
    (x_what, y_what): (&'static str, &'static str),
    x: &[f32],
    y: &[f32],
    width: usize,
) -> Result<(), GbdtError> {
    let rows = rows_of(x_what, x, width)?;
    if rows == 0 {
        return Err(GbdtError::Shape {
            what: x_what,
            message: "no rows".into(),
        });
    }
    if y.len() != rows {
        return Err(GbdtError::Shape {
            what: y_what,
            message: format!("{} labels for {rows} rows", y.len()),
        });
    }
    if let Some(index) = y.iter().position(|&v| v != 0.0 && v != 1.0) {
        return Err(GbdtError::BadLabel {
            what: y_what,
            index,
            value: y[index],
        });
    }
    Ok(())
}

/// The kind of [`Gbdt::feature_importance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    /// How many splits use the feature.
    Split,
    /// The total loss reduction of the splits that use it.
    Gain,
}

/// A trained binary LightGBM model and the names of its features.
///
/// The in-memory model is always exactly the text [`Gbdt::save`] writes: training ends by
/// reloading the booster from its own text, so a saved and reloaded model predicts the same
/// bits. Not `Send`/`Sync`: see the module docs.
pub struct Gbdt {
    booster: Booster,
    text: String,
    feature_names: Vec<String>,
}

impl std::fmt::Debug for Gbdt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gbdt")
            .field("features", &self.feature_names.len())
            .field("trees", &self.booster.num_iterations())
            .finish()
    }
}

impl Gbdt {
    /// Trains on `train_x` (row-major, `width` columns, NaN read as missing) and `train_y`
    /// (0/1 per row), optionally early-stopping on `valid` = (x, y). When `width` is
    /// [`tabular_width`], the columns are named [`tabular_feature_names`] in the model;
    /// otherwise LightGBM's `Column_<i>`.
    pub fn train(
        train_x: &[f32],
        train_y: &[f32],
        valid: Option<(&[f32], &[f32])>,
        width: usize,
        params: &GbdtParams,
    ) -> Result<Gbdt, GbdtError> {
        params.validate()?;
        check_labelled(("train_x", "train_y"), train_x, train_y, width)?;
        if let Some((vx, vy)) = valid {
            check_labelled(("valid_x", "valid_y"), vx, vy, width)?;
        }
        let n = width as i32;
        let mut train =
            Dataset::from_slice(train_x, train_y, n, true).map_err(lgbm("building train_x"))?;
        if width == tabular_width() {
            train
                .set_feature_names(&tabular_feature_names())
                .map_err(lgbm("naming the features"))?;
        }
        let valid = valid
            .map(|(vx, vy)| Dataset::from_slice_with_reference(vx, vy, n, true, Some(&train)))
            .transpose()
            .map_err(lgbm("building valid_x"))?;
        let lgbm_params = params.to_lightgbm(valid.is_some());
        let booster =
            Booster::train_with_valid(train, valid, &lgbm_params).map_err(lgbm("training"))?;
        let text = booster
            .save_string()
            .map_err(lgbm("writing the trained model"))?;
        Gbdt::from_text(text, "<trained model>", None)
    }

    /// Probabilities of fraud for `rows` (row-major, `width` columns), one per row. `width`
    /// must be the model's feature count. No rows give no probabilities.
    pub fn predict(&self, rows: &[f32], width: usize) -> Result<Vec<f64>, GbdtError> {
        let n = rows_of("rows", rows, width)?;
        if width != self.num_features() {
            return Err(GbdtError::Shape {
                what: "rows",
                message: format!(
                    "width {width}, but the model has {} features",
                    self.num_features()
                ),
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        self.booster
            .predict(rows, width as i32, true)
            .map_err(lgbm("predicting"))
    }

    /// The probability of fraud for one row through LightGBM's single-row fast path (about
    /// 6 µs): the fallback's per-transaction call. Same value as [`Gbdt::predict`].
    pub fn predict_row(&self, row: &[f32]) -> Result<f64, GbdtError> {
        // The fast path reads `num_features` values from the pointer: check first.
        if row.len() != self.num_features() {
            return Err(GbdtError::Shape {
                what: "row",
                message: format!(
                    "{} values, but the model has {} features",
                    row.len(),
                    self.num_features()
                ),
            });
        }
        let out = self
            .booster
            .predict_single_row_fast(row)
            .map_err(lgbm("predicting one row"))?;
        out.first().copied().ok_or_else(|| GbdtError::Shape {
            what: "row",
            message: "LightGBM returned no prediction".into(),
        })
    }

    /// The model's feature count.
    pub fn num_features(&self) -> usize {
        self.feature_names.len()
    }

    /// The model's feature names, in column order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The number of trees (boosting rounds kept after early stopping).
    pub fn num_trees(&self) -> usize {
        self.booster.num_iterations().max(0) as usize
    }

    /// The model as standard LightGBM text (what [`Gbdt::save`] writes). A `String`, so it
    /// can cross threads: see the module docs.
    pub fn model_text(&self) -> &str {
        &self.text
    }

    /// Writes the model to `path` as a standard LightGBM text model, atomically (a temporary
    /// file next to it, then a rename), so a reader never sees half a model.
    pub fn save(&self, path: &Path) -> Result<(), GbdtError> {
        let io = |source| GbdtError::Io {
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, &self.text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Loads a fallback model saved by [`Gbdt::save`] (or any LightGBM binary text model) and
    /// checks that it fits this build: [`tabular_width`] features named
    /// [`tabular_feature_names`], binary objective. Errors name the file.
    pub fn load(path: &Path) -> Result<Gbdt, GbdtError> {
        let text = std::fs::read_to_string(path).map_err(|source| GbdtError::Io {
            path: path.to_owned(),
            source,
        })?;
        Gbdt::from_text(
            text,
            &path.display().to_string(),
            Some(&tabular_feature_names()),
        )
    }

    /// [`Gbdt::load`] from model text already in memory (e.g. read on another thread).
    pub fn from_model_text(text: String) -> Result<Gbdt, GbdtError> {
        Gbdt::from_text(text, "<model text>", Some(&tabular_feature_names()))
    }

    /// Builds the booster from `text`; with `expected`, checks the feature names against it.
    fn from_text(
        text: String,
        origin: &str,
        expected: Option<&[String]>,
    ) -> Result<Gbdt, GbdtError> {
        if text.contains('\0') {
            return Err(GbdtError::ModelText {
                origin: origin.into(),
                message: "contains NUL bytes: not a LightGBM text model".into(),
            });
        }
        let mut booster =
            Booster::from_string(&text).map_err(lgbm(format!("parsing model {origin}")))?;
        let objective = header(&text, "objective").unwrap_or_default();
        if booster.num_classes() != 1 || !objective.starts_with("binary") {
            return Err(GbdtError::NotBinary {
                origin: origin.into(),
                objective: objective.into(),
            });
        }
        let found = booster.num_features().max(0) as usize;
        let feature_names: Vec<String> = header(&text, "feature_names")
            .map(|line| line.split(' ').map(str::to_owned).collect())
            .filter(|names: &Vec<String>| names.len() == found)
            .unwrap_or_else(|| (0..found).map(|i| format!("Column_{i}")).collect());
        if let Some(expected) = expected {
            if found != expected.len() {
                return Err(GbdtError::FeatureCount {
                    origin: origin.into(),
                    expected: expected.len(),
                    found,
                });
            }
            if let Some(index) = (0..found).find(|&i| feature_names[i] != expected[i]) {
                return Err(GbdtError::FeatureNames {
                    origin: origin.into(),
                    index,
                    expected: expected[index].clone(),
                    found: feature_names[index].clone(),
                });
            }
        }
        booster
            .single_row_fast_init::<f32>(Some(&json!({ "num_threads": 1 })))
            .map_err(lgbm(format!("preparing single-row prediction of {origin}")))?;
        Ok(Gbdt {
            booster,
            text,
            feature_names,
        })
    }

    /// Per-feature importance, `(name, value)` in column order.
    pub fn feature_importance(&self, kind: Importance) -> Result<Vec<(String, f64)>, GbdtError> {
        let kind = match kind {
            Importance::Split => ImportanceType::Split,
            Importance::Gain => ImportanceType::Gain,
        };
        let values = self
            .booster
            .feature_importance(kind)
            .map_err(lgbm("reading feature importance"))?;
        Ok(self.feature_names.iter().cloned().zip(values).collect())
    }
}

/// The value of a `key=value` header line of a LightGBM text model (before the first tree).
fn header<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .take_while(|line| !line.starts_with("Tree="))
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}
