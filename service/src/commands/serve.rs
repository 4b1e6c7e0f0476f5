//! `fraudgraph serve`: the scoring service.
//!
//! Start-up, in order: configuration → model artifact (a directory, or the one embedded in
//! the binary) on the chosen device → the graph (from the snapshot when there is one) →
//! the pipeline threads → the gRPC server (health NOT_SERVING) and `/metrics` → warm-up
//! (Kafka caught up, or simulated history applied) → SERVING.
//!
//! Shutdown on SIGTERM or Ctrl-C: health NOT_SERVING, stop accepting and drain in-flight
//! calls, stop the Kafka consumer (committing what was applied), let score-on-ingest
//! decisions in flight finish, stop the pipeline, write the graph snapshot with the offsets
//! it reflects.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fraudgraph_models::artifact::{Artifact, GBDT_FILE, MANIFEST_FILE, WEIGHTS_FILE};
use fraudgraph_models::net::Precision;
use fraudgraph_proto::v1::fraud_scoring_server::FraudScoringServer;
use fraudgraph_proto::v1::stream_record::Record;
use fraudgraph_proto::v1::{ModelInfo, ModelKind, ScoreResponse, Transaction};
use fraudgraph_sampler::graph::{ApplyOutcome, Graph};
use fraudgraph_sampler::snapshot::Offsets;
use fraudgraph_simulator::{SimConfig, Simulation};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tonic_health::ServingStatus;

use super::device::{DeviceChoice, PrecisionChoice};
use crate::config::{ServeArgs, ServeConfig};
use crate::ingest::{DecisionProducer, Ingest};
use crate::labels::LabelBook;
use crate::live_graph::LiveGraph;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, ScoreError};
use crate::server::{ScoringService, ServerState};

/// The committed default artifact, embedded so the binary serves on its own.
const EMBEDDED: [(&str, &[u8]); 3] = [
    (
        MANIFEST_FILE,
        include_bytes!("../../../models/artifacts/default/manifest.json"),
    ),
    (
        WEIGHTS_FILE,
        include_bytes!("../../../models/artifacts/default/model.safetensors"),
    ),
    (
        GBDT_FILE,
        include_bytes!("../../../models/artifacts/default/gbdt.txt"),
    ),
];

