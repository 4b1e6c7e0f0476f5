//! Criterion benches of Hybrid-FraudNet inference on the CPU with one libtorch thread, on
//! the committed default artifact and batches of 1, 2, 8 and 64 real subgraphs sampled as
//! `fraudgraph serve` samples them: the last of the 200,000 transactions of the world it
//! warms its graph with (seed 1), each sampled just before it is applied:
//!
//! - `predict/<B>`: [`HybridFraudNet::predict`], the serving path (the fused forward pass,
//!   or the reference pass for large CPU batches);
//! - `fused/<B>`: the fused pass alone (`forward_fused`, no gradients, sigmoid);
//! - `reference/<B>`: the reference pass alone (`forward_reference`, likewise), the
//!   forward pass `predict` ran before the fused one existed;
//! - `predict_each/64`: `predict` on each of the 64 subgraphs in a batch of its own, one
//!   after the other (what serving at a moderate rate runs; divide by 64 for one pass);
//! - `native/<B>` and `native_each/64`: the same with [`NativeNet::predict`], the pass
//!   without libtorch, which reads the collated batch itself (the libtorch benches start
//!   from tensors already made; serving makes them from the same batch).
//!
//! `cargo bench -p fraudgraph-models --bench forward`. For a clean "before" figure run
//! `-- reference` on its own: the fused pass raises glibc's malloc trim threshold for the
//! process (see `keep_freed_memory` in `net.rs`), which would help the reference too.
//!
//! [`HybridFraudNet::predict`]: fraudgraph_models::net::HybridFraudNet::predict
//! [`NativeNet::predict`]: fraudgraph_models::net::NativeNet::predict

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fraudgraph_models::artifact::Artifact;
use fraudgraph_models::tensors::BatchTensors;
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::Relation;
use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::graph::Graph;
use fraudgraph_sampler::sample::sample;
use fraudgraph_simulator::{SimConfig, Simulation};
use tch::Device;

fn benches(c: &mut Criterion) {
    tch::set_num_threads(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    let artifact = Artifact::load(&dir, Device::Cpu).expect("the default artifact loads");
    let net = &artifact.net;
    let txns: Vec<Transaction> = Simulation::generate(&SimConfig {
        transactions: 200_000,
        seed: 1,
        ..SimConfig::default()
    })
    .expect("valid config")
    .transactions()
    .collect();
    // Every 7th of the last 448 transactions, sampled as served.
    let graph = Graph::new(artifact.graph_config());
    let sampler = artifact.sampler_config();
    let mut subs = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        if i + 64 * 7 >= txns.len() && i % 7 == 0 {
            subs.push(sample(&graph, t, &sampler));
        }
        graph.apply(t);
    }

    // Batches of up to 8 are the subgraphs of median size (by edges); 64 is all of them.
    let mut by_size = subs;
    by_size.sort_by_key(|s| s.edge_count());

    let native = net.native().expect("the artifact's weights copy");
    let mut group = c.benchmark_group("forward");
    for size in [1usize, 2, 8, 64] {
        let mut batch = Batch::default();
        let from = (by_size.len() - size) / 2;
        let chosen = &by_size[from..from + size];
        batch.collate(chosen, artifact.manifest.max_sequence);
        let tensors = BatchTensors::from_batch(&batch, Device::Cpu).expect("valid batch");
        let nodes: i64 = tensors.node_graph.iter().map(|g| g.size()[0]).sum();
        let edges: i64 = Relation::ALL.iter().map(|r| tensors.edges(*r)).sum();
        eprintln!("batch of {size}: {nodes} nodes, {edges} edges");
        group.bench_with_input(BenchmarkId::new("predict", size), &tensors, |b, t| {
            b.iter(|| black_box(net.predict(t).expect("predicts")))
        });
        group.bench_with_input(BenchmarkId::new("fused", size), &tensors, |b, t| {
            b.iter(|| {
                let _no_grad = tch::no_grad_guard();
                black_box(net.forward_fused(t, false).expect("runs").sigmoid())
            })
        });
        group.bench_with_input(BenchmarkId::new("reference", size), &tensors, |b, t| {
            b.iter(|| {
                let _no_grad = tch::no_grad_guard();
                black_box(net.forward_reference(t, false).expect("runs").sigmoid())
            })
        });
        group.bench_with_input(BenchmarkId::new("native", size), &batch, |b, batch| {
            b.iter(|| black_box(native.predict(batch).expect("predicts")))
        });
    }
    // Serving at a moderate rate: every one of the 64 subgraphs (small and large) in a batch
    // of its own, one after the other; the time is for all 64 passes.
    let single_batches: Vec<Batch> = by_size
        .iter()
        .map(|sub| {
            let mut batch = Batch::default();
            batch.collate(std::slice::from_ref(sub), artifact.manifest.max_sequence);
            batch
        })
        .collect();
    let singles: Vec<BatchTensors> = single_batches
        .iter()
        .map(|batch| BatchTensors::from_batch(batch, Device::Cpu).expect("valid batch"))
        .collect();
    group.bench_function("predict_each/64", |b| {
        b.iter(|| {
            for t in &singles {
                let _ = black_box(net.predict(t).expect("predicts"));
            }
        })
    });
    group.bench_function("native_each/64", |b| {
        b.iter(|| {
            for batch in &single_batches {
                let _ = black_box(native.predict(batch).expect("predicts"));
            }
        })
    });
    group.finish();
}

criterion_group!(forward, benches);
criterion_main!(forward);
