//! The batcher thread: collects queued subgraphs into batches (at most `max_batch`; while
//! the inference thread is busy, waiting at most `max_wait` after the first for more; while
//! it is idle, not at all), collates each into a free staging buffer and hands it to the
//! inference thread. It blocks for a free buffer, so the number of buffers is the number of
//! batches in flight: 2 overlaps collation with inference, 1 alternates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fraudgraph_models::net::NATIVE_PART;
use fraudgraph_models::tensors::BatchTensors;
use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::sample::Subgraph;
use tch::Device;
use tokio::sync::oneshot;

use super::{GnnResult, InferItem};
use crate::metrics::Metrics;

/// Host arrays reused from batch to batch: the batch it carries, collated whole for
/// libtorch, or for the native backend in parts of at most [`NATIVE_PART`] subgraphs.
#[derive(Default)]
pub(super) struct StagingBuffer {
    batch: Batch,
    parts: Vec<Batch>,
    /// How many of `parts` hold this batch.
    part_count: usize,
    subs: Vec<Subgraph>,
}

impl StagingBuffer {
    /// The native backend's parts of the batch, in order.
    pub(super) fn parts(&self) -> &[Batch] {
        &self.parts[..self.part_count]
    }
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
    /// The batch on the inference device (`None` for the native backend, which reads the
    /// buffer's [`StagingBuffer::parts`] itself), or why it could not be built.
    pub(super) tensors: Result<Option<BatchTensors>, String>,
    /// One per row, in order.
    pub(super) waiters: Vec<Waiter>,
}

/// The batcher thread's state.
pub(super) struct Batcher {
    pub(super) items: Receiver<InferItem>,
    pub(super) free: Receiver<StagingBuffer>,
    /// How many staging buffers circulate: when all of them are back in `free`, the
    /// inference thread has nothing to do.
    pub(super) buffers: usize,
    pub(super) staged: Sender<Staged>,
    pub(super) max_batch: usize,
    pub(super) max_wait: Duration,
    pub(super) max_sequence: usize,
    pub(super) device: Device,
    /// Whether the inference thread runs libtorch and needs the batch as tensors.
    pub(super) make_tensors: bool,
    pub(super) metrics: Arc<Metrics>,
}

