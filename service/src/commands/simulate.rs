//! `fraudgraph simulate`: the simulated payment world to a stream file or to
//! Kafka, with a progress bar and a summary at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use fraudgraph_proto::v1::stream_record::Record;
use fraudgraph_proto::{PayloadFormat, codec, stream_file::StreamWriter, topics};
use fraudgraph_simulator::{SimConfig, Simulation, Summary};
use indicatif::{ProgressBar, ProgressStyle};

use crate::kafka::{self, RecordProducer};

/// Payload encoding on Kafka.
#[derive(Clone, Copy, ValueEnum)]
pub enum KafkaFormat {
    /// Protobuf binary (`application/x-protobuf`).
    Protobuf,
    /// Canonical protobuf JSON (`application/json`).
    Json,
}

/// Arguments of `fraudgraph simulate`.
#[derive(Args)]
pub struct SimulateArgs {
    /// Transactions to generate.
    #[arg(long, default_value_t = 100_000)]
    transactions: u64,
    /// Seed; the same seed and config give a byte-identical stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file: `.jsonl` (JSON lines) or `.pb` (length-delimited protobuf).
    #[arg(
        long,
        conflicts_with = "kafka_brokers",
        required_unless_present = "kafka_brokers"
    )]
    out: Option<PathBuf>,
    /// Produce to Kafka at these brokers (host:port,...) instead of a file.
    #[arg(long, env = "FRAUDGRAPH_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Transactions topic (keyed by account_id).
    #[arg(long, default_value = topics::TRANSACTIONS)]
    topic: String,
    /// Labels topic (keyed by txn_id).
    #[arg(long, default_value = topics::LABELS)]
    labels_topic: String,
    /// Payload encoding on Kafka.
    #[arg(long, value_enum, default_value_t = KafkaFormat::Protobuf)]
    format: KafkaFormat,
    /// Partitions of topics this command creates.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Fraction of transactions that are fraud (overrides the config file).
    #[arg(long)]
    fraud_rate: Option<f64>,
    /// Length of the simulated period in days (overrides the config file).
    #[arg(long)]
    days: Option<u32>,
    /// JSON file with any SimConfig fields (difficulty knobs, typology mix);
    /// see docs/SIMULATOR.md.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
}

/// Where records go.
enum Sink {
    File(StreamWriter),
    Kafka {
        producer: RecordProducer,
        format: PayloadFormat,
        topic: String,
        labels_topic: String,
    },
}

impl Sink {
    fn write(&mut self, record: &fraudgraph_proto::v1::StreamRecord) -> anyhow::Result<()> {
        match self {
            Sink::File(writer) => Ok(writer.write(record)?),
            Sink::Kafka {
                producer,
                format,
                topic,
                labels_topic,
            } => match record.record.as_ref() {
                Some(Record::Transaction(t)) => producer.send(
                    topic,
                    codec::transaction_key(t),
                    &codec::encode(t, *format),
                    format.content_type(),
                ),
                Some(Record::Label(l)) => producer.send(
                    labels_topic,
                    l.txn_id.as_bytes(),
                    &codec::encode(l, *format),
                    format.content_type(),
                ),
                None => Ok(()),
            },
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::File(writer) => writer.finish().map(drop).map_err(Into::into),
            Sink::Kafka { producer, .. } => producer.finish(Duration::from_secs(120)).map(drop),
        }
    }
}

fn load_config(args: &SimulateArgs) -> anyhow::Result<SimConfig> {
    let mut config: SimConfig = super::read_json(args.config.as_deref(), "simulator config")?;
    config.transactions = args.transactions;
    config.seed = args.seed;
    if let Some(rate) = args.fraud_rate {
        config.fraud_rate = rate;
    }
    if let Some(days) = args.days {
        config.days = days;
    }
    Ok(config)
}

/// Runs the subcommand.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let started = Instant::now();
    let sim = Simulation::generate(&config).context("invalid simulation config")?;
    let generated = started.elapsed();

    let mut sink = match (&args.out, &args.kafka_brokers) {
        (Some(path), _) => Sink::File(StreamWriter::create(path)?),
        (None, Some(brokers)) => {
            if args.partitions < 1 {
                bail!("--partitions must be at least 1");
            }
            kafka::ensure_topics(brokers, &[&args.topic, &args.labels_topic], args.partitions)?;
            Sink::Kafka {
                producer: RecordProducer::connect(brokers)?,
                format: match args.format {
                    KafkaFormat::Protobuf => PayloadFormat::Protobuf,
                    KafkaFormat::Json => PayloadFormat::Json,
                },
                topic: args.topic.clone(),
                labels_topic: args.labels_topic.clone(),
            }
        }
        (None, None) => bail!("give --out PATH or --kafka-brokers BROKERS"),
    };

    let bar = ProgressBar::new(sim.len()).with_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {human_pos}/{human_len} records, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("simulate");
    let mut written = 0u64;
    for record in sim.records() {
        sink.write(&record)?;
        written += 1;
        if written.is_multiple_of(8192) {
            bar.set_position(written);
            // Without a terminal the bar is hidden: log every tenth instead.
            let tenth = (sim.len() / 10).max(1);
            if bar.is_hidden() && written / tenth != (written - 8192) / tenth {
                tracing::info!("simulate: {written}/{} records", sim.len());
            }
        }
    }
    bar.finish_and_clear();
    sink.finish()?;
    let elapsed = started.elapsed();

    let destination = match (&args.out, &args.kafka_brokers) {
        (Some(path), _) => path.display().to_string(),
        _ => format!("kafka topics {} and {}", args.topic, args.labels_topic),
    };
    print_summary(sim.summary(), &destination, written, generated, elapsed);
    if let Some(path) = &args.summary {
        let json = serde_json::json!({
            "config": config,
            "summary": sim.summary(),
            "records": written,
            "seconds": elapsed.as_secs_f64(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_summary(
    s: &Summary,
    destination: &str,
    records: u64,
    generated: Duration,
    total: Duration,
) {
    let rate = s.transactions as f64 / total.as_secs_f64().max(1e-9);
    eprintln!(
        "wrote {records} records to {destination} in {total:.2?} ({rate:.0} txn/s; generation {generated:.2?})"
    );
    eprintln!(
        "  transactions {:>10}   fraud {:>8} ({:.2}%)   labels {:>8}",
        s.transactions,
        s.fraud,
        100.0 * s.fraud as f64 / s.transactions.max(1) as f64,
        s.labels
    );
    for (typology, n) in &s.fraud_by_typology {
        eprintln!("    {typology:<28} {n:>8}");
    }
    eprintln!(
        "  entities: accounts {}  devices {}  ips {}  merchants {}  cards {}",
        s.accounts, s.devices, s.ips, s.merchants, s.cards
    );
    eprintln!(
        "  time: transactions {} .. {} (Unix ms), last label {}",
        s.first_event_ms, s.last_event_ms, s.last_label_ms
    );
}
