//! The service's one live graph and its single-writer rule.
//!
//! The sampler's [`Graph`] allows one writer at a time next to any number of readers (see
//! `fraudgraph_sampler::graph`). The service has two writers: the Kafka applier and Score
//! calls with `apply_to_graph`. [`LiveGraph::apply`] serialises them through one mutex,
//! held for the few microseconds of one apply, so readers (samplers) never wait for it and
//! both writers see one order of applies. Idempotent apply makes the two paths safe
//! together: a transaction applied by a Score call and later consumed from Kafka counts once.
//!
//! # Idle eviction, by event time
//!
//! [`LiveGraph::apply`] applies with [`Graph::apply_evicting`], as the training and
//! evaluation replays do: the graph's idle eviction runs in the same hold of the writer
//! lock whenever the newest applied event time enters a new period of a 32nd of the
//! retention ([`EVICTION_PERIODS_PER_RETENTION`]; 22.5 h of event time for the default 30
//! days). Driven by the stream and not by a clock, the passes fall at the same places in it
//! however fast it is applied: a replay, a run restarted from a snapshot
//! (which records the watermark) and an uninterrupted run build the same graph, a backlog
//! packing days of event time into seconds evicts as it would have live, and a model is
//! served from the graph it was trained on. A pass scans the whole graph under the writer
//! lock and each shard's write lock in turn (15-20 ms at 1.1M edges on dev-2c, `fraudgraph
//! bench sampler`'s `evict_idle_pass_ms`), so it runs about once a day in production, not
//! on a timer. The apply that opens a period pays for it: usually the Kafka applier's;
//! when it is a Score call's (`apply_to_graph`), that one request may be answered by the
//! GBDT if the pass outlasts its deadline. (Until 2026-12-06 a pass ran every second from
//! the applier, or every 5 s without Kafka, and every apply waited for it on the writer
//! lock.)
//!
//! [`EVICTION_PERIODS_PER_RETENTION`]: fraudgraph_sampler::graph::EVICTION_PERIODS_PER_RETENTION

use std::sync::Arc;
use std::time::Instant;

use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::graph::{ApplyOutcome, Graph};
use fraudgraph_sampler::snapshot::Offsets;
use parking_lot::Mutex;

use crate::metrics::Metrics;

/// The live graph shared by the Kafka applier, Score calls and the samplers.
pub struct LiveGraph {
    graph: Arc<Graph>,
    writer: Mutex<()>,
    metrics: Arc<Metrics>,
}

impl LiveGraph {
    /// Wraps `graph`; applies are counted in `metrics`.
    pub fn new(graph: Graph, metrics: Arc<Metrics>) -> LiveGraph {
        LiveGraph {
            graph: Arc::new(graph),
            writer: Mutex::new(()),
            metrics,
        }
    }

    /// The graph, for reading (sampling, stats, snapshots).
    pub fn graph(&self) -> &Arc<Graph> {
        &self.graph
    }

    /// Applies a validated transaction, one writer at a time, and runs an idle-eviction
    /// pass when its event time opens a new eviction period (module documentation). Blocks
    /// for microseconds, and for the length of a pass about once a day of event time: call
    /// it from a sampler or Kafka thread, not from an async task.
    pub fn apply(&self, txn: &Transaction) -> ApplyOutcome {
        let (outcome, eviction) = {
            let _writer = self.writer.lock();
            let started = Instant::now();
            let (outcome, evicted) = self.graph.apply_evicting(txn);
            // A pass's time includes the apply's few microseconds.
            (outcome, evicted.map(|evicted| (evicted, started.elapsed())))
        };
        if outcome == ApplyOutcome::Applied {
            self.metrics.graph_transactions.inc();
        }
        if let Some((evicted, took)) = eviction {
            self.metrics.observe_eviction(&evicted, took);
            tracing::debug!(
                nodes = evicted.nodes,
                edges = evicted.half_edges / 2,
                seconds = took.as_secs_f64(),
                "idle eviction pass"
            );
        }
        outcome
    }

    /// Snapshot bytes of the graph ([`Graph::snapshot_bytes`]) with the offsets `offsets`
    /// returns, both taken under the writer lock: no apply is half done while the shards
    /// are read, and every transaction the offsets cover is whole in the bytes (the graph
    /// may hold a few more, which a replay from the offsets finds already applied). Writers
    /// wait for the encoding (tens of milliseconds for a graph of 50,000 transactions), not
    /// for the file to be written.
    pub fn snapshot_bytes(&self, offsets: impl FnOnce() -> Offsets) -> Vec<u8> {
        let _writer = self.writer.lock();
        let offsets = offsets();
        self.graph.snapshot_bytes(&offsets)
    }

