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
//! [`LiveGraph::apply`] also runs the graph's idle eviction ([`Graph::evict_idle`]), in the
//! same hold of the writer lock, whenever the newest applied event time enters a new
//! period of [`EVICTION_PERIODS_PER_RETENTION`]ths of the retention (22.5 h of event time
//! for the default 30 days, so nothing outlives its retention by more than that). Driven by
//! the stream and not by a clock, the passes fall at the same places in it however fast it
//! is applied: a replay, a run restarted from a snapshot (which records the watermark) and
//! an uninterrupted run build the same graph, and a backlog packing days of event time into
//! seconds evicts as it would have live. A pass scans the whole graph under the writer lock
//! and each shard's write lock in turn (15-20 ms at 1.1M edges on dev-2c, `fraudgraph bench
//! sampler`'s `evict_idle_pass_ms`), so it runs about once a day in production, not on a
//! timer. The apply that opens a period pays for it: usually the Kafka applier's; when it
//! is a Score call's (`apply_to_graph`), that one request may be answered by the GBDT if
//! the pass outlasts its deadline. (Until 2026-12-06 a pass ran every second from the
//! applier, or every 5 s without Kafka, and every apply waited for it on the writer lock.)

use std::sync::Arc;
use std::time::Instant;

use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::graph::{ApplyOutcome, Graph};
use fraudgraph_sampler::snapshot::Offsets;
use parking_lot::Mutex;

use crate::metrics::Metrics;

/// Idle eviction runs each time the newest applied event time enters a new period of the
/// graph's retention divided by this (see the module documentation).
pub const EVICTION_PERIODS_PER_RETENTION: i64 = 32;

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
            let before = self.graph.watermark_ms();
            let outcome = self.graph.apply(txn);
            let due = eviction_due(
                before,
                self.graph.watermark_ms(),
                self.graph.config().retention_ms,
            );
            let eviction = due.then(|| {
                let started = Instant::now();
                (self.graph.evict_idle(), started.elapsed())
            });
            (outcome, eviction)
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

/// Whether moving the newest applied event time from `before` to `after` opens a new
/// eviction period of `retention_ms / EVICTION_PERIODS_PER_RETENTION` (at least 1 ms).
/// The first transaction of an empty graph opens none: there is nothing to evict.
fn eviction_due(before: i64, after: i64, retention_ms: i64) -> bool {
    let period = (retention_ms / EVICTION_PERIODS_PER_RETENTION).max(1);
    before != i64::MIN && after.div_euclid(period) > before.div_euclid(period)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use fraudgraph_sampler::graph::GraphConfig;
    use fraudgraph_simulator::{SimConfig, Simulation};

    use super::*;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn a_pass_is_due_when_the_watermark_enters_a_new_period() {
        let retention = 32 * 1_000; // periods of 1 s
        assert!(
            !eviction_due(i64::MIN, 5_000, retention),
            "first transaction"
        );
        assert!(!eviction_due(5_000, 5_999, retention), "same period");
        assert!(eviction_due(5_999, 6_000, retention), "next period");
        assert!(
            eviction_due(5_000, 9_500, retention),
            "several periods at once: one pass"
        );
        assert!(
            !eviction_due(6_000, 6_000, retention),
            "late or duplicate: no move"
        );
        assert!(eviction_due(-1, 0, retention), "before 1970 too");
        assert!(
            eviction_due(0, 1, 1),
            "a retention under 32 ms still has periods"
        );
    }

    fn graph_config() -> GraphConfig {
        GraphConfig {
            retention_ms: 3 * DAY_MS,
            ..GraphConfig::default()
        }
    }

    /// (transactions, edges, nodes by type, watermark) of `live`'s graph.
    fn shape(live: &LiveGraph) -> (u64, u64, [u64; 5], i64) {
        let s = live.graph().stats();
        (s.transactions, s.edges, s.nodes, s.watermark_ms)
    }

    #[test]
    fn eviction_follows_the_stream_so_a_restored_run_builds_the_same_graph() {
        let sim = Simulation::generate(&SimConfig {
            transactions: 20_000,
            seed: 3,
            ..SimConfig::default()
        })
        .expect("valid simulation config");
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
        assert_eq!(shape(&restored), shape(&steady));

        // Without eviction the graph would be larger: the passes did remove something.
        let unevicted = Graph::new(graph_config());
        for t in &txns {
            unevicted.apply(t);
        }
        assert!(unevicted.stats().edges > steady.graph().stats().edges);
    }
}