/// Writes the embedded artifact into a directory of its own (named by its content hash, so
/// concurrent servers agree) and returns it.
pub(crate) fn embedded_artifact_dir() -> anyhow::Result<PathBuf> {
    let mut h = Sha256::new();
    for (_, bytes) in EMBEDDED {
        h.update(bytes);
    }
    let hash = hex::encode(h.finalize());
    let dir = std::env::temp_dir().join(format!("fraudgraph-artifact-{}", &hash[..16]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in EMBEDDED {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() == Some(bytes) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

fn device_choice(name: &str) -> DeviceChoice {
    match name {
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda,
        _ => DeviceChoice::Auto,
    }
}

/// `config.precision`, already validated.
fn precision_choice(name: &str) -> PrecisionChoice {
    match name {
        "f16" => PrecisionChoice::F16,
        "bf16" => PrecisionChoice::Bf16,
        _ => PrecisionChoice::F32,
    }
}

/// The artifact's version as answers report it: the fraudgraph version that trained it and
/// the first 12 hex digits of its weights' SHA-256.
pub(crate) fn model_version(artifact: &Artifact) -> String {
    let weights = artifact
        .manifest
        .files
        .get(WEIGHTS_FILE)
        .map_or("unknown", |h| &h[..h.len().min(12)]);
    format!("{}-{weights}", artifact.manifest.fraudgraph_version)
}

/// Runs the subcommand.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServeConfig::load(&args)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tokio-worker")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(config))
}

/// Everything a running server holds, for the periodic tasks and shutdown.
struct Running {
    config: ServeConfig,
    state: Arc<ServerState>,
    live: Arc<LiveGraph>,
    metrics: Arc<Metrics>,
    pipeline: Arc<Pipeline>,
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    if let Some(warning) = crate::host::HugePages::detect().warning() {
        tracing::warn!("{warning}");
    }

    // The model.
    let dir = match &config.artifact {
        Some(d) => d.clone(),
        None => embedded_artifact_dir()?,
    };
    let device = device_choice(&config.device).resolve()?;
    let precision = precision_choice(&config.precision).precision();
    if device == tch::Device::Cpu && precision != Precision::F32 {
        tracing::warn!(
            precision = precision.name(),
            "half precision on the CPU: it runs, but slower than f32; it is meant for CUDA"
        );
    }
    let artifact = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut artifact = Artifact::load(&dir, device)
                .with_context(|| format!("loading the model artifact {}", dir.display()))?;
            artifact.set_precision(precision);
            anyhow::Ok(artifact)
        })
        .await??
    };
    let version = model_version(&artifact);
    let models = vec![
        ModelInfo {
            kind: ModelKind::Gnn as i32,
            version: version.clone(),
            feature_schema_hash: artifact.manifest.feature_schema_hash.clone(),
            loaded: false,
        },
        ModelInfo {
            kind: ModelKind::Gbdt as i32,
            version: version.clone(),
            feature_schema_hash: artifact.manifest.feature_schema_hash.clone(),
            loaded: true,
        },
    ];
    let device_label = fraudgraph_models::runtime::device_name(device);
    metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &device_label, &version])
        .set(1);
    tracing::info!(
        artifact = %dir.display(),
        version = %version,
        device = %device_label,
        precision = precision.name(),
        "model loaded"
    );

    // The graph.
    let graph_config = artifact.graph_config();
    let (graph, resume, from_snapshot) = match &config.snapshot.path {
        Some(path) if path.exists() => {
            let path = path.clone();
            let started = Instant::now();
            let (graph, offsets) =
                tokio::task::spawn_blocking(move || Graph::read_snapshot(&path, &graph_config))
                    .await?
                    .context("reading the graph snapshot (move it away to rebuild from Kafka)")?;
            tracing::info!(
                edges = graph.stats().edges,
                seconds = started.elapsed().as_secs_f64(),
                "graph restored from snapshot"
            );
            (graph, offsets, true)
        }
        _ => (Graph::new(graph_config), Offsets::new(), false),
    };
    let live = Arc::new(LiveGraph::new(graph, metrics.clone()));
    let labels = Arc::new(LabelBook::new(
        config.caches.label_transactions,
        config.caches.label_entities,
    ));

    let pipeline = Arc::new(Pipeline::start(
        artifact,
        version,
        live.clone(),
        labels.clone(),
        &config.pipeline,
        &config.decisions,
        metrics.clone(),
    )?);
    let state = Arc::new(ServerState::new(
        pipeline.clone(),
        live.clone(),
        labels.clone(),
        metrics.clone(),
        config.limits.clone(),
        &config.caches,
        device_label,
        models,
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    report_readiness(&health, &state, &metrics, false).await;

    // Shutdown signal, shared by the servers and the periodic tasks. Health and Status say
    // NOT_SERVING / not ready first, so that whoever watches them stops sending, then the
    // servers stop accepting and drain the calls in flight (the pipeline still runs).
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let (health, state, metrics) = (health.clone(), state.clone(), metrics.clone());
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
            report_readiness(&health, &state, &metrics, false).await;
            let _ = stop_tx.send(true);
        });
    }

    let grpc = start_grpc(&config, state.clone(), health_service, stop_rx.clone()).await?;
    let http = start_metrics(config.metrics_listen, metrics.clone(), stop_rx.clone()).await?;

    // Warm up.
    let kafka = !config.kafka.brokers.is_empty();
    let mut decisions_thread = None;
    if kafka {
        let (tx, rx) = if config.kafka.score_on_ingest {
            let (tx, rx) = crossbeam_channel::bounded::<Transaction>(10_000);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // Connecting waits for the brokers (up to 10 s): a blocking thread, not a worker.
        let ingest = {
            let (kafka, live, labels, metrics) = (
                config.kafka.clone(),
                live.clone(),
                labels.clone(),
                metrics.clone(),
            );
            tokio::task::spawn_blocking(move || {
                Ingest::start(&kafka, live, labels, metrics, &resume, tx)
            })
            .await??
        };
        if let Some(rx) = rx {
            let (kafka, m) = (config.kafka.clone(), metrics.clone());
            let producer =
                tokio::task::spawn_blocking(move || DecisionProducer::connect(&kafka, m)).await??;
            decisions_thread = Some(start_decisions(
                rx,
                producer,
                pipeline.clone(),
                Duration::from_millis(config.kafka.score_on_ingest_deadline_ms),
                metrics.clone(),
            ));
        }
        *state.ingest.lock() = Some(ingest);
        let started = Instant::now();
        let mut last_log = Instant::now();
        loop {
            if *stop_rx.borrow() {
                break;
            }
            let caught_up = state.ingest.lock().as_ref().is_some_and(Ingest::caught_up);
            if caught_up {
                break;
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                let lag = state
                    .ingest
                    .lock()
                    .as_ref()
                    .map_or(0, |i| i.status().total_lag);
                tracing::info!(lag, "catching up with Kafka");
                last_log = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "caught up with Kafka"
        );
    } else if !from_snapshot && config.warm_transactions > 0 {
        let (live, labels, cfg) = (live.clone(), labels.clone(), config.clone());
        tokio::task::spawn_blocking(move || warm_from_simulation(&cfg, &live, &labels)).await??;
    }
    metrics.observe_graph(&live.graph().stats());

    if !*stop_rx.borrow() {
        report_readiness(&health, &state, &metrics, true).await;
        print_banner(&config, grpc.local, http.local);
    }

    let running = Running {
        config: config.clone(),
        state: state.clone(),
        live: live.clone(),
        metrics: metrics.clone(),
        pipeline: pipeline.clone(),
    };
    let maintenance = tokio::spawn(maintain(
        running.state.clone(),
        running.live.clone(),
        running.metrics.clone(),
        running.config.clone(),
        stop_rx.clone(),
    ));

    // Run until the signal; the gRPC server then drains in-flight calls. NOT_SERVING once
    // more: a signal during warm-up can race the SERVING set just above.
    grpc.task.await??;
    report_readiness(&health, &state, &metrics, false).await;
    let _ = maintenance.await;
    let _ = http.task.await;
    shutdown(running, decisions_thread).await
}

/// Says whether the replica serves, everywhere that is read: gRPC health (the whole server
/// and the scoring service), Status's `ready`, and the `fraudgraph_ready` gauge.
async fn report_readiness(
    health: &tonic_health::server::HealthReporter,
    state: &ServerState,
    metrics: &Metrics,
    serving: bool,
) {
    if serving {
        health
            .set_serving::<FraudScoringServer<ScoringService>>()
            .await;
        health.set_service_status("", ServingStatus::Serving).await;
    } else {
        health
            .set_not_serving::<FraudScoringServer<ScoringService>>()
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
    state.ready.store(serving, Ordering::Release);
    metrics.ready.set(i64::from(serving));
}

/// Stops the consumer, the score-on-ingest decisions and the pipeline, in that order, and
/// writes the final snapshot.
async fn shutdown(
    running: Running,
    decisions: Option<std::thread::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let Running {
        config,
        state,
        live,
        metrics,
        pipeline,
    } = running;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let ingest = state.ingest.lock().take();
        let offsets = match ingest {
            Some(i) => i.shutdown().context("stopping the Kafka consumer")?,
            None => Offsets::new(),
        };
        // The consumer has stopped, so no new decisions; those in flight still need the
        // pipeline, which stops after them.
        if let Some(d) = decisions {
            let _ = d.join();
        }
        pipeline.shutdown();
        if let Some(path) = &config.snapshot.path {
            write_snapshot(&live, path, || offsets, &metrics)?;
        }
        tracing::info!("stopped");
        Ok(())
    })
    .await?
}

