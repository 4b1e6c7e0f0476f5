//! `fraudgraph bench pipeline`: the in-process scoring pipeline at saturation, with one
//! staging buffer and with two (double buffering), in one run so the two can be compared
//! as a ratio on a noisy machine.
//!
//! Every request gets a generous deadline so the GNN answers all of them; the figure is
//! GNN-scored transactions per second with `concurrency` requests kept in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use fraudgraph_models::artifact::Artifact;
use fraudgraph_proto::v1::{ModelKind, Transaction};
use fraudgraph_sampler::graph::Graph;
use fraudgraph_simulator::{SimConfig, Simulation};
use serde_json::json;

use super::device::DeviceChoice;
use super::serve::{embedded_artifact_dir, model_version, warm_from_simulation};
use crate::config::{PipelineConfig, ServeConfig};
use crate::labels::LabelBook;
use crate::live_graph::LiveGraph;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// Arguments of `fraudgraph bench pipeline`.
#[derive(Args)]
pub struct PipelineBench {
    /// Simulated transactions that warm the graph before scoring.
    #[arg(long, default_value_t = 200_000)]
    warm_transactions: u64,
    /// Scored requests per configuration.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Most transactions per GNN forward pass.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Sampler threads.
    #[arg(long, default_value_t = 2)]
    sampler_threads: usize,
    /// libtorch intra-op threads of the inference thread.
    #[arg(long, default_value_t = 1)]
    inference_threads: usize,
    /// How the GNN runs: auto (native on the CPU), native or libtorch.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Model artifact directory (default: the embedded one).
    #[arg(long)]
    artifact: Option<std::path::PathBuf>,
    /// auto, cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Rounds of (single, double), alternating, to average out machine noise.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Print one JSON object (the default prints it too; kept for scripts).
    #[arg(long)]
    json: bool,
}

/// One configuration's result.
struct RunResult {
    rps: f64,
    gnn_share: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs the subcommand.
pub fn run(b: PipelineBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.requests > 0, "--requests: must be at least 1");
    anyhow::ensure!(b.concurrency > 0, "--concurrency: must be at least 1");
    anyhow::ensure!(
        matches!(b.backend.as_str(), "auto" | "native" | "libtorch"),
        "--backend: must be auto, native or libtorch"
    );
    let dir = match &b.artifact {
        Some(d) => d.clone(),
        None => embedded_artifact_dir()?,
    };
    let device = b.device.resolve()?;
    let first = Artifact::load(&dir, device)
        .with_context(|| format!("loading the model artifact {}", dir.display()))?;
    let metrics = Arc::new(Metrics::new());
    let live = Arc::new(LiveGraph::new(
        Graph::new(first.graph_config()),
        metrics.clone(),
    ));
    let labels = Arc::new(LabelBook::new(1_000_000, 1_000_000));
    let serve = ServeConfig {
        warm_transactions: b.warm_transactions,
        sim_transactions: b.warm_transactions + b.requests as u64,
        ..ServeConfig::default()
    };
    warm_from_simulation(&serve, &live, &labels)?;
    let targets: Vec<Transaction> = Simulation::generate(&SimConfig {
        transactions: serve.sim_transactions,
        seed: serve.sim_seed,
        ..SimConfig::default()
    })?
    .transactions()
    .skip(b.warm_transactions as usize)
    .collect();
    drop(first);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut single = Vec::new();
    let mut double = Vec::new();
    for round in 0..b.rounds.max(1) {
        for buffers in [1, 2] {
            let artifact = Artifact::load(&dir, device)?;
            let version = model_version(&artifact);
            let config = PipelineConfig {
                sampler_threads: b.sampler_threads,
                max_batch: b.max_batch,
                buffers,
                inference_threads: b.inference_threads,
                backend: b.backend.clone(),
                queue_capacity: b.concurrency * 2,
                inference_queue_capacity: b.concurrency * 2,
                ..PipelineConfig::default()
            };
            let pipeline = Arc::new(Pipeline::start(
                artifact,
                version,
                live.clone(),
                labels.clone(),
                &config,
                &serve.decisions,
                Arc::new(Metrics::new()),
            )?);
            while !pipeline.gnn_ready() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let r = runtime.block_on(saturate(
                pipeline.clone(),
                &targets,
                b.requests,
                b.concurrency,
            ));
            pipeline.shutdown();
            eprintln!(
                "round {round}: {} buffer(s): {:.0} scores/s, GNN share {:.3}, p99 {:.1} ms",
                buffers, r.rps, r.gnn_share, r.p99_ms
            );
            if buffers == 1 {
                single.push(r);
            } else {
                double.push(r);
            }
        }
    }
    let mean =
        |v: &[RunResult], f: fn(&RunResult) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let summary = |v: &[RunResult]| {
        json!({
            "scores_per_s": mean(v, |r| r.rps),
            "gnn_share": mean(v, |r| r.gnn_share),
            "p50_ms": mean(v, |r| r.p50_ms),
            "p99_ms": mean(v, |r| r.p99_ms),
        })
    };
    let out = json!({
        "device": format!("{device:?}"),
        "requests": b.requests,
        "concurrency": b.concurrency,
        "max_batch": b.max_batch,
        "sampler_threads": b.sampler_threads,
        "inference_threads": b.inference_threads,
        "backend": b.backend,
        "rounds": b.rounds.max(1),
        "single_buffer": summary(&single),
        "double_buffer": summary(&double),
        "double_over_single": mean(&double, |r| r.rps) / mean(&single, |r| r.rps),
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Scores `requests` transactions (cycling through `targets`) keeping `concurrency` in
/// flight; GNN answers per second and latency percentiles.
async fn saturate(
    pipeline: Arc<Pipeline>,
    targets: &[Transaction],
    requests: usize,
    concurrency: usize,
) -> RunResult {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..requests {
        let permit = sem.clone().acquire_owned().await.expect("open semaphore");
        let txn = targets[i % targets.len()].clone();
        let pipeline = pipeline.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(10);
            let r = pipeline.score(txn, false, deadline, false).await;
            drop(permit);
            (
                r.map(|s| s.response.model == ModelKind::Gnn as i32)
                    .unwrap_or(false),
                t0.elapsed(),
            )
        });
    }
    let mut gnn = 0usize;
    let mut lat = Vec::with_capacity(requests);
    while let Some(done) = tasks.join_next().await {
        let (is_gnn, took) = done.expect("scoring task");
        gnn += usize::from(is_gnn);
        lat.push(took.as_secs_f64() * 1e3);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    RunResult {
        rps: gnn as f64 / elapsed,
        gnn_share: gnn as f64 / requests as f64,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}
