//! The model artifact: everything serving and evaluation need to score exactly as training
//! did, in one directory.
//!
//! ```text
//! <artifact>/
//!   manifest.json      what was trained and how (Manifest, pretty JSON)
//!   model.safetensors  Hybrid-FraudNet's parameters, f32, named as in the VarStore
//!   gbdt.txt           the LightGBM fallback, a standard LightGBM text model
//! ```
//!
//! The manifest pins what the weights depend on: the feature schema (its hash must equal
//! this build's [`features::schema_hash`], or the artifact is refused), the model's
//! [`NetConfig`], the sampler and graph settings the features were computed with, the
//! padded sequence length, the time split, the decision thresholds, and SHA-256 checksums
//! of the two model files. [`save_artifact`] writes a complete directory next to the target
//! and renames it into place, so a reader sees the old artifact or the new one, never half
//! of one. [`Artifact::load`] checks everything before handing out a model; each refusal
//! names the file at fault.
//!
//! Threads: [`Artifact`] holds the LightGBM model as text, not as a [`Gbdt`] (which is not
//! `Send`): build the booster with [`Artifact::gbdt`] on the thread that scores with it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::features;
use fraudgraph_sampler::graph::GraphConfig;
use fraudgraph_sampler::sample::{SamplerConfig, Strategy, Subgraph};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::dataset::Split;
use crate::gbdt::{Gbdt, GbdtError, tabular_features, tabular_width};
use crate::net::{HybridFraudNet, NetConfig, NetError, Precision, set_precision};
use crate::runtime;
use crate::tensors::BatchTensors;

/// The version of the artifact layout this build writes and reads. Version 2: the GNN's
/// readout also reads a transfer's receiver (one more hidden-sized slot), so version-1
/// weights no longer fit.
pub const ARTIFACT_FORMAT_VERSION: u32 = 2;
/// The manifest's file name inside an artifact directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The GNN weights' file name inside an artifact directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The LightGBM model's file name inside an artifact directory.
pub const GBDT_FILE: &str = "gbdt.txt";

/// Errors of saving, loading and scoring with an artifact. Each names the file or input at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file the artifact must have is not there.
    #[error("artifact {}: missing {file}", dir.display())]
    Missing {
        /// The artifact directory.
        dir: PathBuf,
        /// The missing file's name.
        file: &'static str,
    },
    /// The manifest is not valid JSON of a [`Manifest`].
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The artifact was written in a layout this build does not read.
    #[error(
        "{}: artifact format version {found}, but this build reads version \
         {ARTIFACT_FORMAT_VERSION} (use a fraudgraph build that matches the artifact, or retrain)",
        path.display()
    )]
    FormatVersion {
        /// The manifest file.
        path: PathBuf,
        /// The version it declares (as written).
        found: String,
    },
    /// The artifact's features were computed under another feature schema than this build's.
    #[error(
        "{}: the artifact was built for feature schema {artifact} (version {artifact_version}) \
         but this build computes feature schema {build} (version {build_version}): retrain the \
         model with this build, or use a fraudgraph build that matches the artifact",
        path.display()
    )]
    SchemaMismatch {
        /// The manifest file.
        path: PathBuf,
        /// The artifact's `feature_schema_hash`.
        artifact: String,
        /// The artifact's `feature_schema_version`.
        artifact_version: u32,
        /// This build's [`features::schema_hash`].
        build: String,
        /// This build's [`features::FEATURE_SCHEMA_VERSION`].
        build_version: u32,
    },
    /// A model file's SHA-256 is not the one in the manifest (corrupted or tampered with).
    #[error(
        "{}: SHA-256 {found} does not match the manifest's {expected} (the file is corrupted \
         or was modified after training)",
        path.display()
    )]
    Checksum {
        /// The model file.
        path: PathBuf,
        /// The manifest's checksum (empty when the manifest has none for it).
        expected: String,
        /// The file's checksum.
        found: String,
    },
    /// The weights do not fit the manifest's [`NetConfig`].
    #[error("{}: weights do not match the manifest's model configuration: {message}", path.display())]
    Weights {
        /// The weights file (or the artifact being saved).
        path: PathBuf,
        /// Which tensors are missing, extra or of another shape.
        message: String,
    },
    /// The GBDT text does not load as this build's fallback model.
    #[error("{}: {source}", path.display())]
    GbdtFile {
        /// The GBDT file.
        path: PathBuf,
        /// Why it does not load.
        #[source]
        source: GbdtError,
    },
    /// A setting in the manifest cannot be used.
    #[error("{}: {message}", path.display())]
    Setting {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The target directory exists and does not look like an artifact: it is not replaced.
    #[error(
        "{}: exists and is not a model artifact (no {MANIFEST_FILE}); refusing to replace it",
        path.display()
    )]
    NotAnArtifact {
        /// The directory.
        path: PathBuf,
    },
    /// libtorch failed (reading or writing tensors, moving them between devices).
    #[error("libtorch, {context}: {source}")]
    Torch {
        /// What was being done.
        context: String,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },
    /// Building or running Hybrid-FraudNet failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Scoring with the GBDT failed.
    #[error(transparent)]
    Gbdt(#[from] GbdtError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> ArtifactError {
    move |source| ArtifactError::Torch {
        context: context.into(),
        source,
    }
}

