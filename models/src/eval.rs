//! Evaluation of a model artifact on the held-out test period of a labelled stream: both
//! models (the GNN and the GBDT fallback) side by side, overall and per fraud typology.
//!
//! The whole stream is replayed through a fresh graph with the artifact's graph and sampler
//! settings (leak-free: each transaction is sampled before it is applied), and every
//! transaction of the test period is scored, none skipped: precision depends on the base
//! rate, so the test set keeps the real share of fraud.
//!
//! Per model, the report holds `overall` [`Metrics`] at the manifest's threshold and one
//! entry per typology present in the test period (keyed by its proto name, e.g.
//! `TYPOLOGY_RING`), whose positives are that typology's frauds and whose negatives are all
//! legitimate test transactions. [`evaluate`] writes, into the report directory:
//!
//! - `metrics.json`: `{"gnn": {"overall": {...}, "TYPOLOGY_RING": {...}, ...}, "gbdt": {...}}`;
//! - `pr_auc_margins.json`: the GNN's PR-AUC lead over the GBDT per set, with its 90%
//!   bootstrap interval ([`crate::margin`]);
//! - `scores.csv`: every test transaction's two scores and its label, for looking at what
//!   either model missed;
//! - `report.md`: both models side by side per typology, counts, those leads, the test
//!   period, the artifact's manifest;
//! - `pr_curves.png`, `roc_curves.png`, `score_distributions.png`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fraudgraph_proto::v1::Typology;
use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::sample::Subgraph;
use serde::{Deserialize, Serialize};

use crate::artifact::{Artifact, ArtifactError, score_gbdt, score_gnn};
use crate::dataset::{self, DatasetError, LabelledStream, Period, ReplayProgress, SplitTimes};
use crate::margin::{PrAucMargin, pr_auc_margin};
use crate::metrics::{MetricError, Metrics, pr_curve, roc_curve};
use crate::net::{NATIVE_PART, NativeNet, NetError, Precision};
use crate::plots::{self, PlotError};
use crate::runtime;

/// Subgraphs scored together.
pub const EVAL_BATCH: usize = 256;
/// The file name of the metrics inside the report directory.
pub const METRICS_FILE: &str = "metrics.json";
/// The file name of the PR-AUC margins (GNN minus GBDT, with their bootstrap intervals):
/// `{"overall": {"margin": .., "low": .., "high": .., "share_ahead": .., "resamples": ..},
/// "TYPOLOGY_RING": {...}, ...}`.
pub const MARGINS_FILE: &str = "pr_auc_margins.json";
/// The file name of every test transaction's scores, for looking at what either model
/// missed: `txn_id,fraud,typology,gnn,gbdt` (typology empty when legitimate), in replay order.
pub const SCORES_FILE: &str = "scores.csv";
/// The file name of the Markdown report.
pub const REPORT_FILE: &str = "report.md";
/// The file name of the precision–recall curves.
pub const PR_CURVES_FILE: &str = "pr_curves.png";
/// The file name of the ROC curves.
pub const ROC_CURVES_FILE: &str = "roc_curves.png";
/// The file name of the score distributions.
pub const SCORE_DISTRIBUTIONS_FILE: &str = "score_distributions.png";
/// Bootstrap resamples behind each PR-AUC margin's interval (a common count for a 90%
/// percentile interval; each is one pass over the set's rows per model).
pub const MARGIN_RESAMPLES: u32 = 1000;
/// The seed of those resamples, so that a report is reproducible.
pub const MARGIN_SEED: u64 = 0;

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Building or scoring with the artifact's models failed.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The data or the artifact's split cannot be used.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The test period holds no transaction.
    #[error(
        "no transactions in the test period (from {}): the data ends before the artifact's \
         split reaches its test period",
        format_ms(*test_start_ms)
    )]
    NoTestData {
        /// Where the test period starts (Unix ms).
        test_start_ms: i64,
    },
    /// A metric could not be computed (e.g. a NaN score).
    #[error("{model} metrics: {source}")]
    Metric {
        /// `gnn`, `gbdt`, or `gnn - gbdt` (their PR-AUC margin).
        model: &'static str,
        /// Why.
        #[source]
        source: MetricError,
    },
    /// A plot could not be drawn or written.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// Writing the report failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One model's metrics: `overall`, then one entry per typology present in the test period,
/// keyed by its proto name (flattened into the same JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    /// All fraud against all legitimate test transactions.
    pub overall: Metrics,
    /// Per typology: its frauds against all legitimate test transactions.
    #[serde(flatten)]
    pub typologies: BTreeMap<String, Metrics>,
}