impl Batcher {
    /// Batches until the item channel closes.
    pub(super) fn run(self) {
        let mut pending: Vec<InferItem> = Vec::with_capacity(self.max_batch);
        // A buffer taken from the pool for a batch whose callers had all gone.
        let mut spare: Option<StagingBuffer> = None;
        while let Ok(first) = self.items.recv() {
            pending.push(first);
            // An idle inference thread (every buffer back in the pool) would only sit and
            // wait with the batch: it goes at once, with whatever has queued already. A
            // busy one cannot start it before the batch in hand is done, so more requests
            // may join for up to `max_wait`.
            let idle = self.free.len() + usize::from(spare.is_some()) >= self.buffers;
            let until = Instant::now() + self.max_wait;
            while !idle && pending.len() < self.max_batch {
                match self.items.recv_deadline(until) {
                    Ok(item) => pending.push(item),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            let mut buffer = match spare.take() {
                Some(buffer) => buffer,
                None => match self.free.recv() {
                    Ok(buffer) => buffer,
                    Err(_) => return,
                },
            };
            // Waiting for a free buffer means the inference thread is behind: whatever
            // queued meanwhile joins this batch, so batches grow with the backlog and the
            // fixed cost of a forward pass is shared by more requests.
            while pending.len() < self.max_batch {
                match self.items.try_recv() {
                    Ok(item) => pending.push(item),
                    Err(_) => break,
                }
            }
            // Callers already answered by the GBDT need no GNN work.
            let now = Instant::now();
            pending.retain(|i| !i.reply.is_closed() && i.answer_by > now);
            if pending.is_empty() {
                spare = Some(buffer);
                continue;
            }
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
            // A panic here (a bug) fails this batch, like a failed forward pass, instead of
            // losing the thread and the buffer with it.
            let tensors = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if !self.make_tensors {
                    let chunks = buffer.subs.chunks(NATIVE_PART);
                    buffer.part_count = chunks.len();
                    if buffer.parts.len() < buffer.part_count {
                        buffer.parts.resize_with(buffer.part_count, Batch::default);
                    }
                    for (part, chunk) in buffer.parts.iter_mut().zip(chunks) {
                        part.collate(chunk, self.max_sequence);
                    }
                    return Ok(None);
                }
                buffer.batch.collate(&buffer.subs, self.max_sequence);
                BatchTensors::from_batch(&buffer.batch, Device::Cpu)
                    .and_then(|host| host.to_device_staged(self.device))
                    .map(Some)
                    .map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|_| Err("collating the batch panicked".to_owned()));
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

#[cfg(test)]
mod tests {
    use fraudgraph_proto::v1::Transaction;
    use fraudgraph_sampler::graph::{Graph, GraphConfig};
    use fraudgraph_sampler::sample::{SamplerConfig, sample};

    use super::*;

    fn item(graph: &Graph, i: usize) -> (InferItem, oneshot::Receiver<GnnResult>) {
        let txn = Transaction {
            txn_id: format!("t-{i}"),
            event_time_ms: 1_767_225_600_000,
            account_id: format!("acc-{i}"),
            merchant_id: "m-1".into(),
            amount_minor: 4599,
            ..Transaction::default()
        };
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        let item = InferItem {
            sub: sample(graph, &txn, &SamplerConfig::default()),
            answer_by: now + Duration::from_secs(60),
            enqueued: now,
            reply,
        };
        (item, rx)
    }

    /// A batcher thread over `buffers` staging buffers, none of them in the pool yet, and the
    /// ends of its channels the tests drive.
    struct Running {
        items: Sender<InferItem>,
        free: Sender<StagingBuffer>,
        staged: Receiver<Staged>,
        thread: std::thread::JoinHandle<()>,
    }

    /// Queues the requests numbered `ids`; their reply receivers, kept by the caller so
    /// that the batcher's replies have somewhere to go.
    fn send(
        run: &Running,
        graph: &Graph,
        ids: std::ops::Range<usize>,
    ) -> Vec<oneshot::Receiver<GnnResult>> {
        ids.map(|i| {
            let (next, rx) = item(graph, i);
            run.items.send(next).unwrap();
            rx
        })
        .collect()
    }

    /// The batch staged once the inference thread hands back a buffer, after the queued
    /// requests have had time to reach the batcher.
    fn staged_once_a_buffer_frees(run: &Running) -> Staged {
        std::thread::sleep(Duration::from_millis(30));
        run.free.send(StagingBuffer::default()).unwrap();
        run.staged
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch is staged")
    }

    fn start(buffers: usize, max_wait: Duration) -> Running {
        start_for(buffers, max_wait, true)
    }

    /// [`start`] for libtorch (`make_tensors`) or the native backend.
    fn start_for(buffers: usize, max_wait: Duration, make_tensors: bool) -> Running {
        let (items_tx, items_rx) = crossbeam_channel::bounded(64);
        let (free_tx, free_rx) = crossbeam_channel::bounded(buffers);
        let (staged_tx, staged_rx) = crossbeam_channel::bounded(buffers);
        let batcher = Batcher {
            items: items_rx,
            free: free_rx,
            buffers,
            staged: staged_tx,
            max_batch: 64,
            max_wait,
            max_sequence: 32,
            device: Device::Cpu,
            make_tensors,
            metrics: Arc::new(Metrics::new()),
        };
        Running {
            items: items_tx,
            free: free_tx,
            staged: staged_rx,
            thread: std::thread::spawn(move || batcher.run()),
        }
    }

    /// While the inference thread holds every buffer, requests queue; the batch formed when
    /// a buffer comes back takes all of them, not only those of its first wait window.
    #[test]
    fn a_backlog_joins_the_batch_formed_when_a_buffer_frees_up() {
        let graph = Graph::new(GraphConfig::default());
        let run = start(1, Duration::from_millis(1));
        let mut replies = send(&run, &graph, 0..1);
        // The first window closes with one request; the batcher now waits for a buffer
        // (the inference thread is "busy") while nine more arrive.
        std::thread::sleep(Duration::from_millis(30));
        replies.extend(send(&run, &graph, 1..10));
        let staged = staged_once_a_buffer_frees(&run);
        assert_eq!(staged.waiters.len(), 10, "the backlog joined the batch");
        assert_eq!(staged.tensors.expect("collated").expect("tensors").size, 10);
        drop(run.items);
        drop(run.staged);
        run.thread.join().unwrap();
    }

    /// A request that finds the inference thread idle is not held back waiting for others
    /// to share its batch: the batch goes at once, whatever `max_wait` says.
    #[test]
    fn an_idle_inference_thread_gets_its_batch_without_the_wait() {
        let graph = Graph::new(GraphConfig::default());
        let run = start(2, Duration::from_secs(30));
        for _ in 0..2 {
            run.free.send(StagingBuffer::default()).unwrap();
        }
        let (first, _rx) = item(&graph, 0);
        run.items.send(first).unwrap();
        let staged = run
            .staged
            .recv_timeout(Duration::from_secs(10))
            .expect("staged long before max_wait");
        assert_eq!(staged.waiters.len(), 1);
        // With a batch in flight (one buffer out), the next request waits for company:
        // nothing is staged before max_wait (30 s) unless more requests fill the batch.
        let (second, _rx2) = item(&graph, 1);
        run.items.send(second).unwrap();
        assert!(
            run.staged.recv_timeout(Duration::from_millis(300)).is_err(),
            "a busy inference thread's next batch waits for more requests"
        );
        drop(run.items);
        let staged = run
            .staged
            .recv_timeout(Duration::from_secs(10))
            .expect("closing the queue flushes the batch");
        assert_eq!(staged.waiters.len(), 1);
        drop(run.staged);
        run.thread.join().unwrap();
    }

    /// For the native backend a batch is collated in parts of at most [`NATIVE_PART`]
    /// subgraphs, in order, and no tensors are made; a smaller batch in the same (reused)
    /// buffer shows only its own parts.
    #[test]
    fn a_native_batch_is_collated_in_parts() {
        let graph = Graph::new(GraphConfig::default());
        let run = start_for(1, Duration::from_millis(1), false);
        let n = 2 * NATIVE_PART + 3;
        let _replies = send(&run, &graph, 0..n);
        let staged = staged_once_a_buffer_frees(&run);
        assert_eq!(staged.waiters.len(), n);
        assert!(matches!(staged.tensors, Ok(None)), "no tensors for native");
        let sizes: Vec<usize> = staged.buffer.parts().iter().map(|p| p.size).collect();
        assert_eq!(sizes, [NATIVE_PART, NATIVE_PART, 3]);
        // Every subgraph once: each has one target account.
        let targets: usize = staged
            .buffer
            .parts()
            .iter()
            .map(|p| p.target_account.len())
            .sum();
        assert_eq!(targets, n);

        let (next, _rx) = item(&graph, n);
        run.items.send(next).unwrap();
        run.free.send(staged.buffer).unwrap();
        let staged = run
            .staged
            .recv_timeout(Duration::from_secs(10))
            .expect("the next batch is staged");
        let sizes: Vec<usize> = staged.buffer.parts().iter().map(|p| p.size).collect();
        assert_eq!(sizes, [1], "only this batch's part");
        drop(run.items);
        drop(run.staged);
        run.thread.join().unwrap();
    }
}