/// The sampler's settings as stored in a manifest ([`SamplerConfig`] with the strategy as
/// a string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSettings {
    /// Neighbours per node at hops 1, 2 and 3.
    pub fanouts: [usize; 3],
    /// `most_recent` or `weighted`.
    pub strategy: String,
    /// Mixed with the txn_id to seed weighted sampling.
    pub seed: u64,
}

impl SamplerSettings {
    /// The settings of `config`.
    pub fn from_config(config: &SamplerConfig) -> SamplerSettings {
        SamplerSettings {
            fanouts: config.fanouts,
            strategy: match config.strategy {
                Strategy::MostRecent => "most_recent",
                Strategy::Weighted => "weighted",
            }
            .to_owned(),
            seed: config.seed,
        }
    }

    /// The sampler configuration; errors (a message) on an unknown strategy.
    pub fn to_config(&self) -> Result<SamplerConfig, String> {
        let strategy = match self.strategy.as_str() {
            "most_recent" => Strategy::MostRecent,
            "weighted" => Strategy::Weighted,
            other => {
                return Err(format!(
                    "sampler.strategy `{other}` is neither `most_recent` nor `weighted`"
                ));
            }
        };
        Ok(SamplerConfig {
            fanouts: self.fanouts,
            strategy,
            seed: self.seed,
        })
    }
}

impl Default for SamplerSettings {
    fn default() -> Self {
        SamplerSettings::from_config(&SamplerConfig::default())
    }
}

/// The live graph's settings as stored in a manifest (a serde mirror of [`GraphConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSettings {
    /// Most edges one node keeps per relation side.
    pub adjacency_cap: usize,
    /// Transactions older than the newest applied event time minus this are refused.
    pub late_window_ms: i64,
    /// How long applied txn_ids are remembered; at least `late_window_ms`.
    pub dedupe_window_ms: i64,
    /// Recent transactions each account keeps for temporal attention.
    pub sequence_len: usize,
    /// Aggregate checkpoints a node keeps.
    pub checkpoints: usize,
    /// Idle edges and nodes older than this are evicted; longer than `late_window_ms`.
    pub retention_ms: i64,
}

impl GraphSettings {
    /// The settings of `config`.
    pub fn from_config(config: &GraphConfig) -> GraphSettings {
        GraphSettings {
            adjacency_cap: config.adjacency_cap,
            late_window_ms: config.late_window_ms,
            dedupe_window_ms: config.dedupe_window_ms,
            sequence_len: config.sequence_len,
            checkpoints: config.checkpoints,
            retention_ms: config.retention_ms,
        }
    }

