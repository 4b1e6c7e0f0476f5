//! `fraudgraph bench`: the project's own benchmark commands. Each prints one
//! JSON object on stdout so results can be recorded in docs/BENCHMARKS.md
//! and compared as ratios within one run.
//!
//! - `bench sampler`: builds the graph from the simulated world and measures
//!   ingest rate, memory per edge, and sampling latency alone and while the
//!   writer ingests concurrently.
//! - `bench serve`: open-loop gRPC load at a fixed rate against a running
//!   `fraudgraph serve`, with real simulated transactions as payloads: latency
//!   from each call's due time and from its send, errors by code, the GNN's
//!   share of answers, fallbacks, and Health/Check latency under that load.
//!   The logic is in [`crate::loadgen`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::graph::{Graph, GraphConfig};
use fraudgraph_sampler::sample::{SamplerConfig, Strategy, sample};
use fraudgraph_simulator::{SimConfig, Simulation};
use serde::Serialize;
use serde_json::json;

use crate::loadgen::{self, LoadConfig, Rpc, Targets};

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
    /// Open-loop gRPC load against a running `fraudgraph serve`.
    Serve(ServeBench),
    /// The in-process scoring pipeline at saturation: single vs double buffering.
    Pipeline(super::bench_pipeline::PipelineBench),
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

/// The scoring call `bench serve` makes.
#[derive(Clone, Copy, ValueEnum)]
enum RpcChoice {
    /// `Score`: one transaction per call.
    Score,
    /// `ScoreBatch`: `--batch-size` transactions per call, each counted.
    Batch,
}

/// Arguments of `fraudgraph bench serve`.
#[derive(Args)]
struct ServeBench {
    /// The server's gRPC address: host:port or http://host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// Calls per second, each started when due whether or not earlier calls
    /// have answered (open loop).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds measured after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before the measured window, whose results are discarded.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// HTTP/2 connections for scoring calls, used round-robin.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Each call's deadline, sent as its gRPC timeout.
    #[arg(long, default_value_t = 50)]
    deadline_ms: u64,
    /// Ask the server to also apply each transaction to its graph.
    #[arg(long)]
    apply: bool,
    /// Score (one transaction per call) or ScoreBatch.
    #[arg(long, value_enum, default_value_t = RpcChoice::Score)]
    rpc: RpcChoice,
    /// Transactions per ScoreBatch call (with --rpc batch).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// grpc.health.v1 Health/Check calls per second on a connection of their
    /// own during the run; 0 disables them.
    #[arg(long, default_value_t = 20.0)]
    health_rate: f64,
    /// The service the health checks ask about ("" is the whole server).
    #[arg(long, default_value = "")]
    health_service: String,
    /// Seconds to wait for the health service to report SERVING before the
    /// run starts; 0 starts at once.
    #[arg(long, default_value_t = 60.0)]
    wait_serving: f64,
    /// Simulator seed of the payload stream (serve's --sim-seed).
    #[arg(long, default_value_t = 1)]
    sim_seed: u64,
    /// Transactions of the simulated stream to skip before the ones sent
    /// (serve's warm history, --warm-transactions).
    #[arg(long, default_value_t = 200_000)]
    skip: u64,
    /// Length of the simulated stream (serve's `sim_transactions`). Streams of
    /// different lengths differ, so this must be the server's for the payloads
    /// to continue its warm history. A run that needs more than the stream has
    /// after --skip sends them again from the first.
    #[arg(long, default_value_t = 250_000)]
    sim_transactions: u64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print one JSON object (the default prints it too; kept for scripts).
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.target {
        BenchTarget::Sampler(b) => sampler(b),
        BenchTarget::Serve(b) => serve(b),
        BenchTarget::Pipeline(b) => super::bench_pipeline::run(b),
    }
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{flag} must be a number of seconds, got {value}"))
}

fn serve(b: ServeBench) -> anyhow::Result<()> {
    let config = LoadConfig {
        rate: b.rate,
        warmup: seconds("--warmup", b.warmup)?,
        duration: seconds("--duration", b.duration)?,
        deadline: Duration::from_millis(b.deadline_ms),
        rpc: match b.rpc {
            RpcChoice::Score => Rpc::Score,
            RpcChoice::Batch => Rpc::Batch(b.batch_size),
        },
        apply_to_graph: b.apply,
        health_rate: b.health_rate,
        health_service: b.health_service.clone(),
        progress: true,
    };
    config.validate()?;
    let wait_serving = seconds("--wait-serving", b.wait_serving)?;
    if b.threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(b.threads)
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let (summary, distinct) = runtime.block_on(async {
        let targets = Targets::connect(&b.target, b.connections).await?;
        let count = config.transactions_needed();
        eprintln!(
            "bench serve: simulating {} transactions (seed {}) for the {count} to send after \
             the first {}",
            b.sim_transactions, b.sim_seed, b.skip
        );
        let started = Instant::now();
        let (seed, skip, stream_len) = (b.sim_seed, b.skip, b.sim_transactions);
        let payloads = tokio::task::spawn_blocking(move || {
            loadgen::simulated_transactions(seed, skip, count, stream_len)
        })
        .await
        .context("simulating the payloads")??;
        eprintln!(
            "bench serve: {} transactions ready in {:.1} s",
            payloads.len(),
            started.elapsed().as_secs_f64()
        );
        if (payloads.len() as u64) < count {
            eprintln!(
                "bench serve: the stream ends after {} of them; they are sent again from the \
                 first (raise --sim-transactions on both sides to avoid repeats)",
                payloads.len()
            );
        }
        if !wait_serving.is_zero()
            && !targets
                .wait_until_serving(&config.health_service, wait_serving)
                .await?
        {
            eprintln!("bench serve: the target has no health service; not waiting for SERVING");
        }
        eprintln!(
            "bench serve: {} calls/s to {} for {:.1} s ({} calls measured) after {:.1} s of warm-up",
            config.rate,
            b.target,
            config.duration.as_secs_f64(),
            config.schedule().measured_calls(),
            config.warmup.as_secs_f64()
        );
        let distinct = payloads.len();
        let summary = loadgen::run(&targets, payloads.into(), &config).await?;
        anyhow::Ok((summary, distinct))
    })?;
    let report = ServeReport {
        summary: &summary,
        sim_seed: b.sim_seed,
        sim_transactions: b.sim_transactions,
        skip: b.skip,
        distinct_transactions: distinct,
        generator_threads: b.threads,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// What `bench serve` prints: the run's summary and where its payloads came from.
#[derive(Serialize)]
struct ServeReport<'a> {
    #[serde(flatten)]
    summary: &'a loadgen::Summary,
    /// The simulator seed of the payloads.
    sim_seed: u64,
    /// Length of the simulated stream.
    sim_transactions: u64,
    /// Simulated transactions skipped before the payloads.
    skip: u64,
    /// Different transactions sent (fewer than `sent` when the stream ran out and
    /// the payloads were sent again).
    distinct_transactions: usize,
    /// Worker threads of the generator's runtime.
    generator_threads: usize,
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
