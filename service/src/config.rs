//! The one typed configuration of `fraudgraph serve`.
//!
//! Three layers, later ones winning: the defaults below, a JSON file (`--config`, any subset
//! of the fields), then environment variables and flags (`FRAUDGRAPH_<NAME>` or
//! `--<name>`, for the settings operators change most; clap gives a flag precedence over its
//! variable). docs/CONFIG.md lists every field; `fraudgraph serve --print-config` prints the
//! merged result.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::ingest::IngestConfig;

/// Everything `fraudgraph serve` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address (HTTP).
    pub metrics_listen: SocketAddr,
    /// The model artifact directory; `None` serves the artifact embedded in the binary
    /// (the committed `models/artifacts/default`).
    pub artifact: Option<PathBuf>,
    /// Where the GNN runs: `auto` (CUDA when present), `cpu` or `cuda`.
    pub device: String,
    /// The GNN's precision: `f32`, or `f16` / `bf16` for half-precision inference on
    /// CUDA (their accuracy cost is in docs/MODELS.md; on the CPU they run, slower).
    pub precision: String,
    /// Without Kafka and without a snapshot, the graph is warmed with this many simulated
    /// transactions (the first ones of the simulation below) before the service reports
    /// SERVING.
    pub warm_transactions: u64,
    /// Size of the simulation the warm history is taken from (`bench serve` sends the
    /// transactions after the warm ones).
    pub sim_transactions: u64,
    /// Seed of that simulation.
    pub sim_seed: u64,
    /// Graph snapshots.
    pub snapshot: SnapshotConfig,
    /// The scoring pipeline.
    pub pipeline: PipelineConfig,
    /// Request limits.
    pub limits: Limits,
    /// Decisions from scores.
    pub decisions: DecisionConfig,
    /// moka caches.
    pub caches: CacheConfig,
    /// Kafka ingestion; disabled while `kafka.brokers` is empty.
    pub kafka: IngestConfig,
    /// TLS for the gRPC listener; plaintext when absent.
    pub tls: Option<TlsConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:50051".parse().expect("valid address"),
            metrics_listen: "127.0.0.1:9100".parse().expect("valid address"),
            artifact: None,
            device: "auto".into(),
            precision: "f32".into(),
            warm_transactions: 200_000,
            sim_transactions: 250_000,
            sim_seed: 1,
            snapshot: SnapshotConfig::default(),
            pipeline: PipelineConfig::default(),
            limits: Limits::default(),
            decisions: DecisionConfig::default(),
            caches: CacheConfig::default(),
            kafka: IngestConfig::default(),
            tls: None,
        }
    }
}

/// Graph snapshots: written periodically and on shutdown, read at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The snapshot file; no snapshots when absent. Read at start if it exists (Kafka then
    /// resumes from the offsets it records), written atomically.
    pub path: Option<PathBuf>,
    /// Seconds between periodic snapshots; 0 writes one only at shutdown.
    pub interval_s: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            path: None,
            interval_s: 300,
        }
    }
}

/// The scoring pipeline: sampler threads → batcher → inference thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Threads that sample neighbourhoods and compute the GBDT safety-net score.
    pub sampler_threads: usize,
    /// Requests waiting for a sampler thread before new ones are refused
    /// (RESOURCE_EXHAUSTED).
    pub queue_capacity: usize,
    /// Requests waiting for the GNN before new ones are shed to the GBDT (OVERLOAD).
    pub inference_queue_capacity: usize,
    /// Most transactions in one GNN forward pass.
    pub max_batch: usize,
    /// While the inference thread is busy, longest a batch waits for more requests after
    /// its first, microseconds (an idle inference thread gets the batch at once).
    pub max_batch_wait_us: u64,
    /// Staging buffers between collation and inference: 2 overlaps collating batch k+1
    /// with the forward pass of batch k (double buffering); 1 does them in turn.
    pub buffers: usize,
    /// The latency budget of a request without a gRPC deadline, milliseconds.
    pub default_deadline_ms: u64,
    /// Time kept back from the deadline to answer with the GBDT, microseconds (or a tenth
    /// of the request's budget when that is more): covers
    /// tokio's millisecond timer resolution, writing the response and the network, so the
    /// fallback reaches the caller before its own deadline fires.
    pub deadline_margin_us: u64,
    /// How the GNN's forward pass runs: `native` (on the CPU without libtorch: the same
    /// scores, ~2.5x faster on the small batches of serving; f32 only), `libtorch`, or
    /// `auto` (native on the CPU in f32, libtorch on CUDA or in half precision).
    pub backend: String,
    /// libtorch intra-op threads of the inference thread (the libtorch backend).
    pub inference_threads: usize,
    /// Fault injection for drills and tests: sleep this long before every GNN forward
    /// pass, milliseconds. Keep 0 in production.
    pub inference_delay_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            sampler_threads: 2,
            queue_capacity: 4096,
            inference_queue_capacity: 1024,
            max_batch: 64,
            max_batch_wait_us: 1000,
            buffers: 2,
            default_deadline_ms: 50,
            deadline_margin_us: 3000,
            backend: "auto".to_owned(),
            inference_threads: 1,
            inference_delay_ms: 0,
        }
    }
}