/// Writes the graph's snapshot with the offsets `offsets` gives, both read under the
/// writer lock ([`LiveGraph::snapshot_bytes`]); the file is written after it.
fn write_snapshot(
    live: &LiveGraph,
    path: &Path,
    offsets: impl FnOnce() -> Offsets,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let bytes = live.snapshot_bytes(offsets);
    match fraudgraph_sampler::snapshot::write_snapshot_bytes(path, &bytes) {
        Ok(()) => {
            metrics.snapshots.with_label_values(&["ok"]).inc();
            tracing::info!(
                path = %path.display(),
                seconds = started.elapsed().as_secs_f64(),
                "graph snapshot written"
            );
            Ok(())
        }
        Err(e) => {
            metrics.snapshots.with_label_values(&["error"]).inc();
            Err(e).context("writing the graph snapshot")
        }
    }
}

/// Periodic work: graph gauges every 5 s and snapshots every `snapshot.interval_s`.
/// (Idle eviction is not periodic: it comes with the applies, by event time;
/// `crate::live_graph`.)
async fn maintain(
    state: Arc<ServerState>,
    live: Arc<LiveGraph>,
    metrics: Arc<Metrics>,
    config: ServeConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_snapshot = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (live, metrics, state) = (live.clone(), metrics.clone(), state.clone());
        let snapshot = config.snapshot.path.clone().filter(|_| {
            config.snapshot.interval_s > 0
                && last_snapshot.elapsed() >= Duration::from_secs(config.snapshot.interval_s)
        });
        if snapshot.is_some() {
            last_snapshot = Instant::now();
        }
        let _ = tokio::task::spawn_blocking(move || {
            live.refresh_gauges();
            let (credited, unknown) = state.labels.totals();
            metrics
                .labels
                .with_label_values(&["credited"])
                .set(credited as i64);
            metrics
                .labels
                .with_label_values(&["unknown"])
                .set(unknown as i64);
            if let Some(path) = snapshot {
                // The offsets under the writer lock, with the graph: it then holds every
                // transaction they cover, whole, and a replay from them re-applies the rest
                // idempotently.
                let offsets = || {
                    state
                        .ingest
                        .lock()
                        .as_ref()
                        .map(Ingest::applied_offsets)
                        .unwrap_or_default()
                };
                if let Err(e) = write_snapshot(&live, &path, offsets, &metrics) {
                    tracing::error!(error = %format!("{e:#}"), "periodic snapshot failed");
                }
            }
        })
        .await;
    }
}