    /// The graph configuration; errors (a message) on values the graph documents as
    /// invalid.
    pub fn to_config(&self) -> Result<GraphConfig, String> {
        if self.adjacency_cap == 0 {
            return Err("graph.adjacency_cap must be at least 1".into());
        }
        if self.late_window_ms < 0 {
            return Err(format!(
                "graph.late_window_ms {} is negative",
                self.late_window_ms
            ));
        }
        if self.dedupe_window_ms < self.late_window_ms {
            return Err(format!(
                "graph.dedupe_window_ms {} is shorter than late_window_ms {}",
                self.dedupe_window_ms, self.late_window_ms
            ));
        }
        if self.retention_ms <= self.late_window_ms {
            return Err(format!(
                "graph.retention_ms {} is not longer than late_window_ms {}",
                self.retention_ms, self.late_window_ms
            ));
        }
        Ok(GraphConfig {
            adjacency_cap: self.adjacency_cap,
            late_window_ms: self.late_window_ms,
            dedupe_window_ms: self.dedupe_window_ms,
            sequence_len: self.sequence_len,
            checkpoints: self.checkpoints,
            retention_ms: self.retention_ms,
        })
    }
}

impl Default for GraphSettings {
    fn default() -> Self {
        GraphSettings::from_config(&GraphConfig::default())
    }
}

/// Decision thresholds chosen on validation data: flag `score >= threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Threshold on the GNN's probability.
    pub gnn: f64,
    /// Threshold on the GBDT's probability.
    pub gbdt: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            gnn: 0.5,
            gbdt: 0.5,
        }
    }
}

/// `manifest.json`: what an artifact holds and everything needed to score like training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The artifact layout version ([`ARTIFACT_FORMAT_VERSION`]).
    pub format_version: u32,
    /// The fraudgraph version that wrote it.
    pub fraudgraph_version: String,
    /// The libtorch version the writing binary was built against.
    pub torch_version: String,
    /// The LightGBM version the writing binary was built with.
    pub lightgbm_version: String,
    /// [`features::schema_hash`] of the writing build; loading requires the same.
    pub feature_schema_hash: String,
    /// [`features::FEATURE_SCHEMA_VERSION`] of the writing build.
    pub feature_schema_version: u32,
    /// Hybrid-FraudNet's hyper-parameters (the weights' shapes follow from them).
    pub net: NetConfig,
    /// The sampler settings the features were computed with.
    pub sampler: SamplerSettings,
    /// The graph settings the features were computed with.
    pub graph: GraphSettings,
    /// The padded sequence length batches are collated with.
    pub max_sequence: usize,
    /// The time split used for training (evaluation uses its test period).
    pub split: Split,
    /// Decision thresholds of both models.
    pub thresholds: Thresholds,
    /// Free-form training record: command, data, seed, timings.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Validation metrics (free-form).
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// SHA-256 (lowercase hex) of each model file, by file name; filled by [`save_artifact`].
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    /// A manifest for this build (versions and feature schema filled in), with empty
    /// `training`, `metrics` and `files`.
    pub fn new(
        net: NetConfig,
        sampler: &SamplerConfig,
        graph: &GraphConfig,
        max_sequence: usize,
        split: Split,
        thresholds: Thresholds,
    ) -> Manifest {
        Manifest {
            format_version: ARTIFACT_FORMAT_VERSION,
            fraudgraph_version: env!("CARGO_PKG_VERSION").to_owned(),
            torch_version: runtime::BUILT_LIBTORCH_VERSION.to_owned(),
            lightgbm_version: runtime::LIGHTGBM_VERSION.to_owned(),
            feature_schema_hash: features::schema_hash(),
            feature_schema_version: features::FEATURE_SCHEMA_VERSION,
            net,
            sampler: SamplerSettings::from_config(sampler),
            graph: GraphSettings::from_config(graph),
            max_sequence,
            split,
            thresholds,
            training: serde_json::Value::Null,
            metrics: serde_json::Value::Null,
            files: BTreeMap::new(),
        }
    }

    /// The sampler configuration; errors naming `path` on an unknown strategy.
    fn sampler_config_at(&self, path: &Path) -> Result<SamplerConfig, ArtifactError> {
        self.sampler
            .to_config()
            .map_err(|message| ArtifactError::Setting {
                path: path.to_owned(),
                message,
            })
    }

    /// The graph configuration; errors naming `path` on invalid values.
    fn graph_config_at(&self, path: &Path) -> Result<GraphConfig, ArtifactError> {
        self.graph
            .to_config()
            .map_err(|message| ArtifactError::Setting {
                path: path.to_owned(),
                message,
            })
    }
}