/// Limits on what one client may ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request message, bytes.
    pub max_message_bytes: usize,
    /// Most transactions in one ScoreBatch call.
    pub max_batch_request: usize,
    /// Most concurrent HTTP/2 streams per connection (bounds ScoreStream calls too).
    pub max_concurrent_streams: u32,
    /// Most evidence paths an Explain call may ask for.
    pub max_explain_paths: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 << 20,
            max_batch_request: 256,
            max_concurrent_streams: 256,
            max_explain_paths: 50,
        }
    }
}

/// How a score becomes a decision: BLOCK at or above the model's threshold from the
/// artifact (chosen for the best F1 on validation), REVIEW at or above
/// `review_ratio × threshold`, ALLOW below.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// The REVIEW band's lower edge as a fraction of the BLOCK threshold, in (0, 1].
    pub review_ratio: f64,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig { review_ratio: 0.5 }
    }
}

/// moka caches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Recent answers by txn_id, so a retried Score gets the same answer and applies
    /// nothing twice.
    pub scores_capacity: u64,
    /// How long a recent answer is kept, seconds.
    pub scores_ttl_s: u64,
    /// Recent explanations by txn_id.
    pub explanations_capacity: u64,
    /// Unlabelled transactions remembered for crediting labels (see `labels`).
    pub label_transactions: u64,
    /// Entities with label counts.
    pub label_entities: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            scores_capacity: 200_000,
            scores_ttl_s: 600,
            explanations_capacity: 10_000,
            label_transactions: 2_000_000,
            label_entities: 1_000_000,
        }
    }
}