/// Applies the first `warm_transactions` of the configured simulation (and their labels).
pub(crate) fn warm_from_simulation(
    config: &ServeConfig,
    live: &LiveGraph,
    labels: &LabelBook,
) -> anyhow::Result<()> {
    let started = Instant::now();
    tracing::info!(
        transactions = config.warm_transactions,
        seed = config.sim_seed,
        "warming the graph from simulated history"
    );
    let sim = Simulation::generate(&SimConfig {
        transactions: config.sim_transactions,
        seed: config.sim_seed,
        ..SimConfig::default()
    })
    .context("simulating the warm-up history")?;
    let mut applied = 0u64;
    let mut last_time = i64::MIN;
    for record in sim.records() {
        match record.record {
            Some(Record::Transaction(t)) => {
                if applied >= config.warm_transactions {
                    break;
                }
                last_time = t.event_time_ms;
                if live.apply(&t) == ApplyOutcome::Applied {
                    labels.remember(&t);
                }
                applied += 1;
                if applied.is_multiple_of(50_000) {
                    tracing::info!(applied, "warming");
                }
            }
            Some(Record::Label(l)) if l.reported_at_ms <= last_time => {
                labels.record(&l);
            }
            _ => {}
        }
    }
    live.refresh_gauges();
    tracing::info!(
        applied,
        edges = live.graph().stats().edges,
        seconds = started.elapsed().as_secs_f64(),
        "graph warm"
    );
    Ok(())
}

/// How long a score on ingest refused for a full sampler queue waits before it asks again.
const DECISION_RETRY: Duration = Duration::from_millis(20);

/// Counts a transaction left without a decision for `reason`; true when it should be
/// logged (the first and then every power of two: a flood cannot flood the log).
fn decision_dropped(metrics: &Metrics, reason: &str) -> bool {
    let c = metrics.decisions_dropped.with_label_values(&[reason]);
    c.inc();
    c.get().is_power_of_two()
}

