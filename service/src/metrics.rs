//! Prometheus metrics of the running service: one [`Metrics`] value owns the registry and
//! every series, and every stage of the service holds an `Arc<Metrics>` to report into.
//!
//! Names are the public contract of the dashboards and alert rules under `deploy/`
//! (see docs/OPERATIONS.md); change them only together. Labels never carry identifiers of
//! accounts, cards, devices or IPs.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 50 µs to 5 s, dense around the millisecond SLOs.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Batch-size buckets.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// `fraudgraph_rpc_duration_seconds{rpc}`: server-side latency of each gRPC method.
    pub rpc_duration: HistogramVec,
    /// `fraudgraph_rpc_invalid_total{rpc}`: requests rejected with INVALID_ARGUMENT.
    pub rpc_invalid: IntCounterVec,
    /// `fraudgraph_stage_duration_seconds{stage}`: per-request time in each pipeline stage
    /// (`queue`, `sample`, `batch_wait`, `inference`, `total`).
    pub stage_duration: HistogramVec,
    /// `fraudgraph_scores_total{model,reason}`: answers by the model that gave them and the
    /// fallback reason (`none` for GNN answers).
    pub scores: IntCounterVec,
    /// `fraudgraph_batch_size`: transactions per GNN forward pass.
    pub batch_size: Histogram,
    /// `fraudgraph_gnn_batch_duration_seconds`: one GNN forward pass (copy in, forward, copy out).
    pub gnn_batch_duration: Histogram,
    /// `fraudgraph_queue_depth{queue}`: requests waiting for a sampler thread (`sample`) or
    /// for the GNN (`inference`).
    pub queue_depth: IntGaugeVec,
    /// `fraudgraph_inference_errors_total`: GNN batches that failed.
    pub inference_errors: IntCounter,
    /// `fraudgraph_kafka_records_total{topic,outcome}`: records consumed, by outcome
    /// (`applied`, `duplicate`, `too_late`, `label`, `dead_lettered`).
    pub kafka_records: IntCounterVec,
    /// `fraudgraph_kafka_dead_lettered_total`: records sent to the dead-letter topic.
    pub kafka_dead_lettered: IntCounter,
    /// `fraudgraph_kafka_lag{topic,partition}`: high watermark minus the next offset to read.
    pub kafka_lag: IntGaugeVec,
    /// `fraudgraph_kafka_lag_total`: the sum of [`Metrics::kafka_lag`].
    pub kafka_lag_total: IntGauge,
    /// `fraudgraph_kafka_paused`: 1 while the consumer pauses its partitions for backpressure.
    pub kafka_paused: IntGauge,
    /// `fraudgraph_kafka_merge_held`: transactions the partition merge holds, waiting for
    /// older ones from another partition (high only while a backlog is replayed).
    pub kafka_merge_held: IntGauge,
    /// `fraudgraph_kafka_merge_gave_up_total`: times the partition merge went on without a
    /// partition that held it back for 2 s (or with the merge full).
    pub kafka_merge_gave_up: IntCounter,
    /// `fraudgraph_decisions_produced_total`: decisions written to the decisions topic.
    pub decisions_produced: IntCounter,
    /// `fraudgraph_decisions_dropped_total{reason}`: applied transactions that got no
    /// decision on the decisions topic: `queue_full` (the applier found the score-on-ingest
    /// queue full and went on), `no_score` (scoring failed), `not_produced` (the producer
    /// refused the record).
    pub decisions_dropped: IntCounterVec,
    /// `fraudgraph_sampler_panics_total`: requests on which a sampler thread panicked (a
    /// bug: the request got no score, the thread went on).
    pub sampler_panics: IntCounter,
    /// `fraudgraph_labels{outcome}`: labels credited to their transaction's entities
    /// (`credited`), or not (`unknown`: the transaction was forgotten or already labelled).
    pub labels: IntGaugeVec,
    /// `fraudgraph_graph_nodes{type}`: live nodes per node type.
    pub graph_nodes: IntGaugeVec,
    /// `fraudgraph_graph_edges`: distinct live edges.
    pub graph_edges: IntGauge,
    /// `fraudgraph_graph_bytes`: approximate memory held by the graph.
    pub graph_bytes: IntGauge,
    /// `fraudgraph_graph_transactions_total`: transactions applied to the graph (Kafka and
    /// Score calls with `apply_to_graph`).
    pub graph_transactions: IntCounter,
    /// `fraudgraph_graph_watermark_seconds`: event time of the newest applied transaction.
    pub graph_watermark: IntGauge,
    /// `fraudgraph_graph_eviction_duration_seconds`: one idle-eviction pass over the graph
    /// (the writer waits for it; its count is the number of passes).
    pub graph_eviction_duration: Histogram,
    /// `fraudgraph_graph_evicted_total{what}`: idle `nodes` and `edges` removed by eviction.
    pub graph_evicted: IntCounterVec,
    /// `fraudgraph_snapshots_total{outcome}`: graph snapshots written (`ok`, `error`).
    pub snapshots: IntCounterVec,
    /// `fraudgraph_ready`: 1 while the health service reports SERVING.
    pub ready: IntGauge,
    /// `fraudgraph_build_info{version,device,model_version}`: always 1.
    pub build_info: IntGaugeVec,
}

