//! The open-loop gRPC load generator behind `fraudgraph bench serve`.
//!
//! Open loop: call `i` is due at `start + i / rate` and starts on its own task when it is
//! due, whether or not earlier calls have answered. A slow server therefore cannot slow the
//! generator down and hide its own queueing (coordinated omission). Latency is measured
//! from the due time, which is what a caller arriving on schedule experiences, and also
//! from the moment the call was actually sent, which is the service's own latency; the gap
//! between the two (`send_lag`) shows whether the generator kept up.
//!
//! The schedule is kept by a blocking thread that sleeps with the OS's fine-grained sleep
//! and hands each call to the async runtime when due. Calls go round-robin over a few
//! HTTP/2 connections. While they run, an optional `grpc.health.v1.Health/Check` probe
//! runs at its own fixed rate on a connection of its own: its latency (from its send)
//! shows whether the server's async side stays responsive while inference is saturated.
//! Calls due during the warm-up are made but not counted.
//! Latencies go into HDR histograms (microseconds, 3 significant figures) and come out as
//! one [`Summary`].

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fraudgraph_proto::v1::fraud_scoring_client::FraudScoringClient;
use fraudgraph_proto::v1::{
    FallbackReason, ModelKind, ScoreBatchRequest, ScoreRequest, ScoreResponse, Transaction,
};
use fraudgraph_simulator::{SimConfig, Simulation};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long the client waits past a call's deadline before it gives up on the call and
/// counts it as `DEADLINE_EXCEEDED`. The grace lets late answers be seen and counted as
/// deadline misses instead of disappearing.
pub const CLIENT_GRACE: Duration = Duration::from_secs(1);

/// How long connecting to the target may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest latency the histograms hold, in microseconds (larger values saturate).
const HIGHEST_US: u64 = 120_000_000;

/// Errors-by-code key for a ScoreBatch answer whose item count differs from the request's.
const MALFORMED: &str = "MALFORMED_RESPONSE";

/// Why a load run could not start or finish.
#[derive(Debug)]
pub enum LoadError {
    /// A setting is out of range; the message names it.
    Config(String),
    /// The target is not a usable address.
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered at the target.
    Unreachable {
        /// The target as given.
        target: String,
        /// The connection error, with its causes.
        reason: String,
    },
    /// The target's health service did not report SERVING in time.
    NotServing {
        /// The target as given.
        target: String,
        /// How long the generator waited.
        waited: Duration,
        /// The last answer (a serving status or an error code).
        last: String,
    },
    /// One of the generator's own tasks failed (a bug in the generator).
    Task(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(message) => write!(f, "{message}"),
            LoadError::InvalidTarget { target, reason } => {
                write!(f, "--target {target}: not a usable gRPC address: {reason}")
            }
            LoadError::Unreachable { target, reason } => write!(
                f,
                "cannot connect to {target}: {reason} (is `fraudgraph serve` listening there?)"
            ),
            LoadError::NotServing {
                target,
                waited,
                last,
            } => write!(
                f,
                "{target} did not report SERVING within {:.1} s (last answer: {last})",
                waited.as_secs_f64()
            ),
            LoadError::Task(message) => write!(f, "load generator task failed: {message}"),
        }
    }
}

impl Error for LoadError {}

/// An error and its causes, `: `-separated (tonic's own messages are terse).
fn with_causes(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The canonical name of a gRPC status code, as in the gRPC spec (`DEADLINE_EXCEEDED`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Which scoring call the generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// `Score`, one transaction per call.
    Score,
    /// `ScoreBatch` with this many transactions per call; every item counts as a request.
    Batch(usize),
}

impl Rpc {
    /// Transactions per call.
    pub fn items(self) -> usize {
        match self {
            Rpc::Score => 1,
            Rpc::Batch(size) => size,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Rpc::Score => "score",
            Rpc::Batch(_) => "batch",
        }
    }
}

/// What to send and how fast.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Calls per second (for [`Rpc::Batch`], each carries several transactions).
    pub rate: f64,
    /// Calls due before this much time has passed are made but not counted.
    pub warmup: Duration,
    /// The measured window after the warm-up.
    pub duration: Duration,
    /// Each call's deadline, sent as its gRPC timeout.
    pub deadline: Duration,
    /// Score or ScoreBatch.
    pub rpc: Rpc,
    /// Sets `apply_to_graph` on every request.
    pub apply_to_graph: bool,
    /// Health/Check calls per second on their own connection; 0 disables the probe.
    pub health_rate: f64,
    /// The service name the health probe asks about (`""`: the whole server).
    pub health_service: String,
    /// Prints a progress line on stderr once a second.
    pub progress: bool,
}

impl LoadConfig {
    /// Checks that every setting is in range; the error names the flag.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |message: String| Err(LoadError::Config(message));
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad(format!(
                "--rate must be a positive number, got {}",
                self.rate
            ));
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive".into());
        }
        if self.deadline.is_zero() {
            return bad("--deadline-ms must be at least 1".into());
        }
        if self.rpc.items() == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if !(self.health_rate.is_finite() && self.health_rate >= 0.0) {
            return bad(format!(
                "--health-rate must be 0 or a positive number, got {}",
                self.health_rate
            ));
        }
        Ok(())
    }

    /// The call schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(self.rate, self.warmup, self.duration)
    }

    /// Transactions the whole run sends, warm-up included.
    pub fn transactions_needed(&self) -> u64 {
        self.schedule().total_calls() * self.rpc.items() as u64
    }
}

/// A fixed-rate schedule: call `i` is due `i / rate` seconds after the start; calls due
/// before the warm-up ends are not measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rate: f64,
    warmup_calls: u64,
    total_calls: u64,
}