/// Both models' metrics: exactly what `metrics.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Hybrid-FraudNet.
    pub gnn: ModelMetrics,
    /// The LightGBM fallback.
    pub gbdt: ModelMetrics,
}

/// The outcome of [`evaluate`]: the metrics written to `metrics.json` and what they were
/// measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Both models' metrics.
    pub metrics: EvalMetrics,
    /// The artifact's split over the evaluated stream.
    pub split: SplitTimes,
    /// Event time of the first test transaction (Unix ms).
    pub test_first_ms: i64,
    /// Event time of the last test transaction (Unix ms).
    pub test_last_ms: i64,
    /// Test transactions scored.
    pub transactions: u64,
    /// Of which fraud.
    pub fraud: u64,
    /// Fraud per typology (proto names).
    pub fraud_by_typology: BTreeMap<String, u64>,
    /// The GNN's PR-AUC minus the GBDT's, with its bootstrap interval: `overall` and each
    /// typology present (proto names).
    pub pr_auc_margins: BTreeMap<String, PrAucMargin>,
    /// Seconds of the whole replay, sampling and scoring included.
    pub seconds: f64,
    /// Seconds spent in GNN scoring (collation, transfer, forward pass).
    pub gnn_seconds: f64,
    /// Seconds spent in GBDT scoring (tabular rows and prediction).
    pub gbdt_seconds: f64,
    /// The precision the GNN ran in.
    pub gnn_precision: Precision,
    /// Where the GNN ran, in words (`cpu`, `cuda:0`).
    pub gnn_device: String,
    /// Which implementation of its forward pass scored (reports before it existed:
    /// libtorch).
    #[serde(default)]
    pub gnn_backend: GnnBackend,
}

/// Which implementation of the GNN's forward pass [`evaluate_with`] scores with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GnnBackend {
    /// [`HybridFraudNet::predict`](crate::net::HybridFraudNet::predict), on the
    /// artifact's device and in its precision.
    #[default]
    Libtorch,
    /// [`NativeNet`], on the CPU in f32 (what `fraudgraph serve` runs on the CPU), in
    /// passes of [`NATIVE_PART`] subgraphs.
    Native,
}

impl GnnBackend {
    /// `libtorch` or `native`.
    pub fn name(self) -> &'static str {
        match self {
            GnnBackend::Libtorch => "libtorch",
            GnnBackend::Native => "native",
        }
    }
}

/// Scores and labels of the test transactions, in replay order.
#[derive(Default)]
struct Scored {
    gnn: Vec<f64>,
    gbdt: Vec<f64>,
    fraud: Vec<bool>,
    typology: Vec<i32>,
    txn_ids: Vec<String>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    gnn_seconds: f64,
    gbdt_seconds: f64,
}

/// Test examples waiting to be scored, and what has been scored.
struct Scorer<'a> {
    artifact: &'a Artifact,
    native: Option<NativeNet>,
    gbdt: crate::gbdt::Gbdt,
    pending: Vec<Subgraph>,
    batch: Batch,
    rows: Vec<f32>,
    out: Scored,
}

impl Scorer<'_> {
    fn flush(&mut self) -> Result<(), ArtifactError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let max_sequence = self.artifact.manifest.max_sequence;
        let gnn = match &self.native {
            Some(native) => {
                let mut gnn = Vec::with_capacity(self.pending.len());
                for part in self.pending.chunks(NATIVE_PART) {
                    self.batch.collate(part, max_sequence);
                    gnn.extend(native.predict(&self.batch)?);
                }
                gnn
            }
            None => score_gnn(
                &self.artifact.net,
                &self.pending,
                max_sequence,
                &mut self.batch,
            )?,
        };
        self.out.gnn_seconds += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let gbdt = score_gbdt(&self.gbdt, &self.pending, &mut self.rows)?;
        self.out.gbdt_seconds += started.elapsed().as_secs_f64();
        self.out.gnn.extend(gnn.into_iter().map(f64::from));
        self.out.gbdt.extend(gbdt);
        self.pending.clear();
        Ok(())
    }
}

/// Evaluates `artifact` on the test period of `stream` (the artifact's own split over this
/// stream) and writes `metrics.json`, `report.md` and three PNGs into `report_dir`
/// (created if missing); see the module docs. `progress` sees the replay advance.
pub fn evaluate(
    artifact: &Artifact,
    stream: &LabelledStream,
    report_dir: &Path,
    progress: &dyn Fn(ReplayProgress),
) -> Result<EvalReport, EvalError> {
    evaluate_with(artifact, stream, report_dir, progress, GnnBackend::Libtorch)
}

