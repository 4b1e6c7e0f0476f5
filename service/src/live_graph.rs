//! The service's one live graph and its single-writer rule.
//!
//! The sampler's [`Graph`] allows one writer at a time next to any number of readers (see
//! `fraudgraph_sampler::graph`). The service has two writers: the Kafka applier and Score
//! calls with `apply_to_graph`. [`LiveGraph::apply`] serialises them through one mutex,
//! held for the few microseconds of one apply, so readers (samplers) never wait for it and
//! both writers see one order of applies. Idempotent apply makes the two paths safe
//! together: a transaction applied by a Score call and later consumed from Kafka counts once.

use std::sync::Arc;

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

    /// Applies a validated transaction, one writer at a time. Blocks for microseconds:
    /// call it from a sampler or Kafka thread, not from an async task.
    pub fn apply(&self, txn: &Transaction) -> ApplyOutcome {
        let outcome = {
            let _writer = self.writer.lock();
            self.graph.apply(txn)
        };
        if outcome == ApplyOutcome::Applied {
            self.metrics.graph_transactions.inc();
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

    /// Runs one eviction pass under the writer lock and refreshes the graph gauges.
    pub fn maintain(&self) {
        {
            let _writer = self.writer.lock();
            self.graph.evict_idle();
        }
        self.metrics.observe_graph(&self.graph.stats());
    }
}