/// PEM files for TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Flags (and their environment variables) of `fraudgraph serve`; each overrides the
/// config file.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// JSON config file (any subset of the fields; see docs/CONFIG.md).
    #[arg(long, env = "FRAUDGRAPH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the merged configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// gRPC listen address.
    #[arg(long, env = "FRAUDGRAPH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "FRAUDGRAPH_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Model artifact directory (default: the embedded artifact).
    #[arg(long, env = "FRAUDGRAPH_ARTIFACT")]
    pub artifact: Option<PathBuf>,
    /// auto, cpu or cuda.
    #[arg(long, env = "FRAUDGRAPH_DEVICE")]
    pub device: Option<String>,
    /// The GNN's precision: f32, f16 or bf16 (half precision is meant for CUDA).
    #[arg(long, env = "FRAUDGRAPH_PRECISION")]
    pub precision: Option<String>,
    /// Kafka brokers (host:port,...); consumes the transaction stream instead of warming
    /// the graph from simulation.
    #[arg(long, env = "FRAUDGRAPH_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka consumer group.
    #[arg(long, env = "FRAUDGRAPH_KAFKA_GROUP_ID")]
    pub kafka_group_id: Option<String>,
    /// Score every consumed transaction and write decisions to the decisions topic.
    #[arg(long, env = "FRAUDGRAPH_SCORE_ON_INGEST")]
    pub score_on_ingest: Option<bool>,
    /// Simulated transactions that warm the graph when there is no Kafka and no snapshot.
    #[arg(long, env = "FRAUDGRAPH_WARM_TRANSACTIONS")]
    pub warm_transactions: Option<u64>,
    /// Seed of the warm-up simulation.
    #[arg(long, env = "FRAUDGRAPH_SIM_SEED")]
    pub sim_seed: Option<u64>,
    /// Graph snapshot file (read at start if present, written periodically and at shutdown).
    #[arg(long, env = "FRAUDGRAPH_SNAPSHOT_PATH")]
    pub snapshot_path: Option<PathBuf>,
    /// Seconds between periodic snapshots (0: only at shutdown).
    #[arg(long, env = "FRAUDGRAPH_SNAPSHOT_INTERVAL_S")]
    pub snapshot_interval_s: Option<u64>,
    /// Sampler threads.
    #[arg(long, env = "FRAUDGRAPH_SAMPLER_THREADS")]
    pub sampler_threads: Option<usize>,
    /// Most transactions per GNN forward pass.
    #[arg(long, env = "FRAUDGRAPH_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Longest a batch waits for more requests while the inference thread is busy,
    /// microseconds.
    #[arg(long, env = "FRAUDGRAPH_MAX_BATCH_WAIT_US")]
    pub max_batch_wait_us: Option<u64>,
    /// Staging buffers (2 = double buffering, 1 = single).
    #[arg(long, env = "FRAUDGRAPH_BUFFERS")]
    pub buffers: Option<usize>,
    /// Latency budget of requests without a gRPC deadline, milliseconds.
    #[arg(long, env = "FRAUDGRAPH_DEFAULT_DEADLINE_MS")]
    pub default_deadline_ms: Option<u64>,
    /// How the GNN runs: auto, native (CPU, no libtorch) or libtorch.
    #[arg(long, env = "FRAUDGRAPH_BACKEND")]
    pub backend: Option<String>,
    /// Fault injection: delay before every GNN forward pass, milliseconds.
    #[arg(long, env = "FRAUDGRAPH_INFERENCE_DELAY_MS")]
    pub inference_delay_ms: Option<u64>,
}

