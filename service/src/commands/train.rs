//! `fraudgraph train`: trains Hybrid-FraudNet and the LightGBM fallback from a
//! labelled stream (a file from `fraudgraph simulate`, or a simulation run in
//! process) and writes a model artifact directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use fraudgraph_models::artifact::{self, Manifest, Thresholds};
use fraudgraph_models::dataset::LabelledStream;
use fraudgraph_models::train::{self, TrainConfig, TrainEvent};
use fraudgraph_sampler::graph::GraphConfig;
use fraudgraph_sampler::sample::SamplerConfig;
use fraudgraph_simulator::{SimConfig, Simulation};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::device::DeviceChoice;
use super::read_json;

/// Arguments of `fraudgraph train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Labelled stream file (`.jsonl` or `.pb`) from `fraudgraph simulate`.
    #[arg(long, conflicts_with = "transactions")]
    data: Option<PathBuf>,
    /// Instead of --data: simulate this many transactions in process.
    #[arg(long)]
    transactions: Option<u64>,
    /// Simulator seed (with --transactions).
    #[arg(long, default_value_t = 1)]
    sim_seed: u64,
    /// Simulator config JSON (with --transactions); see docs/SIMULATOR.md.
    #[arg(long)]
    sim_config: Option<PathBuf>,
    /// The artifact directory to write (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// JSON file with any TrainConfig fields (see docs/MODELS.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Most epochs (overrides the config file).
    #[arg(long)]
    epochs: Option<usize>,
    /// Training seed (overrides the config file).
    #[arg(long)]
    seed: Option<u64>,
    /// The sampler's fan-out per hop, e.g. 20,10,5 (the sampler's default). The
    /// artifact records it, and serving and evaluation sample with the artifact's.
    #[arg(long, value_parser = super::parse_fanouts)]
    fanouts: Option<[usize; 3]>,
    /// Where the GNN trains.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

fn bar(len: u64, template: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    )
}

/// Runs the subcommand.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut config: TrainConfig = read_json(args.config.as_deref(), "train config")?;
    if let Some(e) = args.epochs {
        config.epochs = e;
    }
    if let Some(s) = args.seed {
        config.seed = s;
    }
    let (stream, data) = match (&args.data, args.transactions) {
        (Some(path), None) => (
            LabelledStream::read(path).with_context(|| format!("reading {}", path.display()))?,
            json!({ "file": path.display().to_string() }),
        ),
        (None, Some(n)) => {
            let mut sim: SimConfig = read_json(args.sim_config.as_deref(), "simulator config")?;
            sim.transactions = n;
            sim.seed = args.sim_seed;
            tracing::info!(transactions = n, seed = args.sim_seed, "simulating");
            let simulation = Simulation::generate(&sim)?;
            (
                LabelledStream::from_simulation(&simulation),
                json!({ "simulated": sim }),
            )
        }
        _ => bail!("give --data PATH or --transactions N"),
    };
    let device = args.device.resolve()?;
    let graph_config = GraphConfig::default();
    let defaults = SamplerConfig::default();
    let sampler = SamplerConfig {
        fanouts: args.fanouts.unwrap_or(defaults.fanouts),
        seed: config.seed,
        ..defaults
    };
    tracing::info!(
        transactions = stream.transactions.len(),
        frauds = stream.fraud.len(),
        ?device,
        "training"
    );

    let replay_bar = bar(
        stream.transactions.len() as u64,
        "{spinner} replay [{bar:30}] {human_pos}/{human_len} txns, {per_sec}, eta {eta}",
    );
    let epoch_bar = bar(
        0,
        "{spinner} {msg} [{bar:30}] {pos}/{len} batches, eta {eta}",
    );
    epoch_bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    let progress = |event: TrainEvent| match event {
        TrainEvent::Replay(p) => {
            replay_bar.set_position(p.done as u64);
            if p.done == p.total {
                replay_bar.finish_and_clear();
            }
        }
        TrainEvent::Examples { train, valid } => tracing::info!(
            train_fraud = train.0,
            train_legit = train.1,
            valid_fraud = valid.0,
            valid_legit = valid.1,
            "examples ready"
        ),
        TrainEvent::Batch {
            epoch,
            done,
            total,
            loss,
        } => {
            if done <= 8 {
                epoch_bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                epoch_bar.reset();
                epoch_bar.set_length(total as u64);
            }
            epoch_bar.set_message(format!("epoch {epoch} loss {loss:.4}"));
            epoch_bar.set_position(done as u64);
        }
        TrainEvent::Epoch(e) => {
            epoch_bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            tracing::info!(
                epoch = e.epoch,
                loss = format!("{:.4}", e.loss),
                valid_pr_auc = format!("{:.4}", e.valid_pr_auc),
                seconds = format!("{:.1}", e.seconds),
                "epoch done"
            );
        }
        TrainEvent::Gbdt => tracing::info!("training the LightGBM fallback"),
    };
    let trained = train::train(&stream, &config, &graph_config, &sampler, device, &progress)?;

    let command: Vec<String> = std::env::args().collect();
    let mut manifest = Manifest::new(
        config.net.clone(),
        &sampler,
        &graph_config,
        config.max_sequence,
        config.split,
        Thresholds {
            gnn: trained.thresholds.0,
            gbdt: trained.thresholds.1,
        },
    );
    manifest.metrics = json!({
        "validation": { "gnn": trained.valid_metrics.0, "gbdt": trained.valid_metrics.1 },
    });
    manifest.training = json!({
            "config": config,
            "command": command.join(" "),
            "data": data,
            "device": format!("{device:?}"),
            "seed": config.seed,
            "transactions": stream.transactions.len(),
            "frauds": stream.fraud.len(),
            "examples": {
                "train_fraud": trained.examples[0],
                "train_legit": trained.examples[1],
                "valid_fraud": trained.examples[2],
                "valid_legit": trained.examples[3],
            },
            "split_times": trained.split_times,
            "epochs": trained.epochs,
            "best_epoch": trained.best_epoch,
            "seconds": {
                "replay": trained.seconds[0],
                "gnn": trained.seconds[1],
                "gbdt": trained.seconds[2],
                "total": started.elapsed().as_secs_f64(),
            },
    });
    artifact::save_artifact(&args.out, &manifest, &trained.vs, &trained.gbdt)
        .with_context(|| format!("writing the artifact to {}", args.out.display()))?;
    let (g, b) = &trained.valid_metrics;
    println!(
        "wrote {} in {:.0} s (best epoch {})\nvalidation   PR-AUC  ROC-AUC  F1 at threshold\n  gnn        {:.4}  {:.4}   {:.4} at {:.3}\n  gbdt       {:.4}  {:.4}   {:.4} at {:.3}",
        args.out.display(),
        started.elapsed().as_secs_f64(),
        trained.best_epoch,
        g.pr_auc.unwrap_or(0.0),
        g.roc_auc.unwrap_or(0.0),
        g.f1.unwrap_or(0.0),
        trained.thresholds.0,
        b.pr_auc.unwrap_or(0.0),
        b.roc_auc.unwrap_or(0.0),
        b.f1.unwrap_or(0.0),
        trained.thresholds.1,
    );
    Ok(())
}