/// Scores consumed transactions and writes decisions (score-on-ingest), off the applier.
/// Each score has `budget` (`kafka.score_on_ingest_deadline_ms`): nobody waits on it, so
/// a score refused because the sampler queue is full (gateways' calls, a replay's backlog)
/// asks again until its budget is spent. Scores run as tasks on the runtime (at most 256
/// at once); producing a decision can wait on librdkafka's queue, so a thread of its own
/// (`decisions-producer`) does it, and a score's slot is freed once its decision is
/// queued. A transaction that still gets no score, or whose decision the producer refuses,
/// is counted in `fraudgraph_decisions_dropped_total`. The returned thread ends once every
/// decision is produced and flushed.
fn start_decisions(
    rx: crossbeam_channel::Receiver<Transaction>,
    producer: DecisionProducer,
    pipeline: Arc<Pipeline>,
    budget: Duration,
    metrics: Arc<Metrics>,
) -> std::thread::JoinHandle<()> {
    type Decided = (String, ScoreResponse, tokio::sync::OwnedSemaphorePermit);
    // Never holds more than the 256 permits allow.
    let (decided_tx, decided_rx) = crossbeam_channel::unbounded::<Decided>();
    let producing = {
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("decisions-producer".into())
            .spawn(move || {
                for (account, response, permit) in decided_rx {
                    if let Err(e) = producer.send(&account, &response)
                        && decision_dropped(&metrics, "not_produced")
                    {
                        tracing::warn!(error = %format!("{e:#}"), "decision not produced");
                    }
                    drop(permit);
                }
                let _ = producer.flush(Duration::from_secs(10));
            })
            .expect("spawning the decisions producer thread")
    };
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("decisions".into())
        .spawn(move || {
            let limit = Arc::new(tokio::sync::Semaphore::new(256));
            while let Ok(txn) = rx.recv() {
                let Ok(permit) = handle.block_on(limit.clone().acquire_owned()) else {
                    break;
                };
                let (pipeline, decided, metrics) =
                    (pipeline.clone(), decided_tx.clone(), metrics.clone());
                handle.spawn(async move {
                    let account = txn.account_id.clone();
                    let deadline = Instant::now() + budget;
                    let scored = loop {
                        match pipeline.score(txn.clone(), false, deadline, false).await {
                            Err(ScoreError::Overloaded(_))
                                if Instant::now() + DECISION_RETRY < deadline =>
                            {
                                tokio::time::sleep(DECISION_RETRY).await;
                            }
                            other => break other,
                        }
                    };
                    match scored {
                        // Unbounded and alive until every task has ended: cannot fail.
                        Ok(scored) => {
                            let _ = decided.send((account, scored.response, permit));
                        }
                        Err(e) => {
                            if decision_dropped(&metrics, "no_score") {
                                tracing::warn!(error = %e, "score-on-ingest failed");
                            }
                        }
                    }
                });
            }
            // The producer thread ends when the last task has handed over its decision.
            drop(decided_tx);
            let _ = producing.join();
        })
        .expect("spawning the decisions thread")
}

/// A started server: its bound address and its task.
struct Started<T> {
    local: SocketAddr,
    task: tokio::task::JoinHandle<T>,
}

async fn start_grpc(
    config: &ServeConfig,
    state: Arc<ServerState>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Started<anyhow::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the gRPC listener on {}", config.listen))?;
    let local = listener.local_addr()?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fraudgraph_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building gRPC reflection")?;
    let scoring = FraudScoringServer::new(ScoringService::new(state))
        .max_decoding_message_size(config.limits.max_message_bytes)
        .max_encoding_message_size(config.limits.max_message_bytes);
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(config.limits.max_concurrent_streams);
    if let Some(tls) = &config.tls {
        let cert = std::fs::read(&tls.cert)
            .with_context(|| format!("tls.cert: reading {}", tls.cert.display()))?;
        let key = std::fs::read(&tls.key)
            .with_context(|| format!("tls.key: reading {}", tls.key.display()))?;
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .context("tls: invalid certificate or key")?;
    }
    let router = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(scoring);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .context("the gRPC server failed")
    });
    Ok(Started { local, task })
}

async fn start_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Started<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics server failed");
        }
    });
    Ok(Started { local, task })
}

fn print_banner(config: &ServeConfig, grpc: SocketAddr, metrics: SocketAddr) {
    let plaintext = if config.tls.is_some() {
        ""
    } else {
        "-plaintext "
    };
    eprintln!(
        "\nfraudgraph is serving on {grpc} (gRPC) with metrics on http://{metrics}/metrics\n\
         Try:\n  \
         grpcurl {plaintext}{grpc} list\n  \
         grpcurl {plaintext}-d '{{\"transaction\":{{\"txn_id\":\"t-1\",\"event_time_ms\":\"1767225600000\",\
         \"account_id\":\"acc-1\",\"merchant_id\":\"m-1\",\"amount_minor\":\"4599\",\"currency\":\"EUR\",\
         \"mcc\":5999,\"channel\":\"CHANNEL_ECOMMERCE\",\"country\":\"DE\"}}}}' {grpc} fraudgraph.v1.FraudScoring/Score\n  \
         fraudgraph bench serve --target {grpc} --rate 500 --duration 30 --json\n"
    );
}

/// Resolves on SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