/// What is wrong with a configuration, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The offending field, e.g. `pipeline.max_batch`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ServeConfig {
    /// The file (if any), then the flags and environment on top.
    pub fn load(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
        let mut c: ServeConfig =
            crate::commands::read_json(args.config.as_deref(), "fraudgraph serve config")?;
        macro_rules! set {
            ($flag:ident => $($field:ident).+) => {
                if let Some(v) = &args.$flag {
                    c.$($field).+ = v.clone().into();
                }
            };
        }
        set!(listen => listen);
        set!(metrics_listen => metrics_listen);
        set!(device => device);
        set!(precision => precision);
        set!(kafka_brokers => kafka.brokers);
        set!(kafka_group_id => kafka.group_id);
        set!(score_on_ingest => kafka.score_on_ingest);
        set!(warm_transactions => warm_transactions);
        set!(sim_seed => sim_seed);
        set!(snapshot_interval_s => snapshot.interval_s);
        set!(sampler_threads => pipeline.sampler_threads);
        set!(max_batch => pipeline.max_batch);
        set!(max_batch_wait_us => pipeline.max_batch_wait_us);
        set!(buffers => pipeline.buffers);
        set!(default_deadline_ms => pipeline.default_deadline_ms);
        set!(inference_delay_ms => pipeline.inference_delay_ms);
        set!(backend => pipeline.backend);
        if let Some(a) = &args.artifact {
            c.artifact = Some(a.clone());
        }
        if let Some(p) = &args.snapshot_path {
            c.snapshot.path = Some(p.clone());
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, field: &'static str, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError {
                    field,
                    message: message.to_owned(),
                })
            }
        };
        let p = &self.pipeline;
        check(
            matches!(self.device.as_str(), "auto" | "cpu" | "cuda"),
            "device",
            "must be auto, cpu or cuda",
        )?;
        check(
            matches!(self.precision.as_str(), "f32" | "f16" | "bf16"),
            "precision",
            "must be f32, f16 or bf16",
        )?;
        check(
            matches!(p.backend.as_str(), "auto" | "native" | "libtorch"),
            "pipeline.backend",
            "must be auto, native or libtorch",
        )?;
        check(
            p.backend != "native" || (self.device != "cuda" && self.precision == "f32"),
            "pipeline.backend",
            "native runs in f32 on the CPU; use libtorch (or auto) for cuda or half precision",
        )?;
        check(
            p.sampler_threads >= 1,
            "pipeline.sampler_threads",
            "must be at least 1",
        )?;
        check(
            p.queue_capacity >= 1,
            "pipeline.queue_capacity",
            "must be at least 1",
        )?;
        check(
            p.inference_queue_capacity >= 1,
            "pipeline.inference_queue_capacity",
            "must be at least 1",
        )?;
        check(
            (1..=4096).contains(&p.max_batch),
            "pipeline.max_batch",
            "must be 1 to 4096",
        )?;
        check(
            (1..=2).contains(&p.buffers),
            "pipeline.buffers",
            "must be 1 (single) or 2 (double buffering)",
        )?;
        check(
            p.default_deadline_ms >= 1,
            "pipeline.default_deadline_ms",
            "must be at least 1",
        )?;
        check(
            p.inference_threads >= 1,
            "pipeline.inference_threads",
            "must be at least 1",
        )?;
        check(
            self.limits.max_batch_request >= 1,
            "limits.max_batch_request",
            "must be at least 1",
        )?;
        check(
            self.limits.max_message_bytes >= 1024,
            "limits.max_message_bytes",
            "must be at least 1024",
        )?;
        check(
            self.decisions.review_ratio > 0.0 && self.decisions.review_ratio <= 1.0,
            "decisions.review_ratio",
            "must be in (0, 1]",
        )?;
        check(
            self.warm_transactions <= self.sim_transactions,
            "warm_transactions",
            "must not exceed sim_transactions",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{"pipeline": {"max_batch": 16, "buffers": 1}, "kafka": {"brokers": "k:9092"}}"#,
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            buffers: Some(2),
            ..ServeArgs::default()
        };
        let c = ServeConfig::load(&args).unwrap();
        assert_eq!(c.pipeline.max_batch, 16);
        assert_eq!(c.pipeline.buffers, 2, "the flag wins over the file");
        assert_eq!(c.kafka.brokers, "k:9092");

        std::fs::write(&path, r#"{"pipeline": {"max_batch": 0}}"#).unwrap();
        let err = ServeConfig::load(&ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("pipeline.max_batch"), "{err}");

        std::fs::write(&path, r#"{"pipeline": {"max_btch": 3}}"#).unwrap();
        let err = ServeConfig::load(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("max_btch"), "{err:#}");
    }

    #[test]
    fn precision_is_one_of_the_three_kinds() {
        let with = |p: &str| {
            ServeConfig::load(&ServeArgs {
                precision: Some(p.to_owned()),
                ..ServeArgs::default()
            })
        };
        assert_eq!(ServeConfig::default().precision, "f32");
        assert_eq!(with("bf16").unwrap().precision, "bf16");
        let err = with("f64").unwrap_err();
        assert!(
            err.to_string()
                .contains("precision: must be f32, f16 or bf16"),
            "{err}"
        );
    }

    #[test]
    fn backend_is_auto_native_or_libtorch_and_native_only_f32_off_cuda() {
        let with = |backend: &str, device: &str, precision: &str| {
            ServeConfig::load(&ServeArgs {
                backend: Some(backend.to_owned()),
                device: Some(device.to_owned()),
                precision: Some(precision.to_owned()),
                ..ServeArgs::default()
            })
        };
        assert_eq!(ServeConfig::default().pipeline.backend, "auto");
        assert_eq!(
            with("native", "cpu", "f32").unwrap().pipeline.backend,
            "native"
        );
        assert!(with("libtorch", "cuda", "bf16").is_ok());
        assert!(with("auto", "cuda", "f16").is_ok());
        let err = with("onnx", "cpu", "f32").unwrap_err().to_string();
        assert!(
            err.contains("pipeline.backend: must be auto, native or libtorch"),
            "{err}"
        );
        for (device, precision) in [("cuda", "f32"), ("cpu", "bf16")] {
            let err = with("native", device, precision).unwrap_err().to_string();
            assert!(
                err.contains("pipeline.backend: native runs in f32 on the CPU"),
                "{err}"
            );
        }
    }
}
