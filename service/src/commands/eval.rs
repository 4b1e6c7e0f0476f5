//! `fraudgraph eval`: a model artifact on the held-out test period of a labelled stream
//! file, the GNN and the GBDT fallback side by side, overall and per fraud typology. Writes
//! `metrics.json`, `report.md` and three PNGs into the report directory and prints a short
//! table.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use fraudgraph_models::artifact::Artifact;
use fraudgraph_models::dataset::{LabelledStream, ReplayProgress};
use fraudgraph_models::eval::{self, EvalReport, METRICS_FILE, REPORT_FILE};
use fraudgraph_models::metrics::Metrics;
use indicatif::{ProgressBar, ProgressStyle};

use super::device::{DeviceChoice, PrecisionChoice};

/// Arguments of `fraudgraph eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The model artifact directory (written by `fraudgraph train`).
    #[arg(long)]
    artifact: PathBuf,
    /// The labelled stream file (`.jsonl` or `.pb`, as `fraudgraph simulate` writes);
    /// the artifact's time split picks its test period.
    #[arg(long)]
    data: PathBuf,
    /// The report directory (created if missing).
    #[arg(long)]
    report: PathBuf,
    /// Where the GNN runs.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// The GNN's precision: f16 and bf16 measure what half-precision inference costs in
    /// accuracy (meant for CUDA; on the CPU they run, slower than f32).
    #[arg(long, value_enum, default_value_t = PrecisionChoice::F32)]
    precision: PrecisionChoice,
    /// Which forward pass scores: libtorch (on --device, in --precision), or native (the
    /// CPU pass `fraudgraph serve` runs there; f32 only).
    #[arg(long, value_enum, default_value_t = BackendChoice::Libtorch)]
    backend: BackendChoice,
}

/// `--backend` of `fraudgraph eval`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendChoice {
    Libtorch,
    Native,
}

/// Runs the subcommand.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = args.device.resolve()?;
    let mut artifact = Artifact::load(&args.artifact, device)
        .with_context(|| format!("loading the artifact {}", args.artifact.display()))?;
    artifact.set_precision(args.precision.precision());
    tracing::info!(
        artifact = %args.artifact.display(),
        ?device,
        precision = artifact.precision().name(),
        feature_schema = %artifact.manifest.feature_schema_hash,
        "eval: artifact loaded"
    );
    let stream = LabelledStream::read(&args.data)
        .with_context(|| format!("reading the data {}", args.data.display()))?;
    tracing::info!(
        data = %args.data.display(),
        transactions = stream.transactions.len(),
        frauds = stream.fraud.len(),
        "eval: data read"
    );

    let bar = ProgressBar::new(stream.transactions.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {human_pos}/{human_len} transactions, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("eval: replay and score");
    let logged_tenth = Cell::new(0u64);
    let progress = |p: ReplayProgress| {
        bar.set_position(p.done as u64);
        // Without a terminal the bar is hidden: log every tenth instead.
        let tenth = (p.done as u64 * 10) / (p.total.max(1) as u64);
        if bar.is_hidden() && tenth > logged_tenth.get() {
            logged_tenth.set(tenth);
            tracing::info!("eval: {}/{} transactions replayed", p.done, p.total);
        }
    };
    let backend = match args.backend {
        BackendChoice::Libtorch => eval::GnnBackend::Libtorch,
        BackendChoice::Native => eval::GnnBackend::Native,
    };
    let report = eval::evaluate_with(&artifact, &stream, &args.report, &progress, backend)
        .with_context(|| {
            format!(
                "evaluating {} on {} into {}",
                args.artifact.display(),
                args.data.display(),
                args.report.display()
            )
        })?;
    bar.finish_and_clear();

    print_summary(&args, &report, started.elapsed().as_secs_f64());
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| format!("{:>6}", "n/a"), |v| format!("{v:.4}"))
}

fn print_summary(args: &EvalArgs, r: &EvalReport, seconds: f64) {
    println!(
        "evaluated {} on {} (GNN on {} in {}): {} test transactions, {} fraud ({:.2}%), {} .. {}, \
         in {seconds:.1} s",
        args.artifact.display(),
        args.data.display(),
        r.gnn_device,
        r.gnn_precision.name(),
        r.transactions,
        r.fraud,
        100.0 * r.fraud as f64 / r.transactions.max(1) as f64,
        eval::format_ms(r.test_first_ms),
        eval::format_ms(r.test_last_ms),
    );
    println!(
        "{:<28} {:>6}  {:>13}    {:>13}    {:>13}    {:>13}    {:>24}",
        "", "", "PR-AUC", "ROC-AUC", "F1", "recall@1%FPR", "PR-AUC gnn - gbdt"
    );
    let models = format!("{:>6} {:>6}", "gnn", "gbdt");
    println!(
        "{:<28} {:>6}  {models}    {models}    {models}    {models}    {:>24}",
        "set", "fraud", "(90% bootstrap interval)"
    );
    let row = |name: &str, g: &Metrics, b: &Metrics| {
        let margin = r.pr_auc_margins.get(name).map_or_else(
            || format!("{:>24}", "n/a"),
            |m| format!("{:+.3} ({:+.3} .. {:+.3})", m.margin, m.low, m.high),
        );
        println!(
            "{name:<28} {:>6}  {} {}    {} {}    {} {}    {} {}    {margin:>24}",
            g.positives,
            fmt(g.pr_auc),
            fmt(b.pr_auc),
            fmt(g.roc_auc),
            fmt(b.roc_auc),
            fmt(g.f1),
            fmt(b.f1),
            fmt(g.recall_at_1pct_fpr),
            fmt(b.recall_at_1pct_fpr),
        );
    };
    row("overall", &r.metrics.gnn.overall, &r.metrics.gbdt.overall);
    for (name, g) in &r.metrics.gnn.typologies {
        if let Some(b) = r.metrics.gbdt.typologies.get(name) {
            row(name, g, b);
        }
    }
    println!(
        "report: {} (metrics: {})",
        args.report.join(REPORT_FILE).display(),
        args.report.join(METRICS_FILE).display()
    );
}