/// SHA-256 of `bytes`, lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` and flushes them to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Flushes a directory's entries to disk, where the platform allows (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A name for a sibling of `dir` that does not exist yet: `.<name>.<tag>-<pid>-<nanos>`.
fn sibling(dir: &Path, tag: &str) -> Result<PathBuf, ArtifactError> {
    let name = dir.file_name().ok_or_else(|| ArtifactError::Io {
        path: dir.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an artifact directory needs a final path component",
        ),
    })?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(
        ".{}.{tag}-{}-{nanos}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// The names and shapes of a var store's parameters.
fn shapes(vs: &VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, t.size()))
        .collect()
}

/// Compares parameter shapes found against those expected; `Err(message)` listing the
/// missing, extra and mismatched tensors (the first few of each).
fn compare_shapes(
    expected: &BTreeMap<String, Vec<i64>>,
    found: &BTreeMap<String, Vec<i64>>,
) -> Result<(), String> {
    let list = |names: Vec<String>| {
        let shown: Vec<String> = names.iter().take(5).cloned().collect();
        let more = names.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    let missing: Vec<String> = expected
        .keys()
        .filter(|n| !found.contains_key(*n))
        .cloned()
        .collect();
    let extra: Vec<String> = found
        .keys()
        .filter(|n| !expected.contains_key(*n))
        .cloned()
        .collect();
    let mismatched: Vec<String> = expected
        .iter()
        .filter_map(|(n, shape)| match found.get(n) {
            Some(got) if got != shape => Some(format!("{n} (expected {shape:?}, got {got:?})")),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} missing tensor(s): {}",
            missing.len(),
            list(missing)
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{} unexpected tensor(s): {}",
            extra.len(),
            list(extra)
        ));
    }
    if !mismatched.is_empty() {
        problems.push(format!(
            "{} tensor(s) of another shape: {}",
            mismatched.len(),
            list(mismatched)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The parameter shapes of a fresh Hybrid-FraudNet of `config` (built on the CPU).
fn expected_shapes(config: &NetConfig) -> Result<BTreeMap<String, Vec<i64>>, NetError> {
    let vs = VarStore::new(Device::Cpu);
    HybridFraudNet::new(&vs.root(), config)?;
    Ok(shapes(&vs))
}

/// Writes an artifact to `dir`: the GNN weights of `vs` (as f32 safetensors, whatever the
/// store's device and precision), the LightGBM model of `gbdt`, and `manifest` with
/// `format_version` set to [`ARTIFACT_FORMAT_VERSION`] and `files` set to the two files'
/// SHA-256 checksums.
///
/// The parameters of `vs` must be those of a Hybrid-FraudNet of `manifest.net`
/// ([`ArtifactError::Weights`] otherwise), so an artifact that saves also loads.
///
/// Atomic: everything is written and flushed into a new sibling directory, which is then
/// renamed to `dir` (its parent directories are created if missing). An existing `dir` is
/// replaced only if it is empty or holds a `manifest.json` ([`ArtifactError::NotAnArtifact`]
/// otherwise): it is first moved aside, then removed once the new one is in place (and
/// moved back if that fails). A reader of `dir` sees the old artifact or the new one, never
/// a mix (and, for the instant between the two renames, none).
pub fn save_artifact(
    dir: &Path,
    manifest: &Manifest,
    vs: &VarStore,
    gbdt: &Gbdt,
) -> Result<(), ArtifactError> {
    compare_shapes(&expected_shapes(&manifest.net)?, &shapes(vs)).map_err(|message| {
        ArtifactError::Weights {
            path: dir.to_owned(),
            message,
        }
    })?;
    if dir.exists() {
        if !dir.is_dir() {
            return Err(ArtifactError::NotAnArtifact {
                path: dir.to_owned(),
            });
        }
        let empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
        if !empty && !dir.join(MANIFEST_FILE).is_file() {
            return Err(ArtifactError::NotAnArtifact {
                path: dir.to_owned(),
            });
        }
    }

    let tmp = sibling(dir, "tmp")?;
    if let Some(parent) = tmp.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = write_contents(&tmp, manifest, vs, gbdt);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);

    let old = if dir.exists() {
        let old = sibling(dir, "old")?;
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(dir)(e));
        }
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(dir)(e));
    }
    if let Some(parent) = dir.parent() {
        sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        });
    }
    if let Some(old) = old {
        // The new artifact is in place; a leftover old copy is only litter.
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// Writes the three files into `tmp`.
fn write_contents(
    tmp: &Path,
    manifest: &Manifest,
    vs: &VarStore,
    gbdt: &Gbdt,
) -> Result<(), ArtifactError> {
    let weights_path = tmp.join(WEIGHTS_FILE);
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in vs.variables() {
        let cpu = t
            .f_detach()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_contiguous())
            .map_err(torch(format!("copying parameter {name} to the CPU")))?;
        named.push((name, cpu));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, &weights_path)
        .map_err(torch(format!("writing {}", weights_path.display())))?;
    let weights = std::fs::read(&weights_path).map_err(io(&weights_path))?;
    // write_safetensors does not flush: rewrite through write_synced for durability.
    write_synced(&weights_path, &weights)?;

    let gbdt_path = tmp.join(GBDT_FILE);
    write_synced(&gbdt_path, gbdt.model_text().as_bytes())?;

    let mut manifest = manifest.clone();
    manifest.format_version = ARTIFACT_FORMAT_VERSION;
    manifest.files = BTreeMap::from([
        (WEIGHTS_FILE.to_owned(), sha256_hex(&weights)),
        (
            GBDT_FILE.to_owned(),
            sha256_hex(gbdt.model_text().as_bytes()),
        ),
    ]);
    let manifest_path = tmp.join(MANIFEST_FILE);
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArtifactError::Manifest {
        path: manifest_path.clone(),
        message: e.to_string(),
    })?;
    json.push(b'\n');
    write_synced(&manifest_path, &json)
}