/// The number of calls due strictly before `seconds` at `rate` (tolerant of rounding, so
/// 0.1 s at 30/s is 3 calls, not 4).
fn calls_before(seconds: f64, rate: f64) -> u64 {
    (seconds * rate - 1e-9).ceil().max(0.0) as u64
}

impl Schedule {
    /// `rate` calls per second over `warmup + duration`.
    pub fn new(rate: f64, warmup: Duration, duration: Duration) -> Schedule {
        Schedule {
            rate,
            warmup_calls: calls_before(warmup.as_secs_f64(), rate),
            total_calls: calls_before((warmup + duration).as_secs_f64(), rate),
        }
    }

    /// When call `i` is due, after the start.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Whether call `i` is due in the measured window.
    pub fn is_measured(&self, i: u64) -> bool {
        i >= self.warmup_calls
    }

    /// Calls in the whole run.
    pub fn total_calls(&self) -> u64 {
        self.total_calls
    }

    /// Calls in the measured window.
    pub fn measured_calls(&self) -> u64 {
        self.total_calls - self.warmup_calls
    }
}

/// Up to `count` transactions of the simulated stream of `stream_len` transactions with
/// `seed`, the ones after its first `skip`, in stream order; fewer when the stream ends
/// first. The simulator spreads a stream over its whole period, so only streams of the
/// same length and seed share a prefix: use the server's.
pub fn simulated_transactions(
    seed: u64,
    skip: u64,
    count: u64,
    stream_len: u64,
) -> Result<Vec<Transaction>, LoadError> {
    if skip >= stream_len {
        return Err(LoadError::Config(format!(
            "--skip {skip} leaves nothing to send from a stream of --sim-transactions {stream_len}"
        )));
    }
    let config = SimConfig {
        transactions: stream_len,
        seed,
        ..SimConfig::default()
    };
    let simulation =
        Simulation::generate(&config).map_err(|e| LoadError::Config(format!("simulator: {e}")))?;
    Ok(simulation
        .transactions()
        .skip(skip as usize)
        .take(count as usize)
        .collect())
}

/// Open connections to one fraudgraph server: several for scoring, one for health.
pub struct Targets {
    target: String,
    scoring: Vec<Channel>,
    health: Channel,
}

