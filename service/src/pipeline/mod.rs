//! The scoring pipeline: request → sampler threads → batcher → inference thread → response,
//! with the GBDT as the safety net of every request.
//!
//! ```text
//!  async handler ──try_send──▶ sampler threads (N) ──try_send──▶ batcher thread ──▶ inference thread
//!       ▲                       sample 3 hops,                    collect ≤ max_batch    owns the net and
//!       │                       GBDT score,                       or max wait; collate   the device; one
//!       │                       apply to graph                    into a free staging    forward pass per
//!       │                            │                            buffer, copy to the    batch; hands the
//!       └──── oneshot: sampled ◀─────┘                            device                 buffer back
//!       └──── oneshot: GNN score ◀───────────────────────────────────────────────────────────────┘
//! ```
//!
//! Nothing blocking runs on a tokio worker: the handler only sends jobs and awaits oneshot
//! replies. Each request's deadline (gRPC `grpc-timeout` or the configured default) bounds
//! the wait for the GNN: the GBDT score, computed on the sampler thread before the request
//! joins the GNN queue, answers instead when the GNN is late (TIMEOUT), its queue is full
//! (OVERLOAD), its batch failed (ERROR) or it is not loaded (NOT_READY). The batcher drops
//! requests whose caller has already been answered, so a slow GNN does not waste work on
//! them.
//!
//! Double buffering: `buffers` staging buffers circulate between the batcher and the
//! inference thread. With two, the batcher collates (and on CUDA copies, through pinned
//! memory) batch k+1 while the inference thread runs batch k; with one, they take turns.
//! `fraudgraph bench pipeline` measures both in one run.

mod batcher;
mod inference;
mod sampling;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Sender, TrySendError};
use fraudgraph_models::artifact::{Artifact, Thresholds};
use fraudgraph_models::net::Precision;
use fraudgraph_proto::v1::{
    Decision, FallbackReason, ModelKind, ScoreResponse, StageTimings, Transaction,
};
use fraudgraph_sampler::sample::Subgraph;
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use crate::config::{DecisionConfig, PipelineConfig};
use crate::labels::LabelBook;
use crate::live_graph::LiveGraph;
use crate::metrics::Metrics;

/// Why a request got no score at all (the GBDT answers every other failure).
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Every sampler thread is busy and their queue is full: the request is refused
    /// (RESOURCE_EXHAUSTED) rather than queued past its deadline.
    #[error("the scoring queue is full ({0} waiting); retry with backoff")]
    Overloaded(usize),
    /// Not even the GBDT could answer before the deadline (sampling itself was late).
    #[error("no score before the deadline")]
    DeadlineExceeded,
    /// The pipeline is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The GBDT failed and the GNN did not answer, or sampling failed (a panic).
    #[error("scoring failed: {0}")]
    Internal(String),
}

/// A scored transaction.
#[derive(Debug)]
pub struct Scored {
    /// The response sent to the caller.
    pub response: ScoreResponse,
    /// The sampled neighbourhood, when asked for (Explain).
    pub subgraph: Option<Arc<Subgraph>>,
}

/// What a sampler thread hands back for one request.
struct Sampled {
    gbdt: Result<f32, String>,
    queue_us: u32,
    sample_us: u32,
    gnn: GnnTicket,
    subgraph: Option<Arc<Subgraph>>,
}

/// Whether the GNN will answer.
enum GnnTicket {
    /// Queued; the answer comes on this channel.
    Pending(oneshot::Receiver<GnnResult>),
    /// Not queued, for this reason.
    Skipped(FallbackReason),
}

/// The GNN's answer for one request.
type GnnResult = Result<GnnScore, String>;

/// A GNN score and where its time went.
#[derive(Debug, Clone, Copy)]
struct GnnScore {
    score: f32,
    batch_wait_us: u32,
    inference_us: u32,
}

/// One request on its way to a sampler thread.
struct SampleJob {
    txn: Transaction,
    apply: bool,
    keep_subgraph: bool,
    received: Instant,
    /// When the caller must have its answer (less the margin).
    answer_by: Instant,
    reply: oneshot::Sender<Sampled>,
}