/// Reads and checks `dir/manifest.json`: present, valid JSON, a format version this build
/// reads, and this build's feature schema. Does not touch the model files.
pub fn read_manifest(dir: &Path) -> Result<Manifest, ArtifactError> {
    if !dir.is_dir() {
        return Err(ArtifactError::Io {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such artifact directory"),
        });
    }
    let path = dir.join(MANIFEST_FILE);
    if !path.is_file() {
        return Err(ArtifactError::Missing {
            dir: dir.to_owned(),
            file: MANIFEST_FILE,
        });
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let bad = |message: String| ArtifactError::Manifest {
        path: path.clone(),
        message,
    };
    // The version first, so a future layout is refused as such, not as a parse error.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    match value.get("format_version") {
        Some(v) if v.as_u64() == Some(u64::from(ARTIFACT_FORMAT_VERSION)) => {}
        Some(v) => {
            return Err(ArtifactError::FormatVersion {
                path,
                found: v.to_string(),
            });
        }
        None => return Err(bad("no `format_version`: not a fraudgraph artifact".into())),
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| bad(format!("invalid manifest: {e}")))?;
    let build = features::schema_hash();
    if manifest.feature_schema_hash != build {
        return Err(ArtifactError::SchemaMismatch {
            path,
            artifact: manifest.feature_schema_hash,
            artifact_version: manifest.feature_schema_version,
            build,
            build_version: features::FEATURE_SCHEMA_VERSION,
        });
    }
    Ok(manifest)
}

/// Reads `dir/<file>` and checks it against the manifest's checksum.
fn read_checked(
    dir: &Path,
    file: &'static str,
    manifest: &Manifest,
) -> Result<Vec<u8>, ArtifactError> {
    let path = dir.join(file);
    if !path.is_file() {
        return Err(ArtifactError::Missing {
            dir: dir.to_owned(),
            file,
        });
    }
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let found = sha256_hex(&bytes);
    let expected = manifest.files.get(file).cloned().unwrap_or_default();
    if !expected.eq_ignore_ascii_case(&found) {
        return Err(ArtifactError::Checksum {
            path,
            expected,
            found,
        });
    }
    Ok(bytes)
}

