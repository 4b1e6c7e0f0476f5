//! `fraudgraph`: the real-time fraud scoring service and its operational
//! subcommands.
//!
//! - `serve`: the scoring service (gRPC, Kafka, the pipeline, metrics).
//! - `doctor`: checks libtorch, CUDA, LightGBM and (optionally) the Kafka broker.
//! - `simulate`: writes the simulated transaction world to a file or a topic.
//! - `bench`: the project's own benchmarks (`bench sampler`).
//! - `eval`: a model artifact on the test period of a labelled stream, GNN vs GBDT.
//!
//! Each subcommand lives in its own module under [`commands`]; this file only
//! parses the command line, sets up logging and dispatches.

mod commands;
mod config;
mod explain;
mod host;
mod ingest;
mod kafka;
mod labels;
mod live_graph;
mod loadgen;
mod metrics;
mod pipeline;
mod server;

use clap::{Parser, Subcommand};

/// Real-time fraud detection on a live transaction graph.
#[derive(Parser)]
#[command(name = "fraudgraph", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve fraud scores over gRPC (the scoring service).
    Serve(Box<config::ServeArgs>),
    /// Check the runtime: libtorch version, CUDA, LightGBM, Kafka.
    Doctor(commands::doctor::DoctorArgs),
    /// Generate the simulated payment stream to a file or a Kafka topic.
    Simulate(commands::simulate::SimulateArgs),
    /// Benchmarks: `bench sampler` (graph ingest and 3-hop sampling).
    Bench(commands::bench::BenchArgs),
    /// Train Hybrid-FraudNet and the LightGBM fallback into a model artifact.
    Train(commands::train::TrainArgs),
    /// Evaluate a model artifact on the test period of a labelled stream file.
    Eval(commands::eval::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FRAUDGRAPH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => commands::serve::run(*args),
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Simulate(args) => commands::simulate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
    }
}
