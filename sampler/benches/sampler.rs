//! Criterion benches of the sampler's inner pieces on a simulated world:
//! applying a transaction, an edge's causal view, a node's aggregates as of
//! an instant, sampling one neighbourhood (at the head of the stream, as the
//! service does, and looking back at a target in the past), the feature
//! logarithms of a subgraph, and collating a batch.
//!
//! `cargo bench -p fraudgraph-sampler`; the end-to-end figures come from
//! `fraudgraph bench sampler` (docs/BENCHMARKS.md).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::graph::{Graph, GraphConfig, epoch_secs};
use fraudgraph_sampler::sample::{SamplerConfig, sample, sample_into};
use fraudgraph_sampler::{NodeType, features};
use fraudgraph_simulator::{SimConfig, Simulation};

fn world(n: u64) -> Vec<Transaction> {
    Simulation::generate(&SimConfig {
        transactions: n,
        seed: 9,
        ..SimConfig::default()
    })
    .expect("valid config")
    .transactions()
    .collect()
}

fn benches(c: &mut Criterion) {
    let txns = world(100_000);
    let graph = Graph::new(GraphConfig::default());
    for t in &txns {
        graph.apply(t);
    }
    let targets: Vec<&Transaction> = txns.iter().rev().step_by(97).take(256).collect();
    let config = SamplerConfig::default();

    c.bench_function("apply (fresh graph, 10k txns)", |b| {
        b.iter_batched(
            || Graph::new(GraphConfig::default()),
            |g| {
                for t in &txns[..10_000] {
                    g.apply(t);
                }
                g
            },
            BatchSize::LargeInput,
        )
    });

    let last = &txns[txns.len() - 1];
    let merchant = graph
        .lookup(NodeType::Merchant, &last.merchant_id)
        .expect("applied");
    let t_s = epoch_secs(last.event_time_ms);
    c.bench_function("edge views of a merchant (as_of, all edges)", |b| {
        b.iter(|| {
            graph.with_node(NodeType::Merchant, merchant, |n| {
                n.ports
                    .iter()
                    .flatten()
                    .filter_map(|e| e.as_of(black_box(t_s)))
                    .count()
            })
        })
    });
    c.bench_function("node aggregates as of t", |b| {
        b.iter(|| {
            graph.with_node(NodeType::Merchant, merchant, |n| {
                n.aggregates_at(black_box(last.event_time_ms))
            })
        })
    });

    // At the head of the stream, as the service samples: the graph holds the first 90,000
    // transactions and each target is one of the next, not applied yet.
    let head = Graph::new(GraphConfig::default());
    for t in &txns[..90_000] {
        head.apply(t);
    }
    let upcoming: Vec<&Transaction> = txns[90_000..].iter().step_by(37).take(256).collect();
    let mut out = fraudgraph_sampler::sample::Subgraph::sized_for(&head);
    let mut i = 0;
    c.bench_function("sample 20/10/5 at the head of the stream", |b| {
        b.iter(|| {
            i = (i + 1) % upcoming.len();
            sample_into(&head, upcoming[i], &config, &mut out);
            out.node_count()
        })
    });

    let mut i = 0;
    c.bench_function("sample 20/10/5 (most recent)", |b| {
        b.iter(|| {
            i = (i + 1) % targets.len();
            sample(&graph, targets[i], &config)
        })
    });

    // The logarithm columns of a typical head-of-stream subgraph's rows: ~330 nodes (as
    // accounts, 16 columns) and ~600 edges.
    let mut node_rows: Vec<f32> = (0..330 * 16).map(|i| (i % 977) as f32 * 3.7).collect();
    let mut edge_rows: Vec<f32> = (0..600 * 5).map(|i| (i % 613) as f32 * 1.3).collect();
    c.bench_function("feature logarithms of one subgraph (ln1p_columns)", |b| {
        b.iter(|| {
            features::ln1p_columns(black_box(&mut node_rows), 16, &features::NODE_LOG_COLUMNS);
            features::ln1p_columns(black_box(&mut edge_rows), 5, &features::EDGE_LOG_COLUMNS);
        })
    });

    let subs: Vec<_> = targets[..64]
        .iter()
        .map(|t| sample(&graph, t, &config))
        .collect();
    let mut batch = Batch::default();
    c.bench_function("collate 64 subgraphs (reused batch)", |b| {
        b.iter(|| batch.collate(black_box(&subs), 32))
    });
}

criterion_group!(sampler_benches, benches);
criterion_main!(sampler_benches);