/// Copies the safetensors weights in `bytes` (the checksummed contents of `path`) into the
/// parameters of `vs`, after checking that the names and shapes are exactly the store's and
/// that every tensor is floating point.
fn load_weights(vs: &VarStore, bytes: &[u8], path: &Path) -> Result<(), ArtifactError> {
    let bad = |message: String| ArtifactError::Weights {
        path: path.to_owned(),
        message,
    };
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e:?}")))?;
    let views = file.tensors();
    let found: BTreeMap<String, Vec<i64>> = views
        .iter()
        .map(|(n, v)| (n.clone(), v.shape().iter().map(|&d| d as i64).collect()))
        .collect();
    compare_shapes(&shapes(vs), &found).map_err(bad)?;
    let mut tensors = HashMap::with_capacity(views.len());
    for (name, view) in &views {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F64 => Kind::Double,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            other => return Err(bad(format!("{name} is {other:?}, not floating point"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(torch(format!("reading {name} from {}", path.display())))?;
        tensors.insert(name.as_str(), t);
    }
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if let Some(src) = tensors.get(name.as_str()) {
                var.f_copy_(src)
                    .map_err(torch(format!("loading parameter {name}")))?;
            }
        }
        Ok(())
    })
}

/// A loaded, checked model artifact: the GNN ready to predict on `device`, the GBDT as text.
#[derive(Debug)]
pub struct Artifact {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The GNN's parameters: f32 on the load device, frozen (no gradients); see
    /// [`crate::net::set_precision`] for half precision.
    pub vs: VarStore,
    /// Hybrid-FraudNet on [`Artifact::vs`].
    pub net: HybridFraudNet,
    /// The LightGBM model text (build the booster with [`Artifact::gbdt`]).
    pub gbdt_text: String,
    sampler: SamplerConfig,
    graph: GraphConfig,
}

impl Artifact {
    /// Loads the artifact in `dir` with the GNN on `device`. Refuses, naming the file:
    /// a missing file ([`ArtifactError::Missing`]), an unknown format version, another
    /// feature schema than this build's ([`ArtifactError::SchemaMismatch`]), a checksum
    /// mismatch, unusable sampler or graph settings, weights that do not fit the
    /// manifest's [`NetConfig`] (missing, extra or reshaped tensors), and GBDT text that
    /// does not load as this build's fallback.
    pub fn load(dir: &Path, device: Device) -> Result<Artifact, ArtifactError> {
        let manifest = read_manifest(dir)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let sampler = manifest.sampler_config_at(&manifest_path)?;
        let graph = manifest.graph_config_at(&manifest_path)?;

        let weights_bytes = read_checked(dir, WEIGHTS_FILE, &manifest)?;
        let gbdt_bytes = read_checked(dir, GBDT_FILE, &manifest)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let gbdt_path = dir.join(GBDT_FILE);

        let mut vs = VarStore::new(device);
        let net =
            HybridFraudNet::new(&vs.root(), &manifest.net).map_err(|e| ArtifactError::Setting {
                path: manifest_path.clone(),
                message: e.to_string(),
            })?;
        load_weights(&vs, &weights_bytes, &weights_path)?;
        vs.freeze();

        let gbdt_text = String::from_utf8(gbdt_bytes).map_err(|_| ArtifactError::GbdtFile {
            path: gbdt_path.clone(),
            source: GbdtError::ModelText {
                origin: gbdt_path.display().to_string(),
                message: "not UTF-8 text".into(),
            },
        })?;
        Gbdt::from_model_text(gbdt_text.clone()).map_err(|source| ArtifactError::GbdtFile {
            path: gbdt_path,
            source,
        })?;

        Ok(Artifact {
            dir: dir.to_owned(),
            manifest,
            vs,
            net,
            gbdt_text,
            sampler,
            graph,
        })
    }

    /// Builds the LightGBM booster from the artifact's text, on the calling thread (a
    /// [`Gbdt`] cannot move between threads).
    pub fn gbdt(&self) -> Result<Gbdt, ArtifactError> {
        Gbdt::from_model_text(self.gbdt_text.clone()).map_err(|source| ArtifactError::GbdtFile {
            path: self.dir.join(GBDT_FILE),
            source,
        })
    }