/// [`evaluate`] with the GNN scored by `backend`. [`GnnBackend::Native`] needs the
/// artifact in f32 (it is copied to the CPU; [`EvalError::Artifact`] otherwise).
pub fn evaluate_with(
    artifact: &Artifact,
    stream: &LabelledStream,
    report_dir: &Path,
    progress: &dyn Fn(ReplayProgress),
    backend: GnnBackend,
) -> Result<EvalReport, EvalError> {
    let started = Instant::now();
    let times = artifact.manifest.split.times(stream)?;
    let native = match backend {
        GnnBackend::Libtorch => None,
        GnnBackend::Native => {
            if artifact.precision() != Precision::F32 {
                return Err(ArtifactError::from(NetError::Config(format!(
                    "the native backend runs in f32, the artifact is in {}",
                    artifact.precision().name()
                )))
                .into());
            }
            Some(artifact.net.native().map_err(ArtifactError::from)?)
        }
    };
    let scorer = RefCell::new(Scorer {
        artifact,
        native,
        gbdt: artifact.gbdt()?,
        pending: Vec::with_capacity(EVAL_BATCH),
        batch: Batch::default(),
        rows: Vec::new(),
        out: Scored::default(),
    });
    let failed: RefCell<Option<ArtifactError>> = RefCell::new(None);
    let stop = Cell::new(false);

    dataset::replay(
        stream,
        &times,
        &artifact.graph_config(),
        &artifact.sampler_config(),
        |_, period, _| period == Period::Test && !stop.get(),
        |example| {
            let mut s = scorer.borrow_mut();
            let t = example.sub.t_ms;
            s.out.first_ms = Some(s.out.first_ms.map_or(t, |f| f.min(t)));
            s.out.last_ms = Some(s.out.last_ms.map_or(t, |l| l.max(t)));
            s.out.fraud.push(example.fraud);
            s.out.typology.push(example.typology);
            s.out.txn_ids.push(example.sub.txn_id.clone());
            s.pending.push(example.sub);
            if s.pending.len() >= EVAL_BATCH
                && let Err(e) = s.flush()
            {
                *failed.borrow_mut() = Some(e);
                stop.set(true);
            }
        },
        progress,
    );
    if let Some(e) = failed.into_inner() {
        return Err(e.into());
    }
    let mut scorer = scorer.into_inner();
    scorer.flush()?;
    let scored = scorer.out;
    let (Some(first), Some(last)) = (scored.first_ms, scored.last_ms) else {
        return Err(EvalError::NoTestData {
            test_start_ms: times.valid_end_ms,
        });
    };

    let gnn_threshold = artifact.manifest.thresholds.gnn;
    let gbdt_threshold = artifact.manifest.thresholds.gbdt;
    let sets = sets(&scored);
    let metrics = EvalMetrics {
        gnn: model_metrics("gnn", &scored, &sets, &scored.gnn, gnn_threshold)?,
        gbdt: model_metrics("gbdt", &scored, &sets, &scored.gbdt, gbdt_threshold)?,
    };
    let mut fraud_by_typology = BTreeMap::new();
    for (&f, &t) in scored.fraud.iter().zip(&scored.typology) {
        if f {
            *fraud_by_typology
                .entry(dataset::typology_name(t))
                .or_insert(0u64) += 1;
        }
    }
    let report = EvalReport {
        metrics,
        split: times,
        test_first_ms: first,
        test_last_ms: last,
        transactions: scored.fraud.len() as u64,
        fraud: scored.fraud.iter().filter(|&&f| f).count() as u64,
        fraud_by_typology,
        pr_auc_margins: pr_auc_margins(&scored, &sets)?,
        seconds: started.elapsed().as_secs_f64(),
        gnn_seconds: scored.gnn_seconds,
        gbdt_seconds: scored.gbdt_seconds,
        gnn_precision: artifact.precision(),
        gnn_device: match backend {
            GnnBackend::Libtorch => runtime::device_name(artifact.device()),
            GnnBackend::Native => runtime::device_name(tch::Device::Cpu),
        },
        gnn_backend: backend,
    };

    std::fs::create_dir_all(report_dir).map_err(|source| EvalError::Io {
        path: report_dir.to_owned(),
        source,
    })?;
    let write = |name: &str, bytes: &[u8]| {
        let path = report_dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| EvalError::Io { path, source })
    };
    for (name, json) in [
        (METRICS_FILE, pretty_json(&report.metrics)),
        (MARGINS_FILE, pretty_json(&report.pr_auc_margins)),
    ] {
        let json = json.map_err(|e| EvalError::Io {
            path: report_dir.join(name),
            source: std::io::Error::other(e),
        })?;
        write(name, &json)?;
    }
    write(SCORES_FILE, scores_csv(&scored).as_bytes())?;
    let notes = write_plots(report_dir, &scored, &report.metrics)?;
    write(REPORT_FILE, markdown(artifact, &report, &notes).as_bytes())?;
    Ok(report)
}

