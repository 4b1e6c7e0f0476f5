//! `fraudgraph bench`: the project's own benchmark commands. Each prints one
//! JSON object on stdout so results can be recorded in docs/BENCHMARKS.md
//! and compared as ratios within one run.
//!
//! - `bench sampler`: builds the graph from the simulated world and measures
//!   ingest rate, memory per edge, and sampling latency alone and while the
//!   writer ingests concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::{Args, Subcommand};
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::graph::{Graph, GraphConfig};
use fraudgraph_sampler::sample::{SamplerConfig, Strategy, sample};
use fraudgraph_simulator::{SimConfig, Simulation};
use serde_json::json;

/// Arguments of `fraudgraph bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Graph ingest and 3-hop sampling on the simulated world.
    Sampler(SamplerBench),
}

/// Arguments of `fraudgraph bench sampler`.
#[derive(Args)]
struct SamplerBench {
    /// Simulated transactions to ingest.
    #[arg(long, default_value_t = 1_000_000)]
    transactions: u64,
    /// Simulator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Targets to sample per measurement.
    #[arg(long, default_value_t = 5_000)]
    samples: usize,
    /// Fan-out per hop, e.g. 20,10,5.
    #[arg(long, default_value = "20,10,5", value_delimiter = ',', num_args = 3)]
    fanouts: Vec<usize>,
    /// Sample weighted by edge count instead of most recent first.
    #[arg(long)]
    weighted: bool,
    /// Print one JSON object (the default prints it too; kept for scripts).
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.target {
        BenchTarget::Sampler(b) => sampler(b),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sample_latencies(
    graph: &Graph,
    targets: &[Transaction],
    config: &SamplerConfig,
) -> (Vec<f64>, Vec<f64>) {
    let mut lat = Vec::with_capacity(targets.len());
    let mut nodes = Vec::with_capacity(targets.len());
    for t in targets {
        let start = Instant::now();
        let sub = sample(graph, t, config);
        lat.push(start.elapsed().as_secs_f64() * 1e6);
        nodes.push(sub.node_count() as f64);
    }
    lat.sort_by(f64::total_cmp);
    nodes.sort_by(f64::total_cmp);
    (lat, nodes)
}

fn sampler(b: SamplerBench) -> anyhow::Result<()> {
    let sim = Simulation::generate(&SimConfig {
        transactions: b.transactions,
        seed: b.seed,
        ..SimConfig::default()
    })?;
    let txns: Vec<Transaction> = sim.transactions().collect();
    let config = SamplerConfig {
        fanouts: [b.fanouts[0], b.fanouts[1], b.fanouts[2]],
        strategy: if b.weighted {
            Strategy::Weighted
        } else {
            Strategy::MostRecent
        },
        seed: b.seed,
    };
    let n = txns.len();
    let split = n * 4 / 5;

    // 1. Ingest everything on this thread.
    let graph = Graph::new(GraphConfig::default());
    let start = Instant::now();
    for t in &txns {
        graph.apply(t);
    }
    let ingest_s = start.elapsed().as_secs_f64();
    let stats = graph.stats();

    // 2. Sampling alone: the last transactions, as if scored just after apply.
    let step = (n / b.samples.max(1)).max(1);
    let targets: Vec<Transaction> = txns
        .iter()
        .step_by(step)
        .rev()
        .take(b.samples)
        .cloned()
        .collect();
    let (alone, sampled_nodes) = sample_latencies(&graph, &targets, &config);
    drop(graph);

    // 3. Sampling while the writer ingests the last fifth concurrently.
    let graph = Arc::new(Graph::new(GraphConfig::default()));
    for t in &txns[..split] {
        graph.apply(t);
    }
    let tail: Arc<Vec<Transaction>> = Arc::new(txns[split..].to_vec());
    let busy_targets: Vec<Transaction> = txns[..split]
        .iter()
        .rev()
        .step_by(step.max(1))
        .take(b.samples)
        .cloned()
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (graph, tail, done) = (graph.clone(), tail.clone(), done.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            for t in tail.iter() {
                graph.apply(t);
            }
            done.store(true, Ordering::Release);
            tail.len() as f64 / start.elapsed().as_secs_f64()
        })
    };
    let mut busy = Vec::new();
    while !done.load(Ordering::Acquire) {
        let (mut lat, _) = sample_latencies(
            &graph,
            &busy_targets[..busy_targets.len().min(500)],
            &config,
        );
        busy.append(&mut lat);
    }
    let concurrent_ingest = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    busy.sort_by(f64::total_cmp);

    let report = json!({
        "transactions": n,
        "ingest_txn_per_s": n as f64 / ingest_s,
        "nodes": stats.nodes.iter().sum::<u64>(),
        "edges": stats.edges,
        "bytes_per_edge": stats.edge_bytes as f64 / stats.edges.max(1) as f64,
        "node_bytes_per_edge": stats.node_bytes as f64 / stats.edges.max(1) as f64,
        "bytes_per_node": stats.node_bytes as f64 / stats.nodes.iter().sum::<u64>().max(1) as f64,
        "fanouts": b.fanouts,
        "strategy": if b.weighted { "weighted" } else { "most_recent" },
        "mean_sampled_nodes": sampled_nodes.iter().sum::<f64>() / sampled_nodes.len().max(1) as f64,
        "sampled_nodes_p99": percentile(&sampled_nodes, 0.99),
        "sampled_nodes_max": sampled_nodes.last().copied().unwrap_or(0.0),
        "sample_p50_us": percentile(&alone, 0.5),
        "sample_p99_us": percentile(&alone, 0.99),
        "sample_max_us": alone.last().copied().unwrap_or(0.0),
        "sample_p99_us_under_ingest": percentile(&busy, 0.99),
        "samples_under_ingest": busy.len(),
        "ingest_txn_per_s_while_sampling": concurrent_ingest,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