impl Targets {
    /// Opens `connections` HTTP/2 connections for scoring and one for the health probe to
    /// `target` (`host:port` or `http://host:port`). Fails fast, naming the address, when
    /// nothing answers there.
    pub async fn connect(target: &str, connections: usize) -> Result<Targets, LoadError> {
        if connections == 0 {
            return Err(LoadError::Config("--connections must be at least 1".into()));
        }
        let uri = if target.contains("://") {
            target.to_owned()
        } else {
            format!("http://{target}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| LoadError::InvalidTarget {
                target: target.to_owned(),
                reason: with_causes(&e),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let mut channels = Vec::with_capacity(connections + 1);
        for _ in 0..=connections {
            // Each `connect` opens a connection of its own.
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| LoadError::Unreachable {
                    target: target.to_owned(),
                    reason: with_causes(&e),
                })?;
            channels.push(channel);
        }
        let health = channels.pop().expect("connections + 1 channels");
        Ok(Targets {
            target: target.to_owned(),
            scoring: channels,
            health,
        })
    }

    /// Polls Health/Check for `service` until it reports SERVING, for at most `limit`.
    /// Returns false (and waits no longer) when the server has no health service.
    pub async fn wait_until_serving(
        &self,
        service: &str,
        limit: Duration,
    ) -> Result<bool, LoadError> {
        let started = Instant::now();
        let mut client = HealthClient::new(self.health.clone());
        loop {
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: service.to_owned(),
            });
            request.set_timeout(Duration::from_secs(1));
            let last = match client.check(request).await {
                Ok(response) => {
                    let status = response.into_inner().status;
                    if status == ServingStatus::Serving as i32 {
                        return Ok(true);
                    }
                    ServingStatus::try_from(status)
                        .map_or_else(|_| format!("status {status}"), |s| s.as_str_name().into())
                }
                Err(status) if status.code() == Code::Unimplemented => return Ok(false),
                Err(status) => code_name(status.code()).to_owned(),
            };
            if started.elapsed() >= limit {
                return Err(LoadError::NotServing {
                    target: self.target.clone(),
                    waited: started.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The result of a load run. Latencies are in milliseconds and `null` when nothing was
/// measured; counts cover the measured window only. For `ScoreBatch`, counts are of
/// transactions (each item of a call) and latencies are per call.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The address the load went to.
    pub target: String,
    /// `score` or `batch`.
    pub rpc: &'static str,
    /// Transactions per call.
    pub batch_size: usize,
    /// Transactions per second asked for (calls per second times the batch size).
    pub requested_rps: f64,
    /// Transactions answered OK per second of the measured window.
    pub achieved_rps: f64,
    /// The measured window, seconds.
    pub duration_s: f64,
    /// The discarded warm-up before it, seconds.
    pub warmup_s: f64,
    /// Scoring connections (HTTP/2), used round-robin.
    pub connections: usize,
    /// Each call's deadline (its gRPC timeout), milliseconds.
    pub deadline_ms: f64,
    /// Whether requests asked the server to apply their transaction to the graph.
    pub apply_to_graph: bool,
    /// Calls due in the measured window.
    pub calls: u64,
    /// Transactions sent in the measured window.
    pub sent: u64,
    /// Transactions answered OK.
    pub ok: u64,
    /// Transactions whose call failed.
    pub errors: u64,
    /// Failed transactions by gRPC code name (`DEADLINE_EXCEEDED` also counts calls the
    /// client gave up on [`CLIENT_GRACE`] after their deadline; `MALFORMED_RESPONSE`
    /// counts a ScoreBatch answer with the wrong number of items).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Median latency from the due time, OK calls.
    pub p50_ms: Option<f64>,
    /// 90th percentile from the due time.
    pub p90_ms: Option<f64>,
    /// 99th percentile from the due time.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile from the due time.
    pub p999_ms: Option<f64>,
    /// Largest latency from the due time.
    pub max_ms: Option<f64>,
    /// Mean latency from the due time.
    pub mean_ms: Option<f64>,
    /// Median latency from the actual send (the service alone).
    pub service_p50_ms: Option<f64>,
    /// 99th percentile from the actual send.
    pub service_p99_ms: Option<f64>,
    /// Largest latency from the actual send.
    pub service_max_ms: Option<f64>,
    /// 99th percentile of how late calls were sent after their due time (the generator's
    /// own lag; large values mean it could not keep the rate).
    pub send_lag_p99_ms: Option<f64>,
    /// Largest send lag.
    pub send_lag_max_ms: Option<f64>,
    /// Most calls outstanding at once (whole run).
    pub max_in_flight: u64,
    /// Fraction of OK transactions the GNN scored.
    pub gnn_share: Option<f64>,
    /// OK transactions by the model that scored them (`GNN`, `GBDT`).
    pub models: BTreeMap<String, u64>,
    /// OK transactions the fallback answered, by reason (`TIMEOUT`, `OVERLOAD`, ...).
    pub fallbacks: BTreeMap<String, u64>,
    /// OK transactions answered later than the deadline after their send.
    pub deadline_misses: u64,
    /// OK transactions answered later than the deadline after their due time.
    pub deadline_misses_from_due: u64,
    /// Health/Check calls per second asked for (0: no probe).
    pub health_rate: f64,
    /// Health checks due in the measured window.
    pub health_checks: u64,
    /// Median health check latency (from its send: the server's responsiveness).
    pub health_p50_ms: Option<f64>,
    /// 99th percentile health check latency from its send.
    pub health_p99_ms: Option<f64>,
    /// Largest health check latency from its send.
    pub health_max_ms: Option<f64>,
    /// Health checks that failed.
    pub health_errors: u64,
    /// Health checks answered with a status other than SERVING.
    pub health_not_serving: u64,
}

/// What one scoring call or health check produced.
#[derive(Debug)]
enum Event {
    Call {
        measured: bool,
        items: u64,
        from_due_us: u64,
        from_send_us: u64,
        send_lag_us: u64,
        /// (model, fallback reason) of each item, or the failure's code name.
        result: Result<Vec<(i32, i32)>, &'static str>,
    },
    Health {
        measured: bool,
        from_send_us: u64,
        /// Whether the answer was SERVING, or the failure's code name.
        result: Result<bool, &'static str>,
    },
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

fn model_name(model: i32) -> String {
    ModelKind::try_from(model).map_or_else(
        |_| format!("UNKNOWN_{model}"),
        |m| m.as_str_name().trim_start_matches("MODEL_KIND_").to_owned(),
    )
}

fn fallback_name(reason: i32) -> String {
    FallbackReason::try_from(reason).map_or_else(
        |_| format!("UNKNOWN_{reason}"),
        |r| {
            r.as_str_name()
                .trim_start_matches("FALLBACK_REASON_")
                .to_owned()
        },
    )
}

/// Counters the dispatcher and the call tasks share with the progress line.
#[derive(Default)]
struct Live {
    dispatched: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Live {
    fn started(&self) {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aggregates events; owned by the collector task.
struct Recorder {
    deadline_us: u64,
    from_due: Histogram<u64>,
    from_send: Histogram<u64>,
    send_lag: Histogram<u64>,
    health: Histogram<u64>,
    calls: u64,
    sent: u64,
    ok: u64,
    errors: u64,
    errors_by_code: BTreeMap<String, u64>,
    gnn: u64,
    models: BTreeMap<String, u64>,
    fallbacks: BTreeMap<String, u64>,
    deadline_misses: u64,
    deadline_misses_from_due: u64,
    health_checks: u64,
    health_errors: u64,
    health_not_serving: u64,
    /// Whole-run counts and the last second's latencies, for the progress line.
    seen_ok: u64,
    seen_errors: u64,
    window: Histogram<u64>,
}

impl Recorder {
    fn new(deadline: Duration) -> Recorder {
        Recorder {
            deadline_us: micros(deadline),
            from_due: histogram(),
            from_send: histogram(),
            send_lag: histogram(),
            health: histogram(),
            calls: 0,
            sent: 0,
            ok: 0,
            errors: 0,
            errors_by_code: BTreeMap::new(),
            gnn: 0,
            models: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            deadline_misses: 0,
            deadline_misses_from_due: 0,
            health_checks: 0,
            health_errors: 0,
            health_not_serving: 0,
            seen_ok: 0,
            seen_errors: 0,
            window: histogram(),
        }
    }

    fn record(&mut self, event: Event) {
        match event {
            Event::Call {
                measured,
                items,
                from_due_us,
                from_send_us,
                send_lag_us,
                result,
            } => {
                match &result {
                    Ok(_) => {
                        self.seen_ok += items;
                        self.window.saturating_record(from_due_us);
                    }
                    Err(_) => self.seen_errors += items,
                }
                if !measured {
                    return;
                }
                self.calls += 1;
                self.sent += items;
                self.send_lag.saturating_record(send_lag_us);
                match result {
                    Ok(answers) => {
                        self.ok += items;
                        self.from_due.saturating_record(from_due_us);
                        self.from_send.saturating_record(from_send_us);
                        if from_send_us > self.deadline_us {
                            self.deadline_misses += items;
                        }
                        if from_due_us > self.deadline_us {
                            self.deadline_misses_from_due += items;
                        }
                        for (model, reason) in answers {
                            if model == ModelKind::Gnn as i32 {
                                self.gnn += 1;
                            }
                            *self.models.entry(model_name(model)).or_default() += 1;
                            if reason != FallbackReason::None as i32 {
                                *self.fallbacks.entry(fallback_name(reason)).or_default() += 1;
                            }
                        }
                    }
                    Err(code) => {
                        self.errors += items;
                        *self.errors_by_code.entry(code.to_owned()).or_default() += items;
                    }
                }
            }
            Event::Health {
                measured,
                from_send_us,
                result,
            } => {
                if !measured {
                    return;
                }
                self.health_checks += 1;
                match result {
                    Ok(serving) => {
                        self.health.saturating_record(from_send_us);
                        if !serving {
                            self.health_not_serving += 1;
                        }
                    }
                    Err(_) => self.health_errors += 1,
                }
            }
        }
    }

    fn progress(&mut self, elapsed: Duration, phase: &str, live: &Live, items: u64) {
        let p99 = quantile_ms(&self.window, 0.99)
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2} ms"));
        eprintln!(
            "bench serve {:>4.0}s {phase}: sent {} ok {} errors {} in flight {}, p99 {p99} (last 1 s)",
            elapsed.as_secs_f64(),
            live.dispatched.load(Ordering::Relaxed) * items,
            self.seen_ok,
            self.seen_errors,
            live.in_flight.load(Ordering::Relaxed),
        );
        self.window.reset();
    }

    fn summary(self, run: &RunInfo<'_>) -> Summary {
        let duration_s = run.config.duration.as_secs_f64();
        let items = run.config.rpc.items();
        Summary {
            target: run.target.to_owned(),
            rpc: run.config.rpc.name(),
            batch_size: items,
            requested_rps: run.config.rate * items as f64,
            achieved_rps: self.ok as f64 / duration_s,
            duration_s,
            warmup_s: run.config.warmup.as_secs_f64(),
            connections: run.connections,
            deadline_ms: run.config.deadline.as_secs_f64() * 1000.0,
            apply_to_graph: run.config.apply_to_graph,
            calls: self.calls,
            sent: self.sent,
            ok: self.ok,
            errors: self.errors,
            errors_by_code: self.errors_by_code,
            p50_ms: quantile_ms(&self.from_due, 0.5),
            p90_ms: quantile_ms(&self.from_due, 0.9),
            p99_ms: quantile_ms(&self.from_due, 0.99),
            p999_ms: quantile_ms(&self.from_due, 0.999),
            max_ms: max_ms(&self.from_due),
            mean_ms: (!self.from_due.is_empty()).then(|| self.from_due.mean() / 1000.0),
            service_p50_ms: quantile_ms(&self.from_send, 0.5),
            service_p99_ms: quantile_ms(&self.from_send, 0.99),
            service_max_ms: max_ms(&self.from_send),
            send_lag_p99_ms: quantile_ms(&self.send_lag, 0.99),
            send_lag_max_ms: max_ms(&self.send_lag),
            max_in_flight: run.max_in_flight,
            gnn_share: (self.ok > 0).then(|| self.gnn as f64 / self.ok as f64),
            models: self.models,
            fallbacks: self.fallbacks,
            deadline_misses: self.deadline_misses,
            deadline_misses_from_due: self.deadline_misses_from_due,
            health_rate: run.config.health_rate,
            health_checks: self.health_checks,
            health_p50_ms: quantile_ms(&self.health, 0.5),
            health_p99_ms: quantile_ms(&self.health, 0.99),
            health_max_ms: max_ms(&self.health),
            health_errors: self.health_errors,
            health_not_serving: self.health_not_serving,
        }
    }
}

/// What the summary reports about the run besides the recorded events.
struct RunInfo<'a> {
    target: &'a str,
    config: &'a LoadConfig,
    connections: usize,
    max_in_flight: u64,
}

/// What every scoring call task needs.
struct CallSpec {
    rpc: Rpc,
    deadline: Duration,
    apply_to_graph: bool,
    payloads: Arc<[Transaction]>,
    /// Appended to every txn_id with the lap number, so that no two calls of a run, and no
    /// two runs against one server, send the same txn_id: the server answers a repeated
    /// txn_id from its idempotency cache, which would measure the cache, not scoring.
    run_tag: String,
}

/// A tag unique to this run of the load generator (clock and process id).
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

/// Flattens the client-side timeout and the call's own status into a code name.
fn outcome<T>(
    result: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Result<T, &'static str> {
    match result {
        Err(_) => Err(code_name(Code::DeadlineExceeded)),
        Ok(Err(status)) => Err(code_name(status.code())),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

fn answer(response: &ScoreResponse) -> (i32, i32) {
    (response.model, response.fallback_reason)
}

/// Makes scoring call `i` (due at `due`) and reports it.
async fn call_once(
    channel: Channel,
    spec: Arc<CallSpec>,
    i: u64,
    due: Instant,
    measured: bool,
    events: mpsc::UnboundedSender<Event>,
    live: Arc<Live>,
) {
    let items = spec.rpc.items();
    let n = spec.payloads.len();
    let first = (i as usize).wrapping_mul(items) % n;
    let request = |k: usize| {
        let position = (i as usize).wrapping_mul(items).wrapping_add(k);
        let mut transaction = spec.payloads[(first + k) % n].clone();
        transaction.txn_id = format!("{}.{}.{}", transaction.txn_id, spec.run_tag, position / n);
        ScoreRequest {
            transaction: Some(transaction),
            apply_to_graph: spec.apply_to_graph,
        }
    };
    let limit = spec.deadline + CLIENT_GRACE;
    let mut client = FraudScoringClient::new(channel);
    let (sent, result) = match spec.rpc {
        Rpc::Score => {
            let mut call = tonic::Request::new(request(0));
            call.set_timeout(spec.deadline);
            let sent = Instant::now();
            let result = tokio::time::timeout(limit, client.score(call)).await;
            (sent, outcome(result).map(|r| vec![answer(&r)]))
        }
        Rpc::Batch(size) => {
            let mut call = tonic::Request::new(ScoreBatchRequest {
                requests: (0..size).map(request).collect(),
            });
            call.set_timeout(spec.deadline);
            let sent = Instant::now();
            let result = tokio::time::timeout(limit, client.score_batch(call)).await;
            let result = outcome(result).and_then(|r| {
                if r.responses.len() == size {
                    Ok(r.responses.iter().map(answer).collect())
                } else {
                    Err(MALFORMED)
                }
            });
            (sent, result)
        }
    };
    let done = Instant::now();
    live.finished();
    // The collector outlives every call task unless the run itself was dropped, in which
    // case nobody wants the event.
    let _ = events.send(Event::Call {
        measured,
        items: items as u64,
        from_due_us: micros(done - due),
        from_send_us: micros(done - sent),
        send_lag_us: micros(sent.saturating_duration_since(due)),
        result,
    });
}

/// Makes one health check and reports its latency from the send.
async fn check_once(
    channel: Channel,
    service: String,
    deadline: Duration,
    measured: bool,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut client = HealthClient::new(channel);
    let mut call = tonic::Request::new(HealthCheckRequest { service });
    call.set_timeout(deadline);
    let sent = Instant::now();
    let result = tokio::time::timeout(deadline + CLIENT_GRACE, client.check(call)).await;
    let from_send_us = micros(sent.elapsed());
    let result = outcome(result).map(|r| r.status == ServingStatus::Serving as i32);
    let _ = events.send(Event::Health {
        measured,
        from_send_us,
        result,
    });
}

/// Calls `start_call(i, due, measured)` for every call of `schedule`, each at its due
/// time after `start`. Runs on a blocking thread of its own: the OS sleep it uses is
/// accurate to tens of microseconds, where tokio's timer rounds up to whole milliseconds.
fn dispatch(schedule: Schedule, start: Instant, mut start_call: impl FnMut(u64, Instant, bool)) {
    for i in 0..schedule.total_calls() {
        let due = start + schedule.due(i);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        start_call(i, due, schedule.is_measured(i));
    }
}

/// Receives events until every sender is gone, printing progress once a second.
async fn collect(
    mut events: mpsc::UnboundedReceiver<Event>,
    mut recorder: Recorder,
    live: Arc<Live>,
    start: Instant,
    config: LoadConfig,
) -> Recorder {
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at((start + second).into(), second);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let end = config.warmup + config.duration;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => recorder.record(event),
                None => break,
            },
            _ = tick.tick(), if config.progress => {
                let elapsed = start.elapsed();
                let phase = if elapsed < config.warmup {
                    "warm-up"
                } else if elapsed < end {
                    "measuring"
                } else {
                    "draining"
                };
                recorder.progress(elapsed, phase, &live, config.rpc.items() as u64);
            }
        }
    }
    recorder
}

/// Runs the load described by `config` against `targets`, sending `payloads` in order
/// (wrapping around if there are fewer than [`LoadConfig::transactions_needed`]), and
/// returns once every call has answered or been given up on.
pub async fn run(
    targets: &Targets,
    payloads: Arc<[Transaction]>,
    config: &LoadConfig,
) -> Result<Summary, LoadError> {
    config.validate()?;
    if payloads.is_empty() {
        return Err(LoadError::Config("no transactions to send".into()));
    }
    let schedule = config.schedule();
    let live = Arc::new(Live::default());
    let (events, received) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now();
    let collector = tokio::spawn(collect(
        received,
        Recorder::new(config.deadline),
        live.clone(),
        start,
        config.clone(),
    ));
    let health = (config.health_rate > 0.0).then(|| {
        let (runtime, events) = (runtime.clone(), events.clone());
        let channel = targets.health.clone();
        let (service, deadline) = (config.health_service.clone(), config.deadline);
        let schedule = Schedule::new(config.health_rate, config.warmup, config.duration);
        tokio::task::spawn_blocking(move || {
            dispatch(schedule, start, |_, _, measured| {
                runtime.spawn(check_once(
                    channel.clone(),
                    service.clone(),
                    deadline,
                    measured,
                    events.clone(),
                ));
            })
        })
    });
    let connections = targets.scoring.len();
    let scoring = {
        let spec = Arc::new(CallSpec {
            rpc: config.rpc,
            deadline: config.deadline,
            apply_to_graph: config.apply_to_graph,
            payloads,
            run_tag: run_tag(),
        });
        let channels = targets.scoring.clone();
        let live = live.clone();
        tokio::task::spawn_blocking(move || {
            dispatch(schedule, start, |i, due, measured| {
                live.started();
                runtime.spawn(call_once(
                    channels[(i % channels.len() as u64) as usize].clone(),
                    spec.clone(),
                    i,
                    due,
                    measured,
                    events.clone(),
                    live.clone(),
                ));
            })
        })
    };
    scoring
        .await
        .map_err(|e| LoadError::Task(format!("dispatcher: {e}")))?;
    if let Some(health) = health {
        health
            .await
            .map_err(|e| LoadError::Task(format!("health probe: {e}")))?;
    }
    let recorder = collector
        .await
        .map_err(|e| LoadError::Task(format!("collector: {e}")))?;
    Ok(recorder.summary(&RunInfo {
        target: &targets.target,
        config,
        connections,
        max_in_flight: live.max_in_flight.load(Ordering::Relaxed),
    }))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;

    use fraudgraph_proto::v1::fraud_scoring_server::{FraudScoring, FraudScoringServer};
    use fraudgraph_proto::v1::{
        ExplainRequest, ExplainResponse, ScoreBatchResponse, ScoreStreamResponse, StatusRequest,
        StatusResponse,
    };
    use tonic::{Request, Response, Status, Streaming};
    use tonic_health::server::HealthReporter;

    use super::*;

    /// A stand-in for the scoring service: answers after `sleep`, alternating GNN and
    /// GBDT (with a TIMEOUT fallback) over its answers; with `failures`, every 20th call
    /// (counting from 3) fails with RESOURCE_EXHAUSTED and every 20th from 13 with
    /// INVALID_ARGUMENT.
    struct Double {
        sleep: Duration,
        failures: bool,
        calls: AtomicU64,
        answers: AtomicU64,
        /// Every txn_id received, to catch a generator that repeats one.
        seen: std::sync::Mutex<std::collections::HashSet<String>>,
        repeated: AtomicU64,
    }

    impl Double {
        fn answer(&self, request: &ScoreRequest) -> ScoreResponse {
            let txn_id = request.transaction.as_ref().map(|t| t.txn_id.clone());
            let fresh = self
                .seen
                .lock()
                .expect("seen ids")
                .insert(txn_id.unwrap_or_default());
            if !fresh {
                self.repeated.fetch_add(1, Ordering::Relaxed);
            }
            let gnn = self
                .answers
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2);
            ScoreResponse {
                txn_id: request
                    .transaction
                    .as_ref()
                    .map(|t| t.txn_id.clone())
                    .unwrap_or_default(),
                score: 0.5,
                model: if gnn { ModelKind::Gnn } else { ModelKind::Gbdt } as i32,
                fallback_reason: if gnn {
                    FallbackReason::None
                } else {
                    FallbackReason::Timeout
                } as i32,
                ..ScoreResponse::default()
            }
        }

        async fn admit(&self) -> Result<(), Status> {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.sleep).await;
            match n % 20 {
                3 if self.failures => Err(Status::resource_exhausted("queue full")),
                13 if self.failures => Err(Status::invalid_argument("transaction.ip: bad")),
                _ => Ok(()),
            }
        }
    }

    #[tonic::async_trait]
    impl FraudScoring for Double {
        async fn score(
            &self,
            request: Request<ScoreRequest>,
        ) -> Result<Response<ScoreResponse>, Status> {
            self.admit().await?;
            Ok(Response::new(self.answer(request.get_ref())))
        }

        async fn score_batch(
            &self,
            request: Request<ScoreBatchRequest>,
        ) -> Result<Response<ScoreBatchResponse>, Status> {
            self.admit().await?;
            let responses = request.get_ref().requests.iter();
            Ok(Response::new(ScoreBatchResponse {
                responses: responses.map(|r| self.answer(r)).collect(),
            }))
        }

        type ScoreStreamStream = tokio_stream::Empty<Result<ScoreStreamResponse, Status>>;

        async fn score_stream(
            &self,
            _request: Request<Streaming<ScoreRequest>>,
        ) -> Result<Response<Self::ScoreStreamStream>, Status> {
            Err(Status::unimplemented("not part of the test double"))
        }

        async fn explain(
            &self,
            _request: Request<ExplainRequest>,
        ) -> Result<Response<ExplainResponse>, Status> {
            Err(Status::unimplemented("not part of the test double"))
        }

        async fn status(
            &self,
            _request: Request<StatusRequest>,
        ) -> Result<Response<StatusResponse>, Status> {
            Err(Status::unimplemented("not part of the test double"))
        }
    }

    /// Serves a [`Double`] and tonic-health on a loopback port.
    async fn serve_double(sleep: Duration, failures: bool) -> (SocketAddr, HealthReporter) {
        let (addr, reporter, _double) = serve_double_handle(sleep, failures).await;
        (addr, reporter)
    }

    /// [`serve_double`], also handing back the double to inspect what it received.
    async fn serve_double_handle(
        sleep: Duration,
        failures: bool,
    ) -> (SocketAddr, HealthReporter, Arc<Double>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let (reporter, health) = tonic_health::server::health_reporter();
        let double = Arc::new(Double {
            sleep,
            failures,
            calls: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            seen: Default::default(),
            repeated: AtomicU64::new(0),
        });
        let server = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(FraudScoringServer::from_arc(double.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        (addr, reporter, double)
    }

    fn config(rate: f64, warmup_ms: u64, duration_ms: u64) -> LoadConfig {
        LoadConfig {
            rate,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_millis(duration_ms),
            deadline: Duration::from_millis(50),
            rpc: Rpc::Score,
            apply_to_graph: false,
            health_rate: 0.0,
            health_service: String::new(),
            progress: false,
        }
    }

    /// A few real simulated transactions (the payload content does not matter to the
    /// double, but the generator must send real ones).
    fn payloads() -> Arc<[Transaction]> {
        simulated_transactions(1, 1_000, 500, 2_000)
            .expect("simulate")
            .into()
    }

    #[test]
    fn schedule_spaces_calls_evenly_and_splits_off_the_warmup() {
        let s = Schedule::new(200.0, Duration::from_millis(500), Duration::from_secs(2));
        assert_eq!(s.total_calls(), 500);
        assert_eq!(s.measured_calls(), 400);
        assert_eq!(s.due(1), Duration::from_millis(5));
        assert_eq!(s.due(100), Duration::from_millis(500));
        assert!(!s.is_measured(99));
        assert!(s.is_measured(100));
        // Rounding does not add a call: 0.1 s at 30/s is 3 calls.
        let s = Schedule::new(30.0, Duration::ZERO, Duration::from_millis(100));
        assert_eq!(s.total_calls(), 3);
        let c = LoadConfig {
            rpc: Rpc::Batch(8),
            ..config(200.0, 500, 2_000)
        };
        assert_eq!(c.transactions_needed(), 4_000);
    }

    #[test]
    fn invalid_settings_are_rejected_naming_the_flag() {
        let bad = [
            (config(0.0, 0, 1_000), "--rate"),
            (config(f64::NAN, 0, 1_000), "--rate"),
            (config(10.0, 0, 0), "--duration"),
            (
                LoadConfig {
                    rpc: Rpc::Batch(0),
                    ..config(10.0, 0, 1_000)
                },
                "--batch-size",
            ),
            (
                LoadConfig {
                    health_rate: -1.0,
                    ..config(10.0, 0, 1_000)
                },
                "--health-rate",
            ),
        ];
        for (c, flag) in bad {
            let error = c.validate().expect_err(flag).to_string();
            assert!(error.contains(flag), "{error}");
        }
        assert!(config(10.0, 0, 1_000).validate().is_ok());
    }

    #[test]
    fn simulated_transactions_follow_the_skipped_history() {
        let sim = Simulation::generate(&SimConfig {
            transactions: 3_000,
            seed: 7,
            ..SimConfig::default()
        })
        .expect("simulate");
        let expected: Vec<Transaction> = sim.transactions().skip(1_000).take(50).collect();
        let got = simulated_transactions(7, 1_000, 50, 3_000).expect("payloads");
        assert_eq!(got, expected);
        // The stream ends first: what there is.
        let got = simulated_transactions(7, 2_990, 50, 3_000).expect("payloads");
        let expected: Vec<Transaction> = sim.transactions().skip(2_990).collect();
        assert_eq!((got.len(), got), (10, expected));
        let error = simulated_transactions(7, 3_000, 50, 3_000).expect_err("nothing left");
        assert!(error.to_string().contains("--skip 3000"), "{error}");
    }

    #[test]
    fn recorder_counts_the_measured_window_only() {
        let mut r = Recorder::new(Duration::from_millis(10));
        let call = |measured, from_due_us, from_send_us, result| Event::Call {
            measured,
            items: 1,
            from_due_us,
            from_send_us,
            send_lag_us: from_due_us - from_send_us,
            result,
        };
        let gnn = (ModelKind::Gnn as i32, FallbackReason::None as i32);
        let gbdt = (ModelKind::Gbdt as i32, FallbackReason::Overload as i32);
        // Warm-up: seen by the progress line, not in the summary.
        r.record(call(false, 90_000, 90_000, Ok(vec![gnn])));
        r.record(call(false, 1_000, 1_000, Err("UNAVAILABLE")));
        // Measured: late only from its due time; late from its send; failed.
        r.record(call(true, 12_000, 5_000, Ok(vec![gnn])));
        r.record(call(true, 11_000, 11_000, Ok(vec![gbdt])));
        r.record(call(true, 2_000, 2_000, Err("UNAVAILABLE")));
        r.record(Event::Health {
            measured: true,
            from_send_us: 400,
            result: Ok(false),
        });
        r.record(Event::Health {
            measured: true,
            from_send_us: 300,
            result: Err("UNAVAILABLE"),
        });
        r.record(Event::Health {
            measured: false,
            from_send_us: 300,
            result: Err("UNAVAILABLE"),
        });
        assert_eq!((r.seen_ok, r.seen_errors), (3, 2));
        let c = config(100.0, 0, 2_000);
        let s = r.summary(&RunInfo {
            target: "127.0.0.1:1",
            config: &c,
            connections: 4,
            max_in_flight: 3,
        });
        assert_eq!((s.calls, s.sent, s.ok, s.errors), (3, 3, 2, 1));
        assert_eq!(
            s.errors_by_code,
            BTreeMap::from([("UNAVAILABLE".into(), 1)])
        );
        assert_eq!(s.achieved_rps, 1.0);
        assert_eq!(s.gnn_share, Some(0.5));
        assert_eq!(
            s.models,
            BTreeMap::from([("GBDT".into(), 1), ("GNN".into(), 1)])
        );
        assert_eq!(s.fallbacks, BTreeMap::from([("OVERLOAD".into(), 1)]));
        assert_eq!((s.deadline_misses, s.deadline_misses_from_due), (1, 2));
        let max = s.max_ms.expect("measured");
        assert!((max - 12.0).abs() < 0.02, "{max}");
        assert!(s.service_max_ms.expect("measured") < 11.02);
        assert_eq!(
            (s.health_checks, s.health_errors, s.health_not_serving),
            (2, 1, 1)
        );
        assert!(s.health_p50_ms.expect("one check answered") < 0.41);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn open_loop_run_reports_rate_models_errors_and_health() {
        let sleep = Duration::from_millis(5);
        let (addr, _reporter) = serve_double(sleep, true).await;
        let targets = Targets::connect(&addr.to_string(), 4)
            .await
            .expect("connect");
        let c = LoadConfig {
            health_rate: 50.0,
            ..config(200.0, 500, 2_000)
        };
        let s = run(&targets, payloads(), &c).await.expect("run");

        assert_eq!(s.target, addr.to_string());
        assert_eq!((s.requested_rps, s.connections), (200.0, 4));
        assert_eq!((s.calls, s.sent), (400, 400));
        assert_eq!(s.ok + s.errors, s.sent);
        // 2 calls in 20 fail, one of each code.
        for code in ["RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"] {
            let n = s.errors_by_code.get(code).copied().unwrap_or(0);
            assert!(
                (16..=24).contains(&n),
                "{code}: {n} in {:?}",
                s.errors_by_code
            );
        }
        assert_eq!(s.errors_by_code.values().sum::<u64>(), s.errors);
        let expected_rps = 200.0 * 18.0 / 20.0;
        assert!(
            (s.achieved_rps - expected_rps).abs() < 0.1 * expected_rps,
            "achieved {} rps",
            s.achieved_rps
        );
        let share = s.gnn_share.expect("some answers");
        assert!((0.45..=0.55).contains(&share), "gnn share {share}");
        assert_eq!(s.models.values().sum::<u64>(), s.ok);
        assert_eq!(
            s.fallbacks.get("TIMEOUT").copied(),
            s.models.get("GBDT").copied()
        );

        let p = [s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms].map(|v| v.expect("answers"));
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "percentiles {p:?}");
        assert!(
            p[0] >= 5.0,
            "p50 {} ms under the 5 ms the server sleeps",
            p[0]
        );
        let service_p99 = s.service_p99_ms.expect("answers");
        assert!(
            (5.0..=p[2]).contains(&service_p99),
            "service p99 {service_p99}"
        );
        assert!(s.max_in_flight >= 1);

        assert_eq!(s.health_checks, 100);
        assert_eq!((s.health_errors, s.health_not_serving), (0, 0));
        let (h50, h99) = (s.health_p50_ms.expect("p50"), s.health_p99_ms.expect("p99"));
        assert!(h50 <= h99 && h99 < 25.0, "health p50 {h50} p99 {h99}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn slow_answers_do_not_slow_the_sender() {
        // 250 ms per answer on one connection: a closed loop would manage 4 calls a
        // second; the open loop keeps 100 a second with about 25 outstanding.
        let (addr, _reporter) = serve_double(Duration::from_millis(250), false).await;
        let targets = Targets::connect(&addr.to_string(), 1)
            .await
            .expect("connect");
        let c = LoadConfig {
            deadline: Duration::from_secs(2),
            ..config(100.0, 0, 1_000)
        };
        let s = run(&targets, payloads(), &c).await.expect("run");
        assert_eq!((s.sent, s.ok, s.errors), (100, 100, 0));
        assert_eq!(s.achieved_rps, 100.0);
        assert!(s.max_in_flight >= 20, "max in flight {}", s.max_in_flight);
        assert!(s.p50_ms.expect("answers") >= 250.0);
        assert_eq!(s.deadline_misses, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_txn_id_is_sent_twice_across_laps_and_runs() {
        // 30 payloads, 80 calls a run, two runs: without a per-run, per-lap tag the
        // server would answer most of them from its idempotency cache.
        let (addr, _reporter, double) = serve_double_handle(Duration::ZERO, false).await;
        let targets = Targets::connect(&addr.to_string(), 2)
            .await
            .expect("connect");
        let few: Arc<[Transaction]> = payloads()[..30].to_vec().into();
        for _ in 0..2 {
            let s = run(&targets, few.clone(), &config(200.0, 0, 400))
                .await
                .expect("run");
            assert_eq!((s.sent, s.ok), (80, 80));
        }
        assert_eq!(double.repeated.load(Ordering::Relaxed), 0);
        let seen = double.seen.lock().expect("seen ids");
        assert_eq!(seen.len(), 160);
        for id in seen.iter() {
            assert!(
                id.len() <= fraudgraph_proto::validate::MAX_ID_LEN,
                "{id} is longer than the contract allows"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batch_calls_count_every_item() {
        let (addr, _reporter) = serve_double(Duration::from_millis(2), false).await;
        let targets = Targets::connect(&addr.to_string(), 2)
            .await
            .expect("connect");
        let c = LoadConfig {
            rpc: Rpc::Batch(4),
            apply_to_graph: true,
            ..config(50.0, 200, 1_000)
        };
        let s = run(&targets, payloads(), &c).await.expect("run");
        assert_eq!((s.rpc, s.batch_size, s.requested_rps), ("batch", 4, 200.0));
        assert_eq!((s.calls, s.sent, s.ok, s.errors), (50, 200, 200, 0));
        assert_eq!(s.achieved_rps, 200.0);
        // Each batch of four alternates GNN and GBDT.
        assert_eq!(s.gnn_share, Some(0.5));
        assert_eq!(s.fallbacks.get("TIMEOUT"), Some(&100));
        assert_eq!((s.health_checks, s.health_p99_ms), (0, None));
    }

    #[tokio::test]
    async fn unreachable_target_fails_fast_naming_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        drop(listener);
        let started = Instant::now();
        let error = Targets::connect(&addr, 4)
            .await
            .err()
            .expect("nothing listens there");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(matches!(error, LoadError::Unreachable { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.contains(&addr) && text.contains("refused"), "{text}");

        let error = Targets::connect("not a uri:://", 1)
            .await
            .err()
            .expect("bad");
        assert!(
            matches!(error, LoadError::InvalidTarget { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn waits_for_serving_and_times_out_when_it_never_comes() {
        let (addr, reporter) = serve_double(Duration::ZERO, false).await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let targets = Targets::connect(&addr.to_string(), 1)
            .await
            .expect("connect");
        let error = targets
            .wait_until_serving("", Duration::from_millis(300))
            .await
            .expect_err("not serving");
        let text = error.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("NOT_SERVING"),
            "{text}"
        );

        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
        });
        let served = targets
            .wait_until_serving("", Duration::from_secs(5))
            .await
            .expect("serving after 200 ms");
        assert!(served);
    }
}