/// `scores.csv`: one row per test transaction in replay order, with a header.
fn scores_csv(scored: &Scored) -> String {
    let mut out = String::from("txn_id,fraud,typology,gnn,gbdt\n");
    for i in 0..scored.fraud.len() {
        let typology = if scored.fraud[i] {
            dataset::typology_name(scored.typology[i])
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            scored.txn_ids[i],
            u8::from(scored.fraud[i]),
            typology,
            scored.gnn[i],
            scored.gbdt[i]
        );
    }
    out
}

/// The sets both models are measured on: every test row (`overall`), then, per typology
/// present in the test period (by proto name), its frauds and every legitimate row; each
/// as row indices into `scored`.
fn sets(scored: &Scored) -> Vec<(String, Vec<usize>)> {
    let present: BTreeSet<i32> = scored
        .fraud
        .iter()
        .zip(&scored.typology)
        .filter(|(f, _)| **f)
        .map(|(_, &t)| t)
        .collect();
    let mut sets = vec![("overall".to_owned(), (0..scored.fraud.len()).collect())];
    for ty in present {
        let rows = (0..scored.fraud.len())
            .filter(|&i| !scored.fraud[i] || scored.typology[i] == ty)
            .collect();
        sets.push((dataset::typology_name(ty), rows));
    }
    sets
}

/// `values` at `rows`.
fn pick<T: Copy>(values: &[T], rows: &[usize]) -> Vec<T> {
    rows.iter().map(|&i| values[i]).collect()
}

/// One model's overall and per-typology metrics, on the [`sets`] of `scored`.
fn model_metrics(
    model: &'static str,
    scored: &Scored,
    sets: &[(String, Vec<usize>)],
    scores: &[f64],
    threshold: f64,
) -> Result<ModelMetrics, EvalError> {
    let err = |source| EvalError::Metric { model, source };
    let mut sets = sets.iter();
    let (_, all) = sets.next().expect("overall comes first");
    let overall =
        Metrics::compute(&pick(scores, all), &pick(&scored.fraud, all), threshold).map_err(err)?;
    let mut typologies = BTreeMap::new();
    for (name, rows) in sets {
        let m = Metrics::compute(&pick(scores, rows), &pick(&scored.fraud, rows), threshold)
            .map_err(err)?;
        typologies.insert(name.clone(), m);
    }
    Ok(ModelMetrics {
        overall,
        typologies,
    })
}

/// The GNN's PR-AUC lead over the GBDT on each of the [`sets`] of `scored` that has fraud,
/// with its bootstrap interval ([`MARGIN_RESAMPLES`] resamples, seed [`MARGIN_SEED`]).
fn pr_auc_margins(
    scored: &Scored,
    sets: &[(String, Vec<usize>)],
) -> Result<BTreeMap<String, PrAucMargin>, EvalError> {
    let mut margins = BTreeMap::new();
    for (name, rows) in sets {
        let labels = pick(&scored.fraud, rows);
        if !labels.contains(&true) {
            continue;
        }
        let (gnn, gbdt) = (pick(&scored.gnn, rows), pick(&scored.gbdt, rows));
        let margin = pr_auc_margin(&gnn, &gbdt, &labels, MARGIN_RESAMPLES, MARGIN_SEED).map_err(
            |source| EvalError::Metric {
                model: "gnn - gbdt",
                source,
            },
        )?;
        margins.insert(name.clone(), margin);
    }
    Ok(margins)
}