/// One request on its way to the GNN.
struct InferItem {
    sub: Subgraph,
    answer_by: Instant,
    enqueued: Instant,
    reply: oneshot::Sender<GnnResult>,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The running pipeline. Share it behind an `Arc`; [`Pipeline::score`] is the only thing
/// request handlers call.
pub struct Pipeline {
    jobs: RwLock<Option<Sender<SampleJob>>>,
    queue_capacity: usize,
    gnn_ready: Arc<AtomicBool>,
    config: PipelineConfig,
    thresholds: Thresholds,
    review_ratio: f64,
    model_version: String,
    metrics: Arc<Metrics>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts the threads: `config.sampler_threads` samplers (each with its own LightGBM
    /// booster), the batcher, and the inference thread, which takes ownership of
    /// `artifact` (its net lives on the artifact's device).
    pub fn start(
        artifact: Artifact,
        model_version: String,
        live: Arc<LiveGraph>,
        labels: Arc<LabelBook>,
        config: &PipelineConfig,
        decisions: &DecisionConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Pipeline> {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<SampleJob>(config.queue_capacity);
        let (infer_tx, infer_rx) =
            crossbeam_channel::bounded::<InferItem>(config.inference_queue_capacity);
        let gnn_ready = Arc::new(AtomicBool::new(false));
        let sampler_config = artifact.sampler_config();
        let max_sequence = artifact.manifest.max_sequence;
        let thresholds = artifact.manifest.thresholds;
        let device = artifact.device();
        let native = match config.backend.as_str() {
            "native" => true,
            "libtorch" => false,
            _ => device == tch::Device::Cpu && artifact.precision() == Precision::F32,
        };
        let native = if native {
            anyhow::ensure!(
                device == tch::Device::Cpu && artifact.precision() == Precision::F32,
                "pipeline.backend: native runs in f32 on the CPU, the model is on {device:?} in {}",
                artifact.precision().name()
            );
            Some(
                artifact
                    .net
                    .native()
                    .context("copying the model's weights for the native backend")?,
            )
        } else {
            None
        };
        tracing::info!(
            backend = if native.is_some() {
                "native"
            } else {
                "libtorch"
            },
            "GNN forward pass"
        );
        let mut threads = Vec::new();

        for i in 0..config.sampler_threads {
            let worker = sampling::SamplerWorker {
                jobs: job_rx.clone(),
                gnn: infer_tx.clone(),
                gnn_ready: gnn_ready.clone(),
                live: live.clone(),
                labels: labels.clone(),
                sampler: sampler_config.clone(),
                gbdt_text: artifact.gbdt_text.clone(),
                metrics: metrics.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sampler-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        drop(infer_tx);

        let (staged_tx, staged_rx) = crossbeam_channel::bounded(config.buffers);
        let (free_tx, free_rx) = crossbeam_channel::bounded(config.buffers);
        for _ in 0..config.buffers {
            free_tx
                .send(batcher::StagingBuffer::default())
                .expect("the pool has room for every buffer");
        }
        let b = batcher::Batcher {
            items: infer_rx,
            free: free_rx,
            buffers: config.buffers,
            staged: staged_tx,
            max_batch: config.max_batch,
            max_wait: Duration::from_micros(config.max_batch_wait_us),
            max_sequence,
            device,
            make_tensors: native.is_none(),
            metrics: metrics.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("batcher".into())
                .spawn(move || b.run())?,
        );

        let inf = inference::InferenceWorker {
            artifact,
            native,
            staged: staged_rx,
            free: free_tx,
            ready: gnn_ready.clone(),
            threads: config.inference_threads,
            delay: Duration::from_millis(config.inference_delay_ms),
            metrics: metrics.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || inf.run())?,
        );

        Ok(Pipeline {
            jobs: RwLock::new(Some(job_tx)),
            queue_capacity: config.queue_capacity,
            gnn_ready,
            config: config.clone(),
            thresholds,
            review_ratio: decisions.review_ratio,
            model_version,
            metrics,
            threads: Mutex::new(threads),
        })
    }

    /// True once the inference thread holds a loaded model.
    pub fn gnn_ready(&self) -> bool {
        self.gnn_ready.load(Ordering::Acquire)
    }

    /// The default latency budget of a request without a deadline.
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.config.default_deadline_ms)
    }

    /// Scores a validated transaction before `deadline`: the GNN's answer when it arrives
    /// in time, else the GBDT's with the reason. With `apply`, the transaction is applied
    /// to the graph after sampling (idempotently). With `keep_subgraph`, the sampled
    /// neighbourhood comes back too.
    pub async fn score(
        &self,
        txn: Transaction,
        apply: bool,
        deadline: Instant,
        keep_subgraph: bool,
    ) -> Result<Scored, ScoreError> {
        let received = Instant::now();
        let txn_id = txn.txn_id.clone();
        // Answer by the deadline less the margin (the configured one, or a tenth of the
        // budget when that is more), unless the margin would eat it all.
        let margin = Duration::from_micros(self.config.deadline_margin_us)
            .max(deadline.saturating_duration_since(received) / 10);
        let answer_by = deadline
            .checked_sub(margin)
            .filter(|t| *t > received)
            .unwrap_or(deadline);
        let (reply, sampled) = oneshot::channel();
        let job = SampleJob {
            txn,
            apply,
            keep_subgraph,
            received,
            answer_by,
            reply,
        };
        {
            let jobs = self.jobs.read();
            let Some(jobs) = jobs.as_ref() else {
                return Err(ScoreError::ShuttingDown);
            };
            match jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    return Err(ScoreError::Overloaded(self.queue_capacity));
                }
                Err(TrySendError::Disconnected(_)) => return Err(ScoreError::ShuttingDown),
            }
            self.metrics
                .queue_depth
                .with_label_values(&["sample"])
                .set(jobs.len() as i64);
        }