    /// Refreshes the graph gauges (nodes, edges, bytes, watermark). Scans the graph under
    /// each shard's read lock in turn, which samplers share and the writer waits for:
    /// call it from a blocking thread every few seconds, not per request.
    pub fn refresh_gauges(&self) {
        self.metrics.observe_graph(&self.graph.stats());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use fraudgraph_sampler::NodeType;
    use fraudgraph_sampler::graph::{EVICTION_PERIODS_PER_RETENTION, GraphConfig};
    use fraudgraph_simulator::{SimConfig, Simulation};

    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn graph_config() -> GraphConfig {
        GraphConfig {
            retention_ms: 3 * DAY_MS,
            ..GraphConfig::default()
        }
    }

    /// (transactions, edges, nodes by type, watermark) of `graph`.
    fn shape(graph: &Graph) -> (u64, u64, [u64; NodeType::ALL.len()], i64) {
        let s = graph.stats();
        (s.transactions, s.edges, s.nodes, s.watermark_ms)
    }

    /// 20,000 simulated transactions: a stream that outlasts the tests' 3-day retention.
    fn simulation(seed: u64) -> Simulation {
        Simulation::generate(&SimConfig {
            transactions: 20_000,
            seed,
            ..SimConfig::default()
        })
        .expect("valid simulation config")
    }

    #[test]
    fn eviction_follows_the_stream_so_a_restored_run_builds_the_same_graph() {
        let sim = simulation(3);
        let txns: Vec<Transaction> = sim.transactions().collect();
        let span_ms = txns.last().unwrap().event_time_ms - txns[0].event_time_ms;
        assert!(span_ms > 30 * DAY_MS, "the stream outlasts the retention");

        // Uninterrupted.
        let metrics = Arc::new(Metrics::new());
        let steady = LiveGraph::new(Graph::new(graph_config()), metrics.clone());
        for t in &txns {
            steady.apply(t);
        }
        let passes = metrics.graph_eviction_duration.get_sample_count();
        let period = graph_config().retention_ms / EVICTION_PERIODS_PER_RETENTION;
        let periods =
            (txns.last().unwrap().event_time_ms / period - txns[0].event_time_ms / period) as u64;
        assert!(
            passes > 0 && passes <= periods,
            "{passes} passes over {periods} periods"
        );
        let evicted_edges = metrics.graph_evicted.with_label_values(&["edges"]).get();
        assert!(evicted_edges > 0, "idle edges were evicted");

        // Snapshot a third of the way in, restore, go on; with pauses, as a crash and a
        // restart take wall-clock time the stream does not see.
        let interrupted = LiveGraph::new(Graph::new(graph_config()), Arc::new(Metrics::new()));
        let cut = txns.len() / 3;
        for t in &txns[..cut] {
            interrupted.apply(t);
        }
        let bytes = interrupted.snapshot_bytes(Offsets::new);
        drop(interrupted);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (graph, _) = Graph::from_snapshot_bytes(&bytes, &graph_config(), Path::new("mem"))
            .expect("restores");
        let restored = LiveGraph::new(graph, Arc::new(Metrics::new()));
        // At-least-once delivery: the stream resumes a little before the cut.
        for t in &txns[cut - 100..] {
            restored.apply(t);
        }
        assert_eq!(shape(restored.graph()), shape(steady.graph()));

        // Without eviction the graph would be larger: the passes did remove something.
        let unevicted = Graph::new(graph_config());
        for t in &txns {
            unevicted.apply(t);
        }
        assert!(unevicted.stats().edges > steady.graph().stats().edges);
    }

    #[test]
    fn training_replays_the_graph_the_service_serves_from() {
        use fraudgraph_models::dataset::{LabelledStream, Split, replay};
        use fraudgraph_sampler::sample::{SamplerConfig, sample};

        let stream = LabelledStream::from_simulation(&simulation(5));
        let split = Split::default().times(&stream).expect("a valid split");
        let sampler = SamplerConfig::default();

        let metrics = Arc::new(Metrics::new());
        let live = LiveGraph::new(Graph::new(graph_config()), metrics.clone());
        for t in &stream.transactions {
            live.apply(t);
        }
        assert!(
            metrics.graph_evicted.with_label_values(&["edges"]).get() > 0,
            "the stream outlasts the retention, so the service evicted"
        );
        let replayed = replay(
            &stream,
            &split,
            &graph_config(),
            &sampler,
            |_, _, _| false,
            |_| {},
            &|_| {},
        );
        assert_eq!(shape(&replayed), shape(live.graph()));
        // What the model is trained on is what it is served: the same subgraphs.
        for t in stream.transactions.iter().rev().take(50) {
            assert_eq!(
                sample(&replayed, t, &sampler),
                sample(live.graph(), t, &sampler)
            );
        }
    }
}