/// Draws the three PNGs. Curves that are undefined (no fraud or no legitimate transaction)
/// are left out; what was left out is returned as notes for the report.
fn write_plots(
    dir: &Path,
    scored: &Scored,
    metrics: &EvalMetrics,
) -> Result<Vec<String>, EvalError> {
    let mut notes = Vec::new();
    let models = [
        ("GNN", &scored.gnn, &metrics.gnn),
        ("GBDT", &scored.gbdt, &metrics.gbdt),
    ];
    let mut pr = Vec::new();
    let mut roc = Vec::new();
    for (name, scores, m) in models {
        if let Ok(points) = pr_curve(scores, &scored.fraud) {
            pr.push((
                format!("{name} (PR-AUC {})", fmt_opt(m.overall.pr_auc)),
                points,
            ));
        }
        if let Ok(points) = roc_curve(scores, &scored.fraud) {
            roc.push((
                format!("{name} (ROC-AUC {})", fmt_opt(m.overall.roc_auc)),
                points,
            ));
        }
    }
    fn borrow(v: &[(String, Vec<(f64, f64)>)]) -> Vec<(&str, Vec<(f64, f64)>)> {
        v.iter().map(|(l, p)| (l.as_str(), p.clone())).collect()
    }
    if pr.is_empty() {
        notes.push(format!(
            "{PR_CURVES_FILE} not drawn: no fraud in the test period"
        ));
    } else {
        plots::pr_curves_png(&dir.join(PR_CURVES_FILE), &borrow(&pr))?;
    }
    if roc.is_empty() {
        notes.push(format!(
            "{ROC_CURVES_FILE} not drawn: the test period lacks fraud or legitimate transactions"
        ));
    } else {
        plots::roc_curves_png(&dir.join(ROC_CURVES_FILE), &borrow(&roc))?;
    }
    let split = |scores: &[f64]| {
        let (mut fraud, mut legit) = (Vec::new(), Vec::new());
        for (&s, &f) in scores.iter().zip(&scored.fraud) {
            if f { fraud.push(s) } else { legit.push(s) }
        }
        (fraud, legit)
    };
    let (gnn_fraud, gnn_legit) = split(&scored.gnn);
    let (gbdt_fraud, gbdt_legit) = split(&scored.gbdt);
    plots::score_histogram_png(
        &dir.join(SCORE_DISTRIBUTIONS_FILE),
        &[
            ("GNN", gnn_fraud, gnn_legit),
            ("GBDT", gbdt_fraud, gbdt_legit),
        ],
    )?;
    Ok(notes)
}

/// A metric with 4 decimals, `n/a` when undefined.
fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"))
}

