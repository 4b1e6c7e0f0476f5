//! `fraudgraph bench`: the project's own benchmark commands. Each prints one
//! JSON object on stdout so results can be recorded in docs/BENCHMARKS.md
//! and compared as ratios within one run.
//!
//! - `bench sampler`: streams the simulated world into the graph and measures
//!   ingest rate, memory per edge, and sampling latency at the head of the
//!   stream (as serving and training sample), alone and while a writer thread
//!   ingests concurrently, plus sampling back in time on the finished graph.
//! - `bench serve`: open-loop gRPC load at a fixed rate against a running
//!   `fraudgraph serve`, with real simulated transactions as payloads: latency
//!   from each call's due time and from its send, errors by code, the GNN's
//!   share of answers, fallbacks, and Health/Check latency under that load.
//!   The logic is in [`crate::loadgen`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::graph::{Graph, GraphConfig, LOOKAHEAD};
use fraudgraph_sampler::sample::{SamplerConfig, Strategy, Subgraph, sample_into};
use fraudgraph_simulator::{SimConfig, Simulation};
use indicatif::{ProgressBar, ProgressStyle};
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
    /// Fan-out per hop, e.g. 20,10,5 (the sampler's default).
    #[arg(long, value_parser = super::parse_fanouts)]
    fanouts: Option<[usize; 3]>,
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
    let mut sub = Subgraph::sized_for(graph);
    for t in targets {
        let start = Instant::now();
        sample_into(graph, t, config, &mut sub);
        lat.push(start.elapsed().as_secs_f64() * 1e6);
        nodes.push(sub.node_count() as f64);
    }
    lat.sort_by(f64::total_cmp);
    nodes.sort_by(f64::total_cmp);
    (lat, nodes)
}

/// A stream of transactions read [`LOOKAHEAD`] ahead, so that applying one can start
/// loading what the next ones need ([`Graph::prefetch_upcoming`]), as the service's
/// applier does.
struct Ahead<I> {
    stream: I,
    window: VecDeque<Transaction>,
}

impl<I: Iterator<Item = Transaction>> Ahead<I> {
    fn new(stream: I) -> Self {
        Ahead {
            stream,
            window: VecDeque::with_capacity(LOOKAHEAD + 1),
        }
    }

    /// The next transaction.
    fn next(&mut self) -> Option<Transaction> {
        while self.window.len() < LOOKAHEAD + 1 {
            match self.stream.next() {
                Some(t) => self.window.push_back(t),
                None => break,
            }
        }
        self.window.pop_front()
    }

    /// The transactions after the one [`Ahead::next`] returned last, in order.
    fn upcoming(&self) -> impl Iterator<Item = &Transaction> {
        self.window.iter()
    }
}

