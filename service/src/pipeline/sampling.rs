//! The sampler threads: for each request, sample the 3-hop neighbourhood at the
//! transaction's time, compute the GBDT safety-net score, apply the transaction to the
//! graph when asked, and queue the subgraph for the GNN.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use fraudgraph_models::artifact::score_gbdt;
use fraudgraph_models::gbdt::Gbdt;
use fraudgraph_proto::v1::FallbackReason;
use fraudgraph_sampler::graph::ApplyOutcome;
use fraudgraph_sampler::sample::{SamplerConfig, sample};
use tokio::sync::oneshot;

use super::{GnnTicket, InferItem, SampleJob, Sampled, micros};
use crate::labels::LabelBook;
use crate::live_graph::LiveGraph;
use crate::metrics::Metrics;

/// One sampler thread's state.
pub(super) struct SamplerWorker {
    pub(super) jobs: Receiver<SampleJob>,
    pub(super) gnn: Sender<InferItem>,
    pub(super) gnn_ready: Arc<AtomicBool>,
    pub(super) live: Arc<LiveGraph>,
    pub(super) labels: Arc<LabelBook>,
    pub(super) sampler: SamplerConfig,
    pub(super) gbdt_text: String,
    pub(super) metrics: Arc<Metrics>,
}

impl SamplerWorker {
    /// Serves jobs until the job channel closes.
    pub(super) fn run(self) {
        // A LightGBM booster cannot move between threads: each sampler builds its own.
        let gbdt = match Gbdt::from_model_text(self.gbdt_text.clone()) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the GBDT; requests get GNN answers only");
                None
            }
        };
        let mut rows = Vec::new();
        let depth = self.metrics.queue_depth.with_label_values(&["inference"]);
        while let Ok(job) = self.jobs.recv() {
            // A bug that panics on one request costs that request (its caller gets no
            // score: the reply is dropped), not this thread and every request after it.
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.handle(job, gbdt.as_ref(), &mut rows, &depth)
            }));
            if handled.is_err() {
                self.metrics.sampler_panics.inc();
                // The panic message itself went to stderr; it is not repeated here, since
                // it could hold a request's identifiers.
                tracing::error!("a sampler thread panicked on a request; it goes on");
                rows.clear();
            }
        }
    }

    /// Samples one request, scores it with the GBDT, applies it when asked and hands its
    /// subgraph to the GNN queue; the reply goes to the request's caller.
    fn handle(
        &self,
        job: SampleJob,
        gbdt: Option<&Gbdt>,
        rows: &mut Vec<f32>,
        depth: &prometheus::IntGauge,
    ) {
        let picked = Instant::now();
        let sub = sample(self.live.graph(), &job.txn, &self.sampler);
        let gbdt_score = match gbdt {
            Some(g) => score_gbdt(g, std::slice::from_ref(&sub), rows)
                .map(|s| s[0] as f32)
                .map_err(|e| e.to_string()),
            None => Err("the GBDT is not loaded".to_owned()),
        };
        // Sampled first, applied after: the transaction's own edges are not part of its
        // own neighbourhood, exactly as in training replay.
        if job.apply && self.live.apply(&job.txn) == ApplyOutcome::Applied {
            self.labels.remember(&job.txn);
        }
        let sampled_at = Instant::now();
        let subgraph = job.keep_subgraph.then(|| Arc::new(sub.clone()));

        let gnn = if !self.gnn_ready.load(Ordering::Acquire) {
            GnnTicket::Skipped(FallbackReason::NotReady)
        } else if job.reply.is_closed() || sampled_at >= job.answer_by {
            GnnTicket::Skipped(FallbackReason::Timeout)
        } else {
            let (reply, rx) = oneshot::channel();
            let item = InferItem {
                sub,
                answer_by: job.answer_by,
                enqueued: sampled_at,
                reply,
            };
            match self.gnn.try_send(item) {
                Ok(()) => GnnTicket::Pending(rx),
                Err(TrySendError::Full(_)) => GnnTicket::Skipped(FallbackReason::Overload),
                Err(TrySendError::Disconnected(_)) => GnnTicket::Skipped(FallbackReason::NotReady),
            }
        };
        depth.set(self.gnn.len() as i64);
        let _ = job.reply.send(Sampled {
            gbdt: gbdt_score,
            queue_us: micros(picked - job.received),
            sample_us: micros(sampled_at - picked),
            gnn,
            subgraph,
        });
    }
}