    /// The sampler configuration the model was trained with.
    pub fn sampler_config(&self) -> SamplerConfig {
        self.sampler.clone()
    }

    /// The graph configuration the model was trained with.
    pub fn graph_config(&self) -> GraphConfig {
        self.graph.clone()
    }

    /// The device the GNN runs on.
    pub fn device(&self) -> Device {
        self.net.device()
    }

    /// Runs the GNN in `precision` from now on (see [`set_precision`]): half precision
    /// is meant for inference on CUDA; on the CPU it works but is slower than f32.
    pub fn set_precision(&mut self, precision: Precision) {
        set_precision(&mut self.vs, precision);
    }

    /// The precision the GNN runs in.
    pub fn precision(&self) -> Precision {
        Precision::of(self.net.kind())
    }
}

/// GNN fraud probabilities of `subs`, in order: collated into `batch` (reused, keeping its
/// capacity) with `max_sequence`, copied to the net's device, predicted without gradients.
/// No subgraphs give no scores.
pub fn score_gnn(
    net: &HybridFraudNet,
    subs: &[Subgraph],
    max_sequence: usize,
    batch: &mut Batch,
) -> Result<Vec<f32>, ArtifactError> {
    if subs.is_empty() {
        return Ok(Vec::new());
    }
    batch.collate(subs, max_sequence);
    let tensors = BatchTensors::from_batch(batch, net.device())?;
    let p = net.predict(&tensors)?;
    p.f_to_device(Device::Cpu)
        .and_then(|t| Vec::<f32>::try_from(&t))
        .map_err(torch("copying GNN scores to the host"))
}

/// GBDT fraud probabilities of `subs`, in order: their tabular rows written into `buf`
/// (cleared and reused), then one batch prediction. No subgraphs give no scores.
pub fn score_gbdt(
    gbdt: &Gbdt,
    subs: &[Subgraph],
    buf: &mut Vec<f32>,
) -> Result<Vec<f64>, ArtifactError> {
    buf.clear();
    for sub in subs {
        tabular_features(sub, buf);
    }
    Ok(gbdt.predict(buf, tabular_width())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_can_move_to_the_inference_thread() {
        fn send<T: Send>() {}
        send::<Artifact>();
    }

    #[test]
    fn settings_round_trip() {
        let s = SamplerConfig {
            fanouts: [3, 2, 1],
            strategy: Strategy::Weighted,
            seed: 9,
        };
        assert_eq!(SamplerSettings::from_config(&s).to_config().unwrap(), s);
        let bad = SamplerSettings {
            strategy: "random".into(),
            ..SamplerSettings::default()
        };
        assert!(bad.to_config().unwrap_err().contains("random"));
        let g = GraphConfig::default();
        assert_eq!(GraphSettings::from_config(&g).to_config().unwrap(), g);
        let bad = GraphSettings {
            retention_ms: 1,
            ..GraphSettings::default()
        };
        assert!(bad.to_config().is_err());
    }

    #[test]
    fn shape_comparison_lists_problems() {
        let expected = BTreeMap::from([("a".to_owned(), vec![2, 3]), ("b".to_owned(), vec![4])]);
        let found = BTreeMap::from([("a".to_owned(), vec![3, 2]), ("c".to_owned(), vec![1])]);
        let msg = compare_shapes(&expected, &found).unwrap_err();
        assert!(msg.contains("1 missing tensor(s): b"), "{msg}");
        assert!(msg.contains("1 unexpected tensor(s): c"), "{msg}");
        assert!(msg.contains("a (expected [2, 3], got [3, 2])"), "{msg}");
        assert!(compare_shapes(&expected, &expected).is_ok());
    }

    #[test]
    fn a_manifest_round_trips_through_json() {
        let m = Manifest::new(
            NetConfig::default(),
            &SamplerConfig::default(),
            &GraphConfig::default(),
            16,
            Split::default(),
            Thresholds::default(),
        );
        let json = serde_json::to_string_pretty(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        assert_eq!(m.feature_schema_hash, features::schema_hash());
    }
}
