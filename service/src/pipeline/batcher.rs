//! The batcher thread: collects queued subgraphs into batches (at most `max_batch`, waiting
//! at most `max_wait` after the first), collates each into a free staging buffer and hands
//! it to the inference thread. It blocks for a free buffer, so the number of buffers is the
//! number of batches in flight: 2 overlaps collation with inference, 1 alternates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fraudgraph_models::tensors::BatchTensors;
use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::sample::Subgraph;
use tch::Device;
use tokio::sync::oneshot;

use super::{GnnResult, InferItem};
use crate::metrics::Metrics;

/// Host arrays reused from batch to batch, and the tensors of the batch it carries.
#[derive(Default)]
pub(super) struct StagingBuffer {
    batch: Batch,
    subs: Vec<Subgraph>,
}

/// Who is waiting for one row of a staged batch.
pub(super) struct Waiter {
    pub(super) enqueued: Instant,
    pub(super) reply: oneshot::Sender<GnnResult>,
}

/// A collated batch on its way to the inference thread.
pub(super) struct Staged {
    /// The buffer, returned to the pool after the forward pass.
    pub(super) buffer: StagingBuffer,
    /// The batch on the inference device, or why it could not be built.
    pub(super) tensors: Result<BatchTensors, String>,
    /// One per row, in order.
    pub(super) waiters: Vec<Waiter>,
}

/// The batcher thread's state.
pub(super) struct Batcher {
    pub(super) items: Receiver<InferItem>,
    pub(super) free: Receiver<StagingBuffer>,
    pub(super) staged: Sender<Staged>,
    pub(super) max_batch: usize,
    pub(super) max_wait: Duration,
    pub(super) max_sequence: usize,
    pub(super) device: Device,
    pub(super) metrics: Arc<Metrics>,
}

impl Batcher {
    /// Batches until the item channel closes.
    pub(super) fn run(self) {
        let mut pending: Vec<InferItem> = Vec::with_capacity(self.max_batch);
        while let Ok(first) = self.items.recv() {
            pending.push(first);
            let until = Instant::now() + self.max_wait;
            while pending.len() < self.max_batch {
                match self.items.recv_deadline(until) {
                    Ok(item) => pending.push(item),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            // Callers already answered by the GBDT need no GNN work.
            let now = Instant::now();
            pending.retain(|i| !i.reply.is_closed() && i.answer_by > now);
            if pending.is_empty() {
                continue;
            }
            let Ok(mut buffer) = self.free.recv() else {
                return;
            };
            buffer.subs.clear();
            let mut waiters = Vec::with_capacity(pending.len());
            for item in pending.drain(..) {
                buffer.subs.push(item.sub);
                waiters.push(Waiter {
                    enqueued: item.enqueued,
                    reply: item.reply,
                });
            }
            self.metrics.batch_size.observe(waiters.len() as f64);
            buffer.batch.collate(&buffer.subs, self.max_sequence);
            let tensors = BatchTensors::from_batch(&buffer.batch, Device::Cpu)
                .and_then(|host| host.to_device_staged(self.device))
                .map_err(|e| e.to_string());
            let staged = Staged {
                buffer,
                tensors,
                waiters,
            };
            if self.staged.send(staged).is_err() {
                return;
            }
        }
    }
}