impl Metrics {
    /// A fresh registry with every series registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("valid histogram definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };

        Metrics {
            rpc_duration: hist(
                "fraudgraph_rpc_duration_seconds",
                "Server-side latency of each gRPC method.",
                &["rpc"],
                LATENCY_BUCKETS,
            ),
            rpc_invalid: counter_vec(
                "fraudgraph_rpc_invalid_total",
                "Requests rejected with INVALID_ARGUMENT.",
                &["rpc"],
            ),
            stage_duration: hist(
                "fraudgraph_stage_duration_seconds",
                "Per-request time in each scoring pipeline stage.",
                &["stage"],
                LATENCY_BUCKETS,
            ),
            scores: counter_vec(
                "fraudgraph_scores_total",
                "Scores returned, by the model that answered and the fallback reason.",
                &["model", "reason"],
            ),
            batch_size: hist(
                "fraudgraph_batch_size",
                "Transactions per GNN forward pass.",
                &[],
                BATCH_BUCKETS,
            )
            .with_label_values(&[] as &[&str]),
            gnn_batch_duration: hist(
                "fraudgraph_gnn_batch_duration_seconds",
                "One GNN forward pass: copy in, forward, copy out.",
                &[],
                LATENCY_BUCKETS,
            )
            .with_label_values(&[] as &[&str]),
            queue_depth: gauge_vec(
                "fraudgraph_queue_depth",
                "Requests waiting for a sampler thread (sample) or for the GNN (inference).",
                &["queue"],
            ),
            inference_errors: counter(
                "fraudgraph_inference_errors_total",
                "GNN batches that failed.",
            ),
            kafka_records: counter_vec(
                "fraudgraph_kafka_records_total",
                "Kafka records consumed, by topic and outcome.",
                &["topic", "outcome"],
            ),
            kafka_dead_lettered: counter(
                "fraudgraph_kafka_dead_lettered_total",
                "Records sent to the dead-letter topic.",
            ),
            kafka_lag: gauge_vec(
                "fraudgraph_kafka_lag",
                "Consumer lag per partition: high watermark minus the next offset to read.",
                &["topic", "partition"],
            ),
            kafka_lag_total: gauge(
                "fraudgraph_kafka_lag_total",
                "Consumer lag, all partitions.",
            ),
            kafka_paused: gauge(
                "fraudgraph_kafka_paused",
                "1 while the consumer pauses its partitions because the applier is behind.",
            ),
            kafka_merge_held: gauge(
                "fraudgraph_kafka_merge_held",
                "Transactions held to merge the partitions in event-time order.",
            ),
            kafka_merge_gave_up: counter(
                "fraudgraph_kafka_merge_gave_up_total",
                "Times the partition merge went on without a partition that held it back.",
            ),
            decisions_produced: counter(
                "fraudgraph_decisions_produced_total",
                "Decisions written to the decisions topic.",
            ),
            sampler_panics: counter(
                "fraudgraph_sampler_panics_total",
                "Requests on which a sampler thread panicked (a bug); the thread went on.",
            ),
            decisions_dropped: counter_vec(
                "fraudgraph_decisions_dropped_total",
                "Applied transactions that got no decision on the decisions topic, by reason.",
                &["reason"],
            ),
            labels: gauge_vec(
                "fraudgraph_labels",
                "Labels credited to their transaction's entities, or unknown.",
                &["outcome"],
            ),
            graph_nodes: gauge_vec(
                "fraudgraph_graph_nodes",
                "Live graph nodes per node type.",
                &["type"],
            ),
            graph_edges: gauge("fraudgraph_graph_edges", "Distinct live graph edges."),
            graph_bytes: gauge(
                "fraudgraph_graph_bytes",
                "Approximate memory held by the graph, bytes.",
            ),
            graph_transactions: counter(
                "fraudgraph_graph_transactions_total",
                "Transactions applied to the graph.",
            ),
            graph_watermark: gauge(
                "fraudgraph_graph_watermark_seconds",
                "Event time of the newest applied transaction, Unix seconds.",
            ),
            graph_eviction_duration: hist(
                "fraudgraph_graph_eviction_duration_seconds",
                "One idle-eviction pass over the graph; the writer waits for it.",
                &[],
                LATENCY_BUCKETS,
            )
            .with_label_values(&[] as &[&str]),
            graph_evicted: counter_vec(
                "fraudgraph_graph_evicted_total",
                "Idle nodes and edges removed by eviction.",
                &["what"],
            ),
            snapshots: counter_vec(
                "fraudgraph_snapshots_total",
                "Graph snapshots written, by outcome.",
                &["outcome"],
            ),
            ready: gauge(
                "fraudgraph_ready",
                "1 while the health service reports SERVING.",
            ),
            build_info: gauge_vec(
                "fraudgraph_build_info",
                "Build and model information; always 1.",
                &["version", "device", "model_version"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Copies the graph's counters into the graph gauges.
    pub fn observe_graph(&self, stats: &fraudgraph_sampler::graph::GraphStats) {
        for t in fraudgraph_sampler::schema::NodeType::ALL {
            self.graph_nodes
                .with_label_values(&[fraudgraph_models::net::node_type_name(t)])
                .set(stats.nodes[t.index()] as i64);
        }
        self.graph_edges.set(stats.edges as i64);
        self.graph_bytes
            .set((stats.edge_bytes + stats.node_bytes) as i64);
        if stats.watermark_ms > 0 {
            self.graph_watermark.set(stats.watermark_ms / 1000);
        }
    }

    /// Records one idle-eviction pass: what it removed and how long it took.
    pub fn observe_eviction(
        &self,
        evicted: &fraudgraph_sampler::graph::Evicted,
        took: std::time::Duration,
    ) {
        self.graph_eviction_duration.observe(took.as_secs_f64());
        self.graph_evicted
            .with_label_values(&["nodes"])
            .inc_by(evicted.nodes);
        self.graph_evicted
            .with_label_values(&["edges"])
            .inc_by(evicted.half_edges / 2);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_renders_with_its_name() {
        let m = Metrics::new();
        m.scores.with_label_values(&["gnn", "none"]).inc();
        m.stage_duration
            .with_label_values(&["total"])
            .observe(0.002);
        m.batch_size.observe(8.0);
        let text = m.render();
        assert!(
            text.contains("fraudgraph_scores_total{model=\"gnn\",reason=\"none\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "fraudgraph_stage_duration_seconds_bucket{stage=\"total\",le=\"0.002\"} 1"
            )
        );
        assert!(text.contains("fraudgraph_batch_size_count 1"));
        assert!(text.contains("fraudgraph_kafka_lag_total 0"));
    }
}