        let sampled = match tokio::time::timeout_at(answer_by.into(), sampled).await {
            Ok(Ok(s)) => s,
            // The sampler let the job go unanswered: it is stopping, or it panicked on it.
            Ok(Err(_)) if self.jobs.read().is_none() => return Err(ScoreError::ShuttingDown),
            Ok(Err(_)) => {
                return Err(ScoreError::Internal(
                    "sampling this transaction failed (fraudgraph_sampler_panics_total)".into(),
                ));
            }
            Err(_) => return Err(ScoreError::DeadlineExceeded),
        };

        let (score, model, reason, gnn) = match sampled.gnn {
            GnnTicket::Skipped(reason) => (None, ModelKind::Gbdt, reason, None),
            GnnTicket::Pending(rx) => match tokio::time::timeout_at(answer_by.into(), rx).await {
                Ok(Ok(Ok(g))) => (Some(g.score), ModelKind::Gnn, FallbackReason::None, Some(g)),
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "GNN batch failed; the GBDT answers");
                    (None, ModelKind::Gbdt, FallbackReason::Error, None)
                }
                // The batcher dropped the request: it was already past its deadline.
                Ok(Err(_)) | Err(_) => (None, ModelKind::Gbdt, FallbackReason::Timeout, None),
            },
        };
        let score = match score {
            Some(s) => s,
            None => sampled.gbdt.map_err(ScoreError::Internal)?,
        };

        let total = received.elapsed();
        let timings = StageTimings {
            queue_us: sampled.queue_us,
            sample_us: sampled.sample_us,
            batch_wait_us: gnn.map_or(0, |g| g.batch_wait_us),
            inference_us: gnn.map_or(0, |g| g.inference_us),
            total_us: micros(total),
        };
        self.observe(&timings, model, reason);
        let threshold = match model {
            ModelKind::Gnn => self.thresholds.gnn,
            _ => self.thresholds.gbdt,
        };
        let response = ScoreResponse {
            txn_id,
            score,
            decision: decide(score, threshold, self.review_ratio) as i32,
            model: model as i32,
            fallback_reason: reason as i32,
            model_version: self.model_version.clone(),
            timings: Some(timings),
        };
        Ok(Scored {
            response,
            subgraph: sampled.subgraph,
        })
    }

    fn observe(&self, t: &StageTimings, model: ModelKind, reason: FallbackReason) {
        let stage = |name: &str, us: u32| {
            self.metrics
                .stage_duration
                .with_label_values(&[name])
                .observe(f64::from(us) / 1e6);
        };
        stage("queue", t.queue_us);
        stage("sample", t.sample_us);
        if model == ModelKind::Gnn {
            stage("batch_wait", t.batch_wait_us);
            stage("inference", t.inference_us);
        }
        stage("total", t.total_us);
        self.metrics
            .scores
            .with_label_values(&[model_label(model), reason_label(reason)])
            .inc();
    }

    /// Stops taking requests and lets the threads finish what they hold; returns when they
    /// have exited.
    pub fn shutdown(&self) {
        self.jobs.write().take();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// The decision for `score` given the model's BLOCK threshold.
pub fn decide(score: f32, threshold: f64, review_ratio: f64) -> Decision {
    let s = f64::from(score);
    if s >= threshold {
        Decision::Block
    } else if s >= threshold * review_ratio {
        Decision::Review
    } else {
        Decision::Allow
    }
}

/// The `model` label of a score.
pub fn model_label(m: ModelKind) -> &'static str {
    match m {
        ModelKind::Gnn => "gnn",
        ModelKind::Gbdt => "gbdt",
        ModelKind::Unspecified => "unspecified",
    }
}

/// The `reason` label of a score.
pub fn reason_label(r: FallbackReason) -> &'static str {
    match r {
        FallbackReason::None => "none",
        FallbackReason::Timeout => "timeout",
        FallbackReason::Overload => "overload",
        FallbackReason::Error => "error",
        FallbackReason::NotReady => "not_ready",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_thresholds() {
        assert_eq!(decide(0.9, 0.6, 0.5), Decision::Block);
        assert_eq!(decide(0.6, 0.6, 0.5), Decision::Block);
        assert_eq!(decide(0.35, 0.6, 0.5), Decision::Review);
        assert_eq!(decide(0.1, 0.6, 0.5), Decision::Allow);
    }
}