/// The Markdown report.
fn markdown(artifact: &Artifact, r: &EvalReport, notes: &[String]) -> String {
    let m = &artifact.manifest;
    let mut s = String::new();
    let _ = writeln!(s, "# fraudgraph evaluation\n");
    let _ = writeln!(s, "Artifact: `{}`\n", artifact.dir.display());

    let _ = writeln!(s, "## Test period\n");
    let _ = writeln!(
        s,
        "- Test period starts at {} (split: train {}, valid {}, warm-up {} days; the rest is test).",
        format_ms(r.split.valid_end_ms),
        m.split.train,
        m.split.valid,
        m.split.warmup_days
    );
    let _ = writeln!(
        s,
        "- Test transactions: {} .. {}.",
        format_ms(r.test_first_ms),
        format_ms(r.test_last_ms)
    );
    let legit = r.transactions - r.fraud;
    let _ = writeln!(
        s,
        "- {} transactions scored: {} fraud ({:.3}%), {} legitimate. None skipped: precision \
         reflects the real base rate.",
        r.transactions,
        r.fraud,
        100.0 * r.fraud as f64 / r.transactions.max(1) as f64,
        legit
    );
    let _ = writeln!(
        s,
        "- Thresholds (chosen on validation): GNN {:.4}, GBDT {:.4}.",
        m.thresholds.gnn, m.thresholds.gbdt
    );
    let _ = writeln!(
        s,
        "- The GNN ran on {} in {} ({} forward pass).",
        r.gnn_device,
        r.gnn_precision.name(),
        r.gnn_backend.name()
    );
    let _ = writeln!(
        s,
        "- Time: {:.1} s in all; scoring GNN {:.1} s, GBDT {:.1} s.\n",
        r.seconds, r.gnn_seconds, r.gbdt_seconds
    );

    let _ = writeln!(s, "## GNN vs GBDT\n");
    let _ = writeln!(
        s,
        "Each typology row: that typology's frauds against all legitimate test transactions.\n"
    );
    let _ = writeln!(
        s,
        "| Set | Fraud | Legit | PR-AUC GNN | PR-AUC GBDT | ROC-AUC GNN | ROC-AUC GBDT | F1 GNN | \
         F1 GBDT | Recall@1%FPR GNN | Recall@1%FPR GBDT |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows = std::iter::once(("overall", &r.metrics.gnn.overall, &r.metrics.gbdt.overall)).chain(
        r.metrics.gnn.typologies.iter().filter_map(|(name, g)| {
            r.metrics
                .gbdt
                .typologies
                .get(name)
                .map(|b| (name.as_str(), g, b))
        }),
    );
    for (name, g, b) in rows {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            g.positives,
            g.negatives,
            fmt_opt(g.pr_auc),
            fmt_opt(b.pr_auc),
            fmt_opt(g.roc_auc),
            fmt_opt(b.roc_auc),
            fmt_opt(g.f1),
            fmt_opt(b.f1),
            fmt_opt(g.recall_at_1pct_fpr),
            fmt_opt(b.recall_at_1pct_fpr),
        );
    }
    let absent: Vec<&str> = [
        Typology::Ring,
        Typology::Mule,
        Typology::AccountTakeover,
        Typology::CardTesting,
        Typology::BustOut,
    ]
    .iter()
    .map(|t| t.as_str_name())
    .filter(|n| !r.fraud_by_typology.contains_key(*n))
    .collect();
    if !absent.is_empty() {
        let _ = writeln!(s, "\nNo fraud of {} in the test period.", absent.join(", "));
    }

    let _ = writeln!(s, "\n## How sure the PR-AUC lead is\n");
    let _ = writeln!(
        s,
        "GNN PR-AUC minus GBDT PR-AUC, and its 5th to 95th percentile over {MARGIN_RESAMPLES} \
         paired bootstrap resamples of the set (frauds and legitimate rows each drawn with \
         replacement, both models scored on the same draw; seed {MARGIN_SEED}). A typology \
         with few frauds gives a wide interval.\n"
    );
    let _ = writeln!(s, "| Set | Fraud | Margin | 90% interval | GNN ahead in |");
    let _ = writeln!(s, "|---|---:|---:|---|---:|");
    let margins = r.pr_auc_margins.get_key_value("overall").into_iter().chain(
        r.pr_auc_margins
            .iter()
            .filter(|(name, _)| *name != "overall"),
    );
    for (name, m) in margins {
        let fraud = if name == "overall" {
            r.fraud
        } else {
            r.fraud_by_typology.get(name).copied().unwrap_or(0)
        };
        let _ = writeln!(
            s,
            "| {name} | {fraud} | {:+.3} | {:+.3} .. {:+.3} | {:.1}% |",
            m.margin,
            m.low,
            m.high,
            100.0 * m.share_ahead
        );
    }

    let _ = writeln!(s, "\n## Plots\n");
    let _ = writeln!(s, "![Precision-recall curves]({PR_CURVES_FILE})\n");
    let _ = writeln!(s, "![ROC curves]({ROC_CURVES_FILE})\n");
    let _ = writeln!(s, "![Score distributions]({SCORE_DISTRIBUTIONS_FILE})\n");
    for note in notes {
        let _ = writeln!(s, "Note: {note}\n");
    }

    let _ = writeln!(s, "## Model\n");
    let _ = writeln!(
        s,
        "- fraudgraph {}, libtorch {}, LightGBM {} (artifact format {}).",
        m.fraudgraph_version, m.torch_version, m.lightgbm_version, m.format_version
    );
    let _ = writeln!(
        s,
        "- Feature schema {} (version {}).",
        m.feature_schema_hash, m.feature_schema_version
    );
    let _ = writeln!(s, "- Net: `{}`.", compact(&m.net));
    let _ = writeln!(
        s,
        "- Sampler: `{}`; max sequence {}.",
        compact(&m.sampler),
        m.max_sequence
    );
    let _ = writeln!(s, "- Graph: `{}`.", compact(&m.graph));
    if !m.training.is_null() {
        let _ = writeln!(s, "- Training: `{}`.", m.training);
    }
    if !m.metrics.is_null() {
        let _ = writeln!(s, "- Validation metrics: `{}`.", m.metrics);
    }
    s
}

/// Pretty JSON with a final newline.
fn pretty_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut json = serde_json::to_vec_pretty(value)?;
    json.push(b'\n');
    Ok(json)
}

/// Compact JSON of a manifest part.
fn compact<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("<{e}>"))
}

/// A Unix-ms instant as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_ms(1_709_294_400_123), "2024-03-01 12:00:00 UTC");
        assert_eq!(format_ms(-1_000), "1969-12-31 23:59:59 UTC");
    }
}