fn sampler(b: SamplerBench) -> anyhow::Result<()> {
    let config = SamplerConfig {
        fanouts: b.fanouts.unwrap_or(SamplerConfig::default().fanouts),
        strategy: if b.weighted {
            Strategy::Weighted
        } else {
            Strategy::MostRecent
        },
        seed: b.seed,
    };
    eprintln!("bench sampler: simulating {} transactions", b.transactions);
    let sim = Simulation::generate(&SimConfig {
        transactions: b.transactions,
        seed: b.seed,
        ..SimConfig::default()
    })?;
    // The simulation is compact and renders each transaction when asked, so the
    // stream is never held whole: tens of millions of transactions fit.
    let n = sim.summary().transactions as usize;
    let split = n * 4 / 5;
    let live_from = n * 3 / 5;
    let live_step = ((split - live_from) / b.samples.max(1)).max(1);
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {human_pos}/{human_len} transactions, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("ingest");

    // 1. One thread applies the first four fifths, timing apply alone. Between
    //    three and four fifths, every `live_step`-th transaction is sampled just
    //    before it is applied: what serving does (score a payment, then apply it)
    //    and what training's replay does, on a graph at 60-80% of its final size.
    //    Every `past_step`-th transaction is kept for step 3.
    let past_step = (split / b.samples.max(1)).max(1);
    let graph = Graph::new(GraphConfig::default());
    let mut stream = Ahead::new(sim.transactions());
    let mut apply_time = Duration::ZERO;
    let mut live = Vec::with_capacity(b.samples);
    let mut live_nodes = Vec::with_capacity(b.samples);
    let mut past_targets = Vec::with_capacity(b.samples + 1);
    // One subgraph reused from sample to sample, as a sampler thread's memory is reused
    // once it has served a few requests: new allocations on this thread would land on
    // pages the writer's growth has just added, and their page faults are not sampling.
    let mut sub = Subgraph::sized_for(&graph);
    for i in 0..split {
        let t = stream.next().context("the simulation ended early")?;
        if i.is_multiple_of(past_step) {
            past_targets.push(t.clone());
        }
        if i >= live_from && (i - live_from).is_multiple_of(live_step) && live.len() < b.samples {
            let start = Instant::now();
            sample_into(&graph, &t, &config, &mut sub);
            live.push(start.elapsed().as_secs_f64() * 1e6);
            live_nodes.push(sub.node_count() as f64);
        }
        let start = Instant::now();
        graph.prefetch_upcoming(stream.upcoming());
        graph.apply(&t);
        apply_time += start.elapsed();
        if i.is_multiple_of(65_536) {
            bar.set_position(i as u64);
        }
    }
    let ingest_txn_per_s = split as f64 / apply_time.as_secs_f64();

    // 2. A writer thread applies the last fifth while this thread samples
    //    transactions the writer hands over just before applying them (it never
    //    waits for the sampler): scoring at the head of a live stream.
    bar.set_message("ingest + sample");
    let (handover, arrivals) = crossbeam_channel::bounded::<Transaction>(1);
    let (busy, concurrent_ingest) = std::thread::scope(|scope| {
        let graph = &graph;
        let writer = {
            let bar = bar.clone();
            scope.spawn(move || {
                let start = Instant::now();
                let mut applied = 0usize;
                let mut stream = stream;
                for i in split.. {
                    let Some(t) = stream.next() else { break };
                    if handover.is_empty() {
                        // The sampler is free: the next one is this.
                        let _ = handover.try_send(t.clone());
                    }
                    graph.prefetch_upcoming(stream.upcoming());
                    graph.apply(&t);
                    applied += 1;
                    if i.is_multiple_of(65_536) {
                        bar.set_position(i as u64);
                    }
                }
                applied as f64 / start.elapsed().as_secs_f64()
            })
        };
        let mut busy = Vec::new();
        let mut sub = Subgraph::sized_for(graph);
        for t in arrivals.iter() {
            let start = Instant::now();
            sample_into(graph, &t, &config, &mut sub);
            busy.push(start.elapsed().as_secs_f64() * 1e6);
        }
        let rate = writer.join().expect("the writer thread does not panic");
        (busy, rate)
    });
    bar.finish_and_clear();
    let stats = graph.stats();

    // 3. Looking back: transactions spread over the first four fifths, each sampled as
    //    of its own time on the finished graph. Serving and training never do
    //    this; Explain of an old transaction would. Edges seen since t must be
    //    rolled back to t, so hubs cost more here.
    let (past, _) = sample_latencies(&graph, &past_targets, &config);

    // What the graph's process holds now, and how much of it is on huge pages (their
    // effect on these figures: docs/OPERATIONS.md).
    let memory = crate::host::ResidentMemory::of_this_process();

    // 4. Maintenance passes over the finished graph, each a full scan: the gauges'
    //    statistics (under shard read locks), then idle eviction with the default
    //    retention (under shard write locks, from the writer): the first pass removes
    //    everything idle since the start of the simulation, the second finds nothing
    //    left to remove, as a service's regular pass nearly does.
    let ms_since = |start: Instant| start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let _ = graph.stats();
    let stats_ms = ms_since(start);
    let start = Instant::now();
    let evicted = graph.evict_idle();
    let evict_first_ms = ms_since(start);
    let start = Instant::now();
    let _ = graph.evict_idle();
    let evict_again_ms = ms_since(start);

    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let (live, live_nodes, busy) = (sorted(live), sorted(live_nodes), sorted(busy));
    let report = json!({
        "transactions": n,
        "ingest_txn_per_s": ingest_txn_per_s,
        "nodes": stats.nodes.iter().sum::<u64>(),
        "edges": stats.edges,
        "bytes_per_edge": stats.edge_bytes as f64 / stats.edges.max(1) as f64,
        "node_bytes_per_edge": stats.node_bytes as f64 / stats.edges.max(1) as f64,
        "bytes_per_node": stats.node_bytes as f64 / stats.nodes.iter().sum::<u64>().max(1) as f64,
        "fanouts": config.fanouts,
        "strategy": if b.weighted { "weighted" } else { "most_recent" },
        "samples": live.len(),
        "mean_sampled_nodes": live_nodes.iter().sum::<f64>() / live_nodes.len().max(1) as f64,
        "sampled_nodes_p99": percentile(&live_nodes, 0.99),
        "sampled_nodes_max": live_nodes.last().copied().unwrap_or(0.0),
        "sample_p50_us": percentile(&live, 0.5),
        "sample_p99_us": percentile(&live, 0.99),
        "sample_max_us": live.last().copied().unwrap_or(0.0),
        "sample_p99_us_under_ingest": percentile(&busy, 0.99),
        "samples_under_ingest": busy.len(),
        "ingest_txn_per_s_while_sampling": concurrent_ingest,
        "sample_p50_us_looking_back": percentile(&past, 0.5),
        "sample_p99_us_looking_back": percentile(&past, 0.99),
        "samples_looking_back": past.len(),
        "stats_pass_ms": stats_ms,
        "evict_idle_first_pass_ms": evict_first_ms,
        "evict_idle_first_pass_edges": evicted.half_edges / 2,
        "evict_idle_pass_ms": evict_again_ms,
        "resident_bytes": memory.map(|m| m.resident_bytes),
        "huge_page_bytes": memory.map(|m| m.huge_page_bytes),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
