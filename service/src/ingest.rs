//! Kafka ingestion of `fraudgraph serve`: the transactions and labels topics into the live
//! graph and the label book, malformed records to the dead-letter topic, and the decisions
//! producer.
//!
//! # Where consumption starts
//!
//! Every replica keeps the whole graph (docs/SCALING.md), so it reads every partition of
//! the transactions and labels topics: [`Ingest::start`] assigns them all itself instead of
//! letting the group coordinator split them between replicas. That also spares a restarted
//! replica the wait for its dead predecessor's session to expire before a rebalance. The
//! graph lives in memory, so the consumer never resumes from the group's committed offsets
//! either (a fresh process would skip everything its empty graph never saw): each partition
//! starts at the offset recorded in the snapshot the graph was restored from (`resume`), or
//! at its beginning when the snapshot does not know it. Offsets are still committed under
//! `group_id`, so operators see the lag in the standard Kafka tools; give each replica its
//! own `group_id`. Partitions added to a topic later are picked up at the next restart.

//! # Delivery
//!
//! At least once: an offset is committed, and reported by [`Ingest::applied_offsets`], only
//! when the record and every record before it in its partition has been applied (or
//! dead-lettered, and the dead-letter record delivered). Records read twice (a restart from
//! a snapshot older than the last commit, a rebalance, a second replica) are harmless:
//! [`LiveGraph::apply`] is idempotent by txn_id and [`LabelBook::record`] counts a label
//! once, so each transaction counts once.
//!
//! # Per record
//!
//! - transactions: decode (the `content-type` header, or detection) → validate against the
//!   receiving clock → [`LiveGraph::apply`]. An applied transaction is remembered by the
//!   label book and, when an `on_applied` channel is given, offered to it with `try_send`
//!   (dropped when that channel is full: the applier never waits for a consumer of it).
//!   Duplicates and transactions too late for the graph are counted and skipped.
//! - labels: decode → validate → [`LabelBook::record`].
//! - a record that cannot be decoded or validated goes, bytes and key unchanged (its other
//!   headers too), to the dead-letter topic with the headers `fraudgraph-error` (the error,
//!   naming the field, e.g. `transaction.amount_minor: must be at least 1, got 0`),
//!   `fraudgraph-source-topic`, `fraudgraph-source-partition` and `fraudgraph-source-offset`;
//!   consumption goes on. Its offset counts as done once the dead-letter record is delivered.
//!   The dead-letter producer retries without a time limit while the broker is unreachable;
//!   a record the broker refuses for good is logged at error level and let go.
//!
//! # Event-time order across partitions
//!
//! The graph refuses transactions older than its late window (1 h) behind the newest it has
//! applied, and a replica replaying a backlog may read one partition far ahead of the others.
//! So the poller merges the transactions partitions in event-time order before the applier
//! sees them ([`align`]): it holds polled transactions per partition and hands on the oldest
//! head, but not while a partition with nothing queued may still send something older than
//! the graph can take (it has not reached its high watermark, or the head is more than half
//! the late window past its last event time). A partition that holds the merge back for
//! [`ALIGN_WAIT`] counts as idle until it sends again; at most `queue_capacity` ×
//! [`ALIGN_HOLD_PER_QUEUED`] records are held. Labels are not merged: their order does not
//! matter.
//!
//! # Threads
//!
//! Everything runs on two std threads of its own, never on the async runtime:
//! - the poller owns the consumer: it polls, merges the transactions partitions in event-time
//!   order, hands records to the applier through a bounded channel of `queue_capacity`,
//!   pauses every assigned partition when that channel is 80% full and resumes them when it
//!   is down to 20% (`fraudgraph_kafka_paused`), commits the applier's progress every
//!   `commit_interval_ms`, and refreshes the lag about every second;
//! - the applier drains the channel, applies (idle eviction comes with the applies, by event
//!   time: `crate::live_graph`), and records its progress per partition.
//!
//! # Lag and readiness
//!
//! The lag of a partition is its high watermark (the last stable offset) minus the applied
//! offset. The watermarks are the ones of the last fetch response, which librdkafka reports
//! in its statistics every second: reading them costs no request and never waits on an
//! unreachable broker. (Asking with `fetch_watermarks`, a ListOffsets request, is also
//! wrong against tansu 0.6, which answers with the base offset of the newest batch plus
//! one.) The lag stops moving while partitions are paused. [`Ingest::caught_up`] turns true
//! once every assigned partition is applied up to the first high watermark seen for it.
//!
//! Broker trouble never panics: it is logged (partition, offset and error kind only; never
//! an account, card, device or IP id, nor a payload) and retried. Only [`Ingest::start`]
//! fails, when the brokers do not answer within [`CONNECT_TIMEOUT`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use fraudgraph_proto::codec::{self, DecodeError};
use fraudgraph_proto::v1::{KafkaStatus, Label, PartitionLag, ScoreResponse, Transaction};
use fraudgraph_proto::{PayloadFormat, ValidationError, topics, validate};
use fraudgraph_sampler::graph::{ApplyOutcome, LOOKAHEAD};
use fraudgraph_sampler::snapshot::Offsets;
use parking_lot::Mutex;
use prometheus::IntCounter;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::{Deserialize, Serialize};

mod align;

use align::Aligner;

use crate::kafka;
use crate::labels::LabelBook;
use crate::live_graph::LiveGraph;
use crate::metrics::Metrics;

#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod support;

/// How long [`Ingest::start`] and [`DecisionProducer::connect`] wait for the brokers to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Header on dead-lettered records: the partition they came from (decimal).
pub const SOURCE_PARTITION_HEADER: &str = "fraudgraph-source-partition";
/// Header on dead-lettered records: their offset in that partition (decimal).
pub const SOURCE_OFFSET_HEADER: &str = "fraudgraph-source-offset";

/// How long one poll waits for a record.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often the poller refreshes the lag.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for dead-letter records still in flight.
const FINAL_FLUSH: Duration = Duration::from_secs(10);
/// How long a partition with nothing queued may hold the partition merge back before it
/// counts as idle (see [`align`]).
const ALIGN_WAIT: Duration = Duration::from_secs(2);
/// Records the partition merge may hold, per record of `queue_capacity`.
const ALIGN_HOLD_PER_QUEUED: usize = 20;
/// How often the poller re-reads which partitions are behind.
const ALIGN_REFRESH: Duration = Duration::from_millis(10);
/// How long a decision waits for room in the producer's queue before it is refused.
const DECISION_QUEUE_WAIT: Duration = Duration::from_millis(100);

/// Kafka settings of `fraudgraph serve` (part of the service's JSON config, under "kafka").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`; empty disables Kafka.
    pub brokers: String,
    /// Consumer group the service joins (partitions are split between its members).
    pub group_id: String,
    /// Topic of incoming transactions.
    pub transactions_topic: String,
    /// Topic of incoming labels.
    pub labels_topic: String,
    /// Topic malformed records are copied to.
    pub dead_letter_topic: String,
    /// Topic decisions are written to when scoring on ingest.
    pub decisions_topic: String,
    /// Score every transaction consumed from Kafka and write the decision to
    /// `decisions_topic`.
    pub score_on_ingest: bool,
    /// The latency budget of a score on ingest, milliseconds. Nobody waits on it, so it is
    /// far longer than a gateway's: it only bounds how long a decision may queue behind
    /// the gateways' calls (and a replay's backlog) before the GBDT gives it instead.
    pub score_on_ingest_deadline_ms: u64,
    /// Records buffered between the poller and the applier.
    pub queue_capacity: usize,
    /// How often consumed offsets are committed to the group, milliseconds.
    pub commit_interval_ms: u64,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Partitions of topics created at start.
    pub partitions: i32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            brokers: String::new(),
            group_id: "fraudgraph".into(),
            transactions_topic: topics::TRANSACTIONS.into(),
            labels_topic: topics::LABELS.into(),
            dead_letter_topic: topics::DEAD_LETTER.into(),
            decisions_topic: topics::DECISIONS.into(),
            score_on_ingest: false,
            score_on_ingest_deadline_ms: 2_000,
            queue_capacity: 10_000,
            commit_interval_ms: 1000,
            create_topics: true,
            partitions: 3,
        }
    }
}

impl IngestConfig {
    /// Refuses settings the consumer cannot run with, naming the field.
    fn check(&self) -> anyhow::Result<()> {
        if self.brokers.trim().is_empty() {
            bail!("kafka.brokers is empty: Kafka is disabled");
        }
        for (field, topic) in [
            ("kafka.group_id", &self.group_id),
            ("kafka.transactions_topic", &self.transactions_topic),
            ("kafka.labels_topic", &self.labels_topic),
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
            ("kafka.decisions_topic", &self.decisions_topic),
        ] {
            if topic.trim().is_empty() {
                bail!("{field} is empty");
            }
        }
        if self.transactions_topic == self.labels_topic {
            bail!("kafka.transactions_topic and kafka.labels_topic are the same topic");
        }
        if [&self.transactions_topic, &self.labels_topic].contains(&&self.dead_letter_topic) {
            bail!("kafka.dead_letter_topic must differ from the topics it is fed from");
        }
        if self.queue_capacity == 0 {
            bail!("kafka.queue_capacity must be at least 1");
        }
        if self.score_on_ingest_deadline_ms == 0 {
            bail!("kafka.score_on_ingest_deadline_ms must be at least 1");
        }
        if self.partitions < 1 {
            bail!(
                "kafka.partitions must be at least 1, got {}",
                self.partitions
            );
        }
        Ok(())
    }
}

/// Asks the brokers for their metadata, so a wrong address fails fast and says so.
fn check_reachable<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    client
        .fetch_metadata(None, timeout)
        .map(drop)
        .with_context(|| format!("Kafka brokers {brokers} did not answer within {timeout:?}"))
}

/// The Unix clock in milliseconds (validation refuses event times too far ahead of it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Lets the first few log lines of a kind through per 10 s window and counts the rest, so a
/// flood of bad records or a broker outage cannot flood the log.
struct Throttle {
    what: &'static str,
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl Throttle {
    const WINDOW: Duration = Duration::from_secs(10);
    const PER_WINDOW: u32 = 5;

    fn new(what: &'static str) -> Self {
        Throttle {
            what,
            window: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// True when the next line of this kind may be logged.
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Self::WINDOW {
            if self.suppressed > 0 {
                tracing::warn!(
                    "kafka: {} more {} not logged in the last {:?}",
                    self.suppressed,
                    self.what,
                    Self::WINDOW
                );
            }
            self.window = Instant::now();
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < Self::PER_WINDOW {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Per-partition maps keyed by topic first, so lookups by `&str` need no allocation.
type PerPartition<T> = HashMap<String, HashMap<i32, T>>;

fn entry<'a, T: Default>(map: &'a mut PerPartition<T>, topic: &str, partition: i32) -> &'a mut T {
    if !map.contains_key(topic) {
        map.insert(topic.to_owned(), HashMap::new());
    }
    map.get_mut(topic)
        .expect("inserted above")
        .entry(partition)
        .or_default()
}

/// The applier's progress in one partition.
#[derive(Default)]
struct PartitionProgress {
    /// One past the last record the applier finished; `None` before the first.
    applied_next: Option<i64>,
    /// Offsets of dead-lettered records whose dead-letter copy is not delivered yet.
    undelivered: BTreeSet<i64>,
}

impl PartitionProgress {
    /// Everything before this offset is applied or delivered to the dead-letter topic.
    fn safe(&self) -> Option<i64> {
        match (self.applied_next, self.undelivered.first()) {
            (Some(a), Some(&u)) => Some(a.min(u)),
            (a, _) => a,
        }
    }
}

/// What the applier has done, per partition; read by the poller (commits, lag) and by
/// [`Ingest::applied_offsets`].
struct Progress(Mutex<PerPartition<PartitionProgress>>);

impl Progress {
    fn new(resume: &Offsets) -> Progress {
        let mut map = PerPartition::default();
        for ((topic, partition), offset) in resume {
            entry::<PartitionProgress>(&mut map, topic, *partition).applied_next = Some(*offset);
        }
        Progress(Mutex::new(map))
    }

    /// The record at `offset` is done with (applied, skipped or handed to the dead-letter
    /// producer).
    fn finished(&self, topic: &str, partition: i32, offset: i64) {
        let mut map = self.0.lock();
        let p = entry(&mut map, topic, partition);
        // Records of a partition arrive in order, so this only moves back when the broker
        // reset the position (a resume offset past the end of a recreated topic): then the
        // old offset no longer means anything.
        p.applied_next = Some(offset + 1);
    }

    /// The record at `offset` is being dead-lettered: hold its offset until delivery.
    fn hold(&self, topic: &str, partition: i32, offset: i64) {
        entry(&mut self.0.lock(), topic, partition)
            .undelivered
            .insert(offset);
    }

    /// The dead-letter copy of the record at `offset` is delivered (or given up on).
    fn release(&self, topic: &str, partition: i32, offset: i64) {
        entry(&mut self.0.lock(), topic, partition)
            .undelivered
            .remove(&offset);
    }

    fn applied_next(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0
            .lock()
            .get(topic)
            .and_then(|m| m.get(&partition))
            .and_then(|p| p.applied_next)
    }

    fn safe(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0
            .lock()
            .get(topic)
            .and_then(|m| m.get(&partition))
            .and_then(PartitionProgress::safe)
    }

    fn safe_offsets(&self) -> Offsets {
        let map = self.0.lock();
        let mut out = Offsets::new();
        for (topic, partitions) in map.iter() {
            for (partition, p) in partitions {
                if let Some(safe) = p.safe() {
                    out.insert((topic.clone(), *partition), safe);
                }
            }
        }
        out
    }
}

/// State shared by the two threads and the [`Ingest`] handle.
struct Shared {
    progress: Progress,
    stop: AtomicBool,
    caught_up: AtomicBool,
    /// Per-partition lag and its total, as of the last refresh.
    lag: Mutex<(Vec<PartitionLag>, i64)>,
    /// Dead-letter records delivered since start.
    dead_lettered: AtomicU64,
}

/// The consumer's context: assigns partitions at the offsets this process wants, tracks the
/// assignment, and hears about commits.
struct ConsumerState {
    shared: Arc<Shared>,
    /// Next offset to read per partition: the resume offsets, then one past each record
    /// polled. A (re)assigned partition starts here, or at the beginning when absent.
    positions: Mutex<PerPartition<i64>>,
    /// The current assignment.
    assigned: Mutex<Vec<(String, i32)>>,
    /// Set whenever the assignment changed; the poller re-pauses and refreshes the lag.
    assignment_changed: AtomicBool,
    /// Set when an asynchronous commit failed, so the poller commits again.
    commit_failed: AtomicBool,
    /// Per partition, the watermarks of the last fetch response (from librdkafka's
    /// statistics, refreshed every [`LAG_EVERY`]).
    watermarks: Mutex<PerPartition<Watermarks>>,
}

/// A partition's offsets on the broker.
#[derive(Debug, Clone, Copy, Default)]
struct Watermarks {
    /// The first offset still stored.
    low: i64,
    /// One past the last offset the consumer can read (the last stable offset, which is the
    /// high watermark unless transactions are open).
    high: i64,
}

impl ConsumerState {
    fn new(shared: Arc<Shared>, resume: &Offsets) -> ConsumerState {
        let mut positions = PerPartition::default();
        for ((topic, partition), offset) in resume {
            *entry::<i64>(&mut positions, topic, *partition) = *offset;
        }
        ConsumerState {
            shared,
            positions: Mutex::new(positions),
            assigned: Mutex::new(Vec::new()),
            assignment_changed: AtomicBool::new(false),
            commit_failed: AtomicBool::new(false),
            watermarks: Mutex::new(PerPartition::default()),
        }
    }

    fn polled(&self, topic: &str, partition: i32, offset: i64) {
        *entry(&mut self.positions.lock(), topic, partition) = offset + 1;
    }

    fn assigned(&self) -> Vec<(String, i32)> {
        self.assigned.lock().clone()
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut list = TopicPartitionList::with_capacity(tpl.count());
        {
            let positions = self.positions.lock();
            for e in tpl.elements() {
                let start = positions
                    .get(e.topic())
                    .and_then(|m| m.get(&e.partition()))
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                if let Err(err) = list.add_partition_offset(e.topic(), e.partition(), start) {
                    tracing::error!(
                        partition = e.partition(),
                        "kafka: cannot set the start offset of an assigned partition: {err}"
                    );
                }
            }
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = if cooperative {
            consumer.incremental_assign(&list)
        } else {
            consumer.assign(&list)
        };
        if let Err(err) = result {
            tracing::error!("kafka: assigning partitions failed: {err}");
        }
        let mut assigned = self.assigned.lock();
        if !cooperative {
            assigned.clear();
        }
        for e in list.elements() {
            assigned.push((e.topic().to_owned(), e.partition()));
        }
        tracing::info!(partitions = list.count(), "kafka: partitions assigned");
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        // Hand the new owner our progress; a failure only means it re-reads a little.
        let mut commit = TopicPartitionList::new();
        for e in tpl.elements() {
            if let Some(safe) = self.shared.progress.safe(e.topic(), e.partition()) {
                let _ = commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(safe));
            }
        }
        if commit.count() > 0
            && let Err(err) = consumer.commit(&commit, CommitMode::Async)
        {
            tracing::warn!("kafka: committing revoked partitions failed: {err}");
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => {
                let mut assigned = self.assigned.lock();
                assigned.retain(|(t, p)| tpl.find_partition(t, *p).is_none());
                consumer.incremental_unassign(tpl)
            }
            _ => {
                self.assigned.lock().clear();
                consumer.unassign()
            }
        };
        if let Err(err) = result {
            tracing::error!("kafka: unassigning partitions failed: {err}");
        }
        tracing::info!(partitions = tpl.count(), "kafka: partitions revoked");
    }
}

impl ClientContext for ConsumerState {
    /// Keeps the watermarks of the consumed partitions. They come from the fetch responses,
    /// so reading them costs no request (and no wait while the broker is away).
    fn stats(&self, statistics: Statistics) {
        let mut watermarks = self.watermarks.lock();
        for (name, topic) in &statistics.topics {
            for (&partition, p) in &topic.partitions {
                let high = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if partition < 0 || high < 0 {
                    continue;
                }
                *entry(&mut watermarks, name, partition) = Watermarks {
                    low: p.lo_offset.max(0),
                    high,
                };
            }
        }
    }
}

impl ConsumerContext for ConsumerState {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!("kafka: rebalance failed: {code}; dropping the assignment");
                self.assigned.lock().clear();
                if let Err(err) = consumer.unassign() {
                    tracing::error!("kafka: unassigning partitions failed: {err}");
                }
            }
        }
        self.assignment_changed.store(true, Ordering::Release);
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(err) = result {
            tracing::warn!("kafka: committing offsets failed: {err}; will retry");
            self.commit_failed.store(true, Ordering::Release);
        }
    }
}

/// Identifies a dead-lettered record in its delivery report.
struct DeadLetterTag {
    topic: String,
    partition: i32,
    offset: i64,
}

/// Delivery reports of the dead-letter producer: release held offsets, count deliveries.
struct DeadLetterReports {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

impl ClientContext for DeadLetterReports {}

impl ProducerContext for DeadLetterReports {
    type DeliveryOpaque = Box<DeadLetterTag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<DeadLetterTag>) {
        match result {
            Ok(_) => {
                self.shared.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.metrics.kafka_dead_lettered.inc();
            }
            Err((err, _)) => tracing::error!(
                partition = tag.partition,
                offset = tag.offset,
                "kafka: the broker refused a dead-letter record ({err}); letting it go"
            ),
        }
        self.shared
            .progress
            .release(&tag.topic, tag.partition, tag.offset);
    }
}

type DeadLetterProducer = ThreadedProducer<DeadLetterReports>;

/// Which of the two input topics a record came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Transactions,
    Labels,
}

/// Why a record was dead-lettered.
enum Malformed {
    /// The payload could not be decoded.
    Decode(&'static str, DecodeError),
    /// The `content-type` header is not UTF-8.
    ContentTypeNotUtf8(&'static str),
    /// The message broke the contract.
    Invalid(ValidationError),
}

impl Malformed {
    /// The full error for the `fraudgraph-error` header, naming the message and the field.
    fn header(&self) -> String {
        match self {
            Malformed::Decode(what, err) => format!("{what}: {err}"),
            Malformed::ContentTypeNotUtf8(what) => {
                format!(
                    "{what}: the {} header is not UTF-8",
                    topics::CONTENT_TYPE_HEADER
                )
            }
            Malformed::Invalid(err) => err.to_string(),
        }
    }

    /// What kind of error it is, for logs: never values from the payload.
    fn kind(&self) -> String {
        match self {
            Malformed::Decode(what, DecodeError::Json(_)) => format!("{what}: invalid JSON"),
            Malformed::Decode(what, DecodeError::Protobuf(_)) => {
                format!("{what}: invalid protobuf")
            }
            Malformed::Decode(what, DecodeError::UnsupportedContentType(_)) => {
                format!("{what}: unsupported content-type")
            }
            Malformed::ContentTypeNotUtf8(what) => format!("{what}: content-type not UTF-8"),
            Malformed::Invalid(err) => format!("invalid {}", err.fields().join(", ")),
        }
    }
}

/// The `content-type` header of a record, if it has one.
fn content_type<'m>(
    message: &'m OwnedMessage,
    what: &'static str,
) -> Result<Option<&'m str>, Malformed> {
    let Some(headers) = message.headers() else {
        return Ok(None);
    };
    for header in headers.iter() {
        if header.key.eq_ignore_ascii_case(topics::CONTENT_TYPE_HEADER) {
            return match header.value {
                None => Ok(None),
                Some(v) => std::str::from_utf8(v)
                    .map(Some)
                    .map_err(|_| Malformed::ContentTypeNotUtf8(what)),
            };
        }
    }
    Ok(None)
}

fn decode_transaction(message: &OwnedMessage) -> Result<Transaction, Malformed> {
    let ct = content_type(message, "transaction")?;
    let txn: Transaction = codec::decode(message.payload().unwrap_or_default(), ct)
        .map_err(|e| Malformed::Decode("transaction", e))?;
    validate::transaction(&txn, Some(now_ms()))
        .map_err(|e| Malformed::Invalid(e.prefixed("transaction")))?;
    Ok(txn)
}

fn decode_label(message: &OwnedMessage) -> Result<Label, Malformed> {
    let ct = content_type(message, "label")?;
    let label: Label = codec::decode(message.payload().unwrap_or_default(), ct)
        .map_err(|e| Malformed::Decode("label", e))?;
    validate::label(&label).map_err(|e| Malformed::Invalid(e.prefixed("label")))?;
    Ok(label)
}

/// `kafka_records{topic,outcome}` children, resolved once.
struct Outcomes {
    applied: IntCounter,
    duplicate: IntCounter,
    too_late: IntCounter,
    transactions_dead_lettered: IntCounter,
    label: IntCounter,
    labels_dead_lettered: IntCounter,
    /// Applied transactions the score-on-ingest queue had no room for.
    decisions_dropped: IntCounter,
}

impl Outcomes {
    fn new(metrics: &Metrics, config: &IngestConfig) -> Outcomes {
        let c =
            |topic: &str, outcome: &str| metrics.kafka_records.with_label_values(&[topic, outcome]);
        let (t, l) = (
            config.transactions_topic.as_str(),
            config.labels_topic.as_str(),
        );
        Outcomes {
            applied: c(t, "applied"),
            duplicate: c(t, "duplicate"),
            too_late: c(t, "too_late"),
            transactions_dead_lettered: c(t, "dead_lettered"),
            label: c(l, "label"),
            labels_dead_lettered: c(l, "dead_lettered"),
            decisions_dropped: metrics.decisions_dropped.with_label_values(&["queue_full"]),
        }
    }
}

/// A polled record on its way to the applier. Transactions come decoded: the poller needs
/// their event time to merge the partitions, and decoding once is enough.
struct Polled {
    message: OwnedMessage,
    transaction: Option<Result<Transaction, Malformed>>,
}

impl Polled {
    /// A record of the transactions topic, decoded.
    fn transaction(message: OwnedMessage) -> Polled {
        let transaction = Some(decode_transaction(&message));
        Polled {
            message,
            transaction,
        }
    }

    /// Any other record, decoded by the applier.
    fn other(message: OwnedMessage) -> Polled {
        Polled {
            message,
            transaction: None,
        }
    }

    /// The event time to merge partitions by; `i64::MIN` (first out) when undecodable.
    fn event_time_ms(&self) -> i64 {
        match &self.transaction {
            Some(Ok(t)) => t.event_time_ms,
            _ => i64::MIN,
        }
    }
}

/// The applier thread: records from the channel into the graph and the label book.
struct Applier {
    rx: Receiver<Polled>,
    live: Arc<LiveGraph>,
    labels: Arc<LabelBook>,
    shared: Arc<Shared>,
    dead_letters: DeadLetterProducer,
    on_applied: Option<Sender<Transaction>>,
    transactions_topic: String,
    labels_topic: String,
    dead_letter_topic: String,
    outcomes: Outcomes,
    malformed_log: Throttle,
}

impl Applier {
    /// Handles records in arrival order until the channel closes. Up to [`LOOKAHEAD`]
    /// records are read ahead when the channel has them, so that applying one starts
    /// loading what the next transactions need ([`Graph::prefetch_upcoming`]); they are
    /// handled in order all the same, and those read ahead are handled before the thread
    /// ends.
    ///
    /// [`Graph::prefetch_upcoming`]: fraudgraph_sampler::graph::Graph::prefetch_upcoming
    fn run(mut self) {
        let mut ahead: VecDeque<Polled> = VecDeque::with_capacity(LOOKAHEAD + 1);
        loop {
            if ahead.is_empty() {
                match self.rx.recv() {
                    Ok(polled) => ahead.push_back(polled),
                    Err(_) => return,
                }
            }
            while ahead.len() < LOOKAHEAD + 1 {
                match self.rx.try_recv() {
                    Ok(polled) => ahead.push_back(polled),
                    Err(_) => break,
                }
            }
            let polled = ahead.pop_front().expect("one record at least");
            let upcoming = ahead
                .iter()
                .filter_map(|p| p.transaction.as_ref().and_then(|t| t.as_ref().ok()));
            self.live.graph().prefetch_upcoming(upcoming);
            self.handle(polled);
        }
    }

    fn handle(&mut self, polled: Polled) {
        let Polled {
            message,
            transaction,
        } = polled;
        let message = &message;
        let source = if message.topic() == self.transactions_topic {
            Source::Transactions
        } else if message.topic() == self.labels_topic {
            Source::Labels
        } else {
            // Not subscribed; cannot happen, but never apply what we did not ask for.
            self.shared
                .progress
                .finished(message.topic(), message.partition(), message.offset());
            return;
        };
        let result = match source {
            Source::Transactions => transaction
                .unwrap_or_else(|| decode_transaction(message))
                .map(|txn| self.apply(&txn)),
            Source::Labels => decode_label(message).map(|label| {
                self.labels.record(&label);
                self.outcomes.label.inc();
            }),
        };
        if let Err(malformed) = result {
            match source {
                Source::Transactions => self.outcomes.transactions_dead_lettered.inc(),
                Source::Labels => self.outcomes.labels_dead_lettered.inc(),
            }
            self.dead_letter(message, &malformed);
        }
        self.shared
            .progress
            .finished(message.topic(), message.partition(), message.offset());
    }

    fn apply(&self, txn: &Transaction) {
        match self.live.apply(txn) {
            ApplyOutcome::Applied => {
                self.outcomes.applied.inc();
                self.labels.remember(txn);
                if let Some(tx) = &self.on_applied {
                    // Full (a replay's backlog outruns scoring) or gone: this one gets no
                    // decision, counted; ingestion never waits for scoring.
                    if tx.try_send(txn.clone()).is_err() {
                        self.outcomes.decisions_dropped.inc();
                    }
                }
            }
            ApplyOutcome::Duplicate => self.outcomes.duplicate.inc(),
            ApplyOutcome::TooLate => self.outcomes.too_late.inc(),
        }
    }

    /// Copies the record to the dead-letter topic; its offset is held until delivery.
    fn dead_letter(&mut self, message: &OwnedMessage, malformed: &Malformed) {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if self.malformed_log.allow() {
            tracing::warn!(
                partition,
                offset,
                "kafka: malformed record ({}) sent to the dead-letter topic",
                malformed.kind()
            );
        }
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                let ours = [
                    topics::ERROR_HEADER,
                    topics::SOURCE_TOPIC_HEADER,
                    SOURCE_PARTITION_HEADER,
                    SOURCE_OFFSET_HEADER,
                ];
                if !ours.contains(&h.key) {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
        }
        let error = malformed.header();
        let (partition_text, offset_text) = (partition.to_string(), offset.to_string());
        for (key, value) in [
            (topics::ERROR_HEADER, error.as_str()),
            (topics::SOURCE_TOPIC_HEADER, topic),
            (SOURCE_PARTITION_HEADER, partition_text.as_str()),
            (SOURCE_OFFSET_HEADER, offset_text.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        self.shared.progress.hold(topic, partition, offset);
        let tag = Box::new(DeadLetterTag {
            topic: topic.to_owned(),
            partition,
            offset,
        });
        let mut record: BaseRecord<'_, [u8], [u8], Box<DeadLetterTag>> =
            BaseRecord::with_opaque_to(&self.dead_letter_topic, tag).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        let mut stopping_since: Option<Instant> = None;
        loop {
            match self.dead_letters.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The broker is not taking records: wait, but not forever once asked to stop.
                    if self.shared.stop.load(Ordering::Acquire) {
                        let since = *stopping_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= FINAL_FLUSH {
                            tracing::error!(
                                partition,
                                offset,
                                "kafka: dead-letter queue still full at shutdown; the record's offset stays uncommitted"
                            );
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    record = back;
                }
                Err((err, _)) => {
                    tracing::error!(
                        partition,
                        offset,
                        "kafka: cannot produce a dead-letter record ({err}); letting it go"
                    );
                    self.shared.progress.release(topic, partition, offset);
                    return;
                }
            }
        }
    }
}

/// The assigned partitions of the transactions topic, and those of them that may hold
/// records older than what the partition merge has queued: their next offset is below the
/// high watermark of the last fetch, or no fetch has reported one yet.
#[derive(Default)]
struct AlignView {
    partitions: Vec<i32>,
    behind: Vec<i32>,
}

/// The poller thread: owns the consumer.
struct Poller {
    consumer: BaseConsumer<ConsumerState>,
    tx: Sender<Polled>,
    /// The applier thread; taken when it is joined.
    applier: Option<JoinHandle<()>>,
    dead_letters: DeadLetterProducer,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    commit_every: Duration,
    capacity: usize,
    paused: bool,
    /// Offsets last committed per partition.
    committed: HashMap<(String, i32), i64>,
    /// The first high watermark seen per partition: the target of [`Ingest::caught_up`].
    start_high: HashMap<(String, i32), i64>,
    /// Partitions with a lag gauge, to remove the gauges of revoked ones.
    lag_gauges: Vec<(String, i32)>,
    assigned_once: bool,
    poll_log: Throttle,
    transactions_topic: String,
    /// Polled transactions, by partition of the transactions topic, merged in event-time
    /// order.
    aligner: Aligner<i32, Polled>,
    /// Which transactions partitions are behind, as of `align_view_at`.
    align_view: AlignView,
    align_view_at: Option<Instant>,
    align_log: Throttle,
}

impl Poller {
    fn run(mut self) -> anyhow::Result<()> {
        let mut backlog: VecDeque<Polled> = VecDeque::new();
        let mut last_commit = Instant::now();
        let mut last_lag: Option<Instant> = None;
        let mut applier_gone = false;
        while !self.shared.stop.load(Ordering::Acquire) {
            // Move what the merge releases behind what is already buffered.
            if !self.paused {
                self.release_aligned(&mut backlog);
            }
            // Hand what is buffered here to the applier, in order.
            while let Some(message) = backlog.pop_front() {
                match self.tx.try_send(message) {
                    Ok(()) => {}
                    Err(TrySendError::Full(message)) => {
                        backlog.push_front(message);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        applier_gone = true;
                        break;
                    }
                }
            }
            if applier_gone || self.applier.as_ref().is_none_or(JoinHandle::is_finished) {
                tracing::error!("kafka: the applier thread stopped; stopping consumption");
                break;
            }
            self.backpressure(backlog.len());

            // Paused or holding records: come back soon to resume or hand them over.
            let wait = if backlog.is_empty() && !self.paused && self.aligner.is_empty() {
                POLL_WAIT
            } else {
                Duration::from_millis(10)
            };
            match self.consumer.poll(wait) {
                Some(Ok(message)) => {
                    let state = self.consumer.context();
                    state.polled(message.topic(), message.partition(), message.offset());
                    let owned = message.detach();
                    if owned.topic() == self.transactions_topic {
                        let partition = owned.partition();
                        let polled = Polled::transaction(owned);
                        self.aligner.push(partition, polled.event_time_ms(), polled);
                    } else if backlog.is_empty() {
                        match self.tx.try_send(Polled::other(owned)) {
                            Ok(()) => {}
                            Err(TrySendError::Full(polled)) => backlog.push_back(polled),
                            Err(TrySendError::Disconnected(_)) => applier_gone = true,
                        }
                    } else {
                        backlog.push_back(Polled::other(owned));
                    }
                }
                Some(Err(err)) if self.poll_log.allow() => {
                    tracing::warn!("kafka: consumer error: {err}; retrying");
                }
                Some(Err(_)) | None => {}
            }

            if self
                .consumer
                .context()
                .assignment_changed
                .swap(false, Ordering::AcqRel)
            {
                self.assigned_once = true;
                if self.paused {
                    self.set_paused(true);
                }
                last_lag = None;
                self.align_view_at = None;
            }
            if self
                .consumer
                .context()
                .commit_failed
                .swap(false, Ordering::AcqRel)
            {
                self.committed.clear();
            }
            if last_commit.elapsed() >= self.commit_every {
                self.commit(CommitMode::Async);
                last_commit = Instant::now();
            }
            if last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
                self.refresh_lag();
                last_lag = Some(Instant::now());
            }
        }
        self.finish(backlog)
    }

    /// Moves the transactions the merge releases, in event-time order, to `backlog` (while
    /// it holds fewer than `capacity`).
    fn release_aligned(&mut self, backlog: &mut VecDeque<Polled>) {
        if self.aligner.is_empty() {
            self.metrics.kafka_merge_held.set(0);
            return;
        }
        let now = Instant::now();
        if self
            .align_view_at
            .is_none_or(|at| now.duration_since(at) >= ALIGN_REFRESH)
        {
            self.align_view = self.partitions_behind();
            self.align_view_at = Some(now);
        }
        let gave_up = self.aligner.gave_up();
        let AlignView { partitions, behind } = &self.align_view;
        while backlog.len() < self.capacity {
            match self.aligner.pop(partitions, |p| behind.contains(p), now) {
                Some(message) => backlog.push_back(message),
                None => break,
            }
        }
        self.metrics
            .kafka_merge_held
            .set(self.aligner.len().try_into().unwrap_or(i64::MAX));
        let gave_up_now = self.aligner.gave_up() - gave_up;
        self.metrics.kafka_merge_gave_up.inc_by(gave_up_now);
        if gave_up_now > 0 && self.align_log.allow() {
            tracing::info!(
                held = self.aligner.len(),
                "kafka: a transactions partition with nothing queued held the event-time merge \
                 back for {ALIGN_WAIT:?} (or the merge is full); applying the others without it"
            );
        }
    }

    /// The assigned transactions partitions, and those that may hold records older than
    /// what is queued.
    fn partitions_behind(&self) -> AlignView {
        let state = self.consumer.context();
        let topic = self.transactions_topic.as_str();
        let partitions: Vec<i32> = state
            .assigned()
            .into_iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p)
            .collect();
        let positions = state.positions.lock();
        let watermarks = state.watermarks.lock();
        let (positions, watermarks) = (positions.get(topic), watermarks.get(topic));
        let behind = partitions
            .iter()
            .copied()
            .filter(|partition| {
                let Some(w) = watermarks.and_then(|m| m.get(partition)) else {
                    return true;
                };
                let next = positions
                    .and_then(|m| m.get(partition))
                    .copied()
                    .unwrap_or(w.low);
                next < w.high
            })
            .collect();
        AlignView { partitions, behind }
    }

    /// Pauses every assigned partition when the channel is 80% full, resumes at 20%.
    fn backpressure(&mut self, backlog: usize) {
        let queued = self.tx.len();
        let high = (self.capacity * 8).div_ceil(10).max(1);
        let low = self.capacity * 2 / 10;
        if !self.paused && queued + backlog >= high {
            self.set_paused(true);
        } else if self.paused && backlog == 0 && queued <= low {
            self.set_paused(false);
        }
    }

    fn set_paused(&mut self, pause: bool) {
        let result = self.consumer.assignment().and_then(|tpl| {
            if pause {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            }
        });
        match result {
            Ok(()) => {
                if pause != self.paused {
                    tracing::debug!(paused = pause, "kafka: backpressure");
                }
                self.paused = pause;
                self.metrics.kafka_paused.set(i64::from(pause));
            }
            Err(err) => {
                if self.poll_log.allow() {
                    tracing::warn!("kafka: pausing or resuming partitions failed: {err}");
                }
            }
        }
    }

    /// Commits the applier's progress on the assigned partitions where it moved.
    fn commit(&mut self, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        let mut pending = Vec::new();
        for (topic, partition) in self.consumer.context().assigned() {
            let Some(safe) = self.shared.progress.safe(&topic, partition) else {
                continue;
            };
            let key = (topic, partition);
            if self.committed.get(&key) != Some(&safe)
                && tpl
                    .add_partition_offset(&key.0, key.1, Offset::Offset(safe))
                    .is_ok()
            {
                pending.push((key, safe));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) => self.committed.extend(pending),
            Err(err) => {
                if self.poll_log.allow() {
                    tracing::warn!("kafka: committing offsets failed: {err}; will retry");
                }
            }
        }
    }

    /// Asks the brokers for the high watermarks and publishes the lag.
    fn refresh_lag(&mut self) {
        let assigned = self.consumer.context().assigned();
        let watermarks = self.consumer.context().watermarks.lock().clone();
        let mut lags = Vec::with_capacity(assigned.len());
        let mut total = 0i64;
        let mut reached = true;
        for (topic, partition) in &assigned {
            let Some(&Watermarks { low, high }) =
                watermarks.get(topic).and_then(|m| m.get(partition))
            else {
                // Not fetched from yet: lag unknown, so not caught up either.
                reached = false;
                continue;
            };
            let progress = &self.shared.progress;
            let safe = progress.safe(topic, *partition).unwrap_or(low).max(low);
            let lag = (high - safe).max(0);
            total += lag;
            self.metrics
                .kafka_lag
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(lag);
            lags.push(PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                lag,
            });
            let target = *self
                .start_high
                .entry((topic.clone(), *partition))
                .or_insert(high);
            let applied = progress
                .applied_next(topic, *partition)
                .unwrap_or(low)
                .max(low);
            reached &= applied >= target;
        }
        for gone in self.lag_gauges.iter().filter(|g| !assigned.contains(g)) {
            let _ = self
                .metrics
                .kafka_lag
                .remove_label_values(&[gone.0.as_str(), &gone.1.to_string()]);
        }
        self.lag_gauges = assigned;
        self.metrics.kafka_lag_total.set(total);
        *self.shared.lag.lock() = (lags, total);
        if reached && self.assigned_once && !self.shared.caught_up.swap(true, Ordering::AcqRel) {
            tracing::info!("kafka: caught up with the topics");
        }
    }

    /// Stops: everything buffered is applied, dead letters flushed, progress committed.
    fn finish(mut self, backlog: VecDeque<Polled>) -> anyhow::Result<()> {
        let held = self.aligner.drain();
        self.metrics.kafka_merge_held.set(0);
        for message in backlog.into_iter().chain(held) {
            if self.tx.send(message).is_err() {
                break;
            }
        }
        // Dropping the only sender ends the applier once it has drained the channel.
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.tx, closed));
        let applied = self.applier.take().map_or(Ok(()), |applier| applier.join());
        if let Err(err) = self.dead_letters.flush(FINAL_FLUSH) {
            tracing::error!(
                "kafka: dead-letter records still undelivered after {FINAL_FLUSH:?} ({err}); their offsets stay uncommitted"
            );
        }
        self.commit(CommitMode::Sync);
        self.metrics.kafka_paused.set(0);
        if applied.is_err() {
            bail!("the Kafka applier thread panicked");
        }
        Ok(())
    }
}

/// The running Kafka ingestion: a poller and an applier thread (see the module docs). Owns
/// the consumer, the dead-letter producer and the progress of every partition; stop it with
/// [`Ingest::shutdown`] to apply what is buffered and commit.
pub struct Ingest {
    shared: Arc<Shared>,
    poller: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Ingest {
    /// Starts the poller and applier threads. `resume`: offsets from the graph snapshot the
    /// service started from (empty without one): partitions in it are read from there, the
    /// others from the beginning. Creates missing topics when `create_topics` is set. Fails
    /// when the brokers do not answer within [`CONNECT_TIMEOUT`]. Blocks for up to that long:
    /// call it before the async runtime starts or from a blocking thread.
    pub fn start(
        config: &IngestConfig,
        live: Arc<LiveGraph>,
        labels: Arc<LabelBook>,
        metrics: Arc<Metrics>,
        resume: &Offsets,
        on_applied: Option<Sender<Transaction>>,
    ) -> anyhow::Result<Ingest> {
        Self::start_within(
            config,
            live,
            labels,
            metrics,
            resume,
            on_applied,
            CONNECT_TIMEOUT,
        )
    }

    /// [`Ingest::start`], waiting `connect_timeout` for the brokers.
    fn start_within(
        config: &IngestConfig,
        live: Arc<LiveGraph>,
        labels: Arc<LabelBook>,
        metrics: Arc<Metrics>,
        resume: &Offsets,
        on_applied: Option<Sender<Transaction>>,
        connect_timeout: Duration,
    ) -> anyhow::Result<Ingest> {
        config.check()?;
        let brokers = config.brokers.as_str();
        let shared = Arc::new(Shared {
            progress: Progress::new(resume),
            stop: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            lag: Mutex::new((Vec::new(), 0)),
            dead_lettered: AtomicU64::new(0),
        });
        let consumer: BaseConsumer<ConsumerState> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &config.group_id)
            .set("client.id", "fraudgraph-ingest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", LAG_EVERY.as_millis().to_string())
            // The longest a fetch waits for new records: bounds how stale the graph gets, and
            // how long a resumed partition waits behind a fetch already in flight.
            .set("fetch.wait.max.ms", "100")
            .create_with_context(ConsumerState::new(Arc::clone(&shared), resume))
            .with_context(|| format!("creating a Kafka consumer for {brokers}"))?;
        check_reachable(consumer.client(), brokers, connect_timeout)?;

        if config.create_topics {
            let topics = [
                config.transactions_topic.as_str(),
                &config.labels_topic,
                &config.dead_letter_topic,
                &config.decisions_topic,
            ];
            // ensure_topics runs a runtime of its own: keep it off any caller's runtime.
            std::thread::scope(|s| {
                s.spawn(|| kafka::ensure_topics(brokers, &topics, config.partitions))
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("topic creation panicked")))
            })
            .with_context(|| format!("creating the Kafka topics at {brokers}"))?;
        }

        let dead_letters: DeadLetterProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "fraudgraph-dead-letter")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Retry while the broker is away: an undelivered dead letter holds its offset.
            .set("message.timeout.ms", "0")
            .create_with_context(DeadLetterReports {
                shared: Arc::clone(&shared),
                metrics: Arc::clone(&metrics),
            })
            .with_context(|| format!("creating the dead-letter producer for {brokers}"))?;

        // Every replica keeps the whole graph, so it reads every partition: assigned here,
        // not split by the group coordinator (see the module docs).
        let mut all = TopicPartitionList::new();
        for topic in [&config.transactions_topic, &config.labels_topic] {
            let metadata = consumer
                .fetch_metadata(Some(topic), connect_timeout)
                .with_context(|| format!("reading the partitions of {topic} at {brokers}"))?;
            let partitions = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if partitions == 0 {
                bail!("topic {topic} does not exist at {brokers} (set kafka.create_topics)");
            }
            for p in 0..partitions {
                all.add_partition(topic, p as i32);
            }
        }
        consumer.context().assign(&consumer, &all);
        consumer
            .context()
            .assignment_changed
            .store(true, Ordering::Release);

        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity);
        let late_window_ms = live.graph().config().late_window_ms;
        let applier = Applier {
            rx,
            live,
            labels,
            shared: Arc::clone(&shared),
            dead_letters: dead_letters.clone(),
            on_applied,
            transactions_topic: config.transactions_topic.clone(),
            labels_topic: config.labels_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            outcomes: Outcomes::new(&metrics, config),
            malformed_log: Throttle::new("malformed-record warnings"),
        };
        let applier = std::thread::Builder::new()
            .name("kafka-applier".into())
            .spawn(move || applier.run())
            .context("starting the Kafka applier thread")?;
        let poller = Poller {
            consumer,
            tx,
            applier: Some(applier),
            dead_letters,
            shared: Arc::clone(&shared),
            metrics,
            commit_every: Duration::from_millis(config.commit_interval_ms),
            capacity: config.queue_capacity,
            paused: false,
            committed: HashMap::new(),
            start_high: HashMap::new(),
            lag_gauges: Vec::new(),
            assigned_once: false,
            poll_log: Throttle::new("consumer warnings"),
            transactions_topic: config.transactions_topic.clone(),
            aligner: Aligner::new(
                config.queue_capacity.saturating_mul(ALIGN_HOLD_PER_QUEUED),
                ALIGN_WAIT,
                late_window_ms / 2,
            ),
            align_view: AlignView::default(),
            align_view_at: None,
            align_log: Throttle::new("partition merge notices"),
        };
        let poller = std::thread::Builder::new()
            .name("kafka-poller".into())
            .spawn(move || poller.run())
            .context("starting the Kafka poller thread")?;
        Ok(Ingest {
            shared,
            poller: Some(poller),
        })
    }

    /// Where the consumer stands: per-partition lag (high watermark minus the applied
    /// offset, as of the last refresh, about a second old), its total, and the records
    /// delivered to the dead-letter topic since start.
    pub fn status(&self) -> KafkaStatus {
        let (partitions, total_lag) = self.shared.lag.lock().clone();
        KafkaStatus {
            enabled: true,
            partitions,
            total_lag,
            dead_lettered: self.shared.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Offsets before which every record is applied (or dead-lettered and delivered), per
    /// partition, including the resume offsets of partitions not read since. Safe to record
    /// in a snapshot taken *after* this call: the graph then holds at least this much, and
    /// re-applying the rest on restart is idempotent.
    pub fn applied_offsets(&self) -> Offsets {
        self.shared.progress.safe_offsets()
    }

    /// True once every assigned partition has been applied up to the high watermark first
    /// seen for it (the backlog at start); stays true afterwards. For readiness.
    pub fn caught_up(&self) -> bool {
        self.shared.caught_up.load(Ordering::Acquire)
    }

    /// Stops polling, applies everything already buffered, flushes the dead-letter producer
    /// (up to 10 s), commits the progress synchronously, leaves the group, joins both threads
    /// and returns [`Ingest::applied_offsets`]. Fails only when a thread panicked. Blocks.
    pub fn shutdown(mut self) -> anyhow::Result<Offsets> {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            poller
                .join()
                .map_err(|_| anyhow::anyhow!("the Kafka poller thread panicked"))?
                .context("stopping the Kafka ingestion")?;
        }
        Ok(self.applied_offsets())
    }
}

impl Drop for Ingest {
    /// Without [`Ingest::shutdown`], the threads are told to stop and finish in the background.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Delivery reports of the decisions producer.
struct DecisionReports {
    metrics: Arc<Metrics>,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DecisionReports {}

impl ProducerContext for DecisionReports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.metrics.decisions_produced.inc(),
            Err((err, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .get_or_insert_with(|| err.to_string());
            }
        }
    }
}

/// Writes ScoreResponses to the decisions topic, keyed by account_id, protobuf payload with
/// content-type header; counts metrics.decisions_produced on delivery. Sends do not wait for
/// the broker (librdkafka delivers in the background); [`DecisionProducer::flush`] reports
/// decisions that could not be delivered.
pub struct DecisionProducer {
    producer: ThreadedProducer<DecisionReports>,
    topic: String,
}

impl DecisionProducer {
    /// Connects to `config.brokers`; fails when they do not answer within
    /// [`CONNECT_TIMEOUT`]. Blocks: call it off the async runtime.
    pub fn connect(config: &IngestConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        config.check()?;
        let brokers = config.brokers.as_str();
        let producer: ThreadedProducer<DecisionReports> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "fraudgraph-decisions")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create_with_context(DecisionReports {
                metrics,
                failed: AtomicU64::new(0),
                first_error: Mutex::new(None),
            })
            .with_context(|| format!("creating the decisions producer for {brokers}"))?;
        check_reachable(producer.client(), brokers, CONNECT_TIMEOUT)?;
        Ok(DecisionProducer {
            producer,
            topic: config.decisions_topic.clone(),
        })
    }

    /// Queues one decision. Waits at most 100 ms for room when librdkafka's queue is full,
    /// then fails (the broker is not keeping up or is unreachable).
    pub fn send(&self, account_id: &str, response: &ScoreResponse) -> anyhow::Result<()> {
        let payload = prost::Message::encode_to_vec(response);
        let headers = OwnedHeaders::new().insert(Header {
            key: topics::CONTENT_TYPE_HEADER,
            value: Some(PayloadFormat::Protobuf.content_type()),
        });
        let mut record = BaseRecord::to(&self.topic)
            .key(account_id)
            .payload(&payload)
            .headers(headers);
        let deadline = Instant::now() + DECISION_QUEUE_WAIT;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                    record = back;
                }
                Err((err, _)) => {
                    return Err(err)
                        .with_context(|| format!("producing a decision to {}", self.topic));
                }
            }
        }
    }

    /// Waits until every queued decision is delivered or failed; errors when any failed
    /// since the previous flush.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer
            .flush(timeout)
            .with_context(|| format!("flushing decisions to {}", self.topic))?;
        let failed = self.producer.context().failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let first = self
                .producer
                .context()
                .first_error
                .lock()
                .take()
                .unwrap_or_default();
            bail!(
                "{failed} decisions were not delivered to {}; first error: {first}",
                self.topic
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use fraudgraph_proto::v1::stream_record::Record;
    use fraudgraph_proto::v1::{Decision, Typology};
    use fraudgraph_sampler::NodeType;
    use fraudgraph_sampler::graph::{Graph, GraphConfig};
    use fraudgraph_simulator::{SimConfig, Simulation};
    use rdkafka::producer::BaseProducer;

    use super::support::Tansu;
    use super::*;

    const DAY_MS: i64 = 86_400_000;
    const WAIT: Duration = Duration::from_secs(60);

    /// Windows wide enough that the order in which partitions are read never matters: every
    /// simulated transaction is applied, whatever the interleaving.
    fn graph_config() -> GraphConfig {
        GraphConfig {
            late_window_ms: 400 * DAY_MS,
            dedupe_window_ms: 400 * DAY_MS,
            retention_ms: 800 * DAY_MS,
            adjacency_cap: 1 << 20,
            ..GraphConfig::default()
        }
    }

    /// One record as the tests produce it.
    #[derive(Clone)]
    struct Produced {
        topic: String,
        key: Vec<u8>,
        payload: Vec<u8>,
        content_type: Option<&'static str>,
    }

    /// The simulated stream as Kafka records: protobuf, JSON and header-less JSON in turn.
    fn stream(transactions: u64, seed: u64) -> (Vec<Produced>, Vec<Transaction>) {
        let sim = Simulation::generate(&SimConfig {
            transactions,
            seed,
            ..SimConfig::default()
        })
        .expect("valid simulation config");
        let mut records = Vec::new();
        let mut txns = Vec::new();
        for (i, record) in sim.records().enumerate() {
            let format = if i % 2 == 0 {
                PayloadFormat::Protobuf
            } else {
                PayloadFormat::Json
            };
            let content_type = (i % 3 != 0).then(|| format.content_type());
            records.push(match record.record.expect("a record") {
                Record::Transaction(t) => {
                    let r = Produced {
                        topic: topics::TRANSACTIONS.into(),
                        key: t.account_id.clone().into_bytes(),
                        payload: codec::encode(&t, format),
                        content_type,
                    };
                    txns.push(t);
                    r
                }
                Record::Label(l) => Produced {
                    topic: topics::LABELS.into(),
                    key: l.txn_id.clone().into_bytes(),
                    payload: codec::encode(&l, format),
                    content_type,
                },
            });
        }
        (records, txns)
    }

    /// Produces `records`, one record per batch: tansu 0.6 answers a fetch from an offset
    /// inside a batch with the batches *after* it only, so a consumer that pauses (purging
    /// its prefetched records) or resumes from a snapshot mid-batch would skip the rest of
    /// that batch. Kafka returns the whole batch; this keeps the tests about our code.
    fn produce(brokers: &str, records: &[Produced]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()
            .expect("a producer");
        for r in records {
            let mut record = BaseRecord::to(&r.topic).key(&r.key).payload(&r.payload);
            if let Some(ct) = r.content_type {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: topics::CONTENT_TYPE_HEADER,
                    value: Some(ct),
                }));
            }
            producer.send(record).map_err(|(e, _)| e).expect("queued");
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(30)).expect("delivered");
    }

    fn create_topics(brokers: &str) {
        kafka::ensure_topics(
            brokers,
            &[
                topics::TRANSACTIONS,
                topics::LABELS,
                topics::DEAD_LETTER,
                topics::DECISIONS,
            ],
            3,
        )
        .expect("topics created");
    }

    fn config(brokers: &str, group: &str) -> IngestConfig {
        IngestConfig {
            brokers: brokers.into(),
            group_id: group.into(),
            queue_capacity: 128,
            commit_interval_ms: 100,
            ..IngestConfig::default()
        }
    }

    /// A live graph with the test windows, a label book and fresh metrics.
    struct Rig {
        live: Arc<LiveGraph>,
        labels: Arc<LabelBook>,
        metrics: Arc<Metrics>,
    }

    impl Rig {
        fn new(graph: Graph) -> Rig {
            let metrics = Arc::new(Metrics::new());
            Rig {
                live: Arc::new(LiveGraph::new(graph, Arc::clone(&metrics))),
                labels: Arc::new(LabelBook::new(100_000, 100_000)),
                metrics,
            }
        }

        fn start(&self, config: &IngestConfig, resume: &Offsets) -> Ingest {
            self.start_with(config, resume, None)
        }

        fn start_with(
            &self,
            config: &IngestConfig,
            resume: &Offsets,
            on_applied: Option<Sender<Transaction>>,
        ) -> Ingest {
            Ingest::start(
                config,
                Arc::clone(&self.live),
                Arc::clone(&self.labels),
                Arc::clone(&self.metrics),
                resume,
                on_applied,
            )
            .expect("ingest starts")
        }

        fn count(&self, topic: &str, outcome: &str) -> u64 {
            self.metrics
                .kafka_records
                .with_label_values(&[topic, outcome])
                .get()
        }

        fn applied(&self) -> u64 {
            self.count(topics::TRANSACTIONS, "applied")
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every record of `topic`, read from the beginning of each partition.
    fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<OwnedMessage> {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a reader");
        let metadata = reader
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("valid partition");
        }
        reader.assign(&tpl).expect("assigned");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Read until the expected count, then a little longer to catch extra records.
        let mut settle: Option<Instant> = None;
        while Instant::now() < deadline
            && settle.is_none_or(|s| s.elapsed() < Duration::from_millis(500))
        {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
                out.push(m.detach());
            }
            if out.len() >= expected && settle.is_none() {
                settle = Some(Instant::now());
            }
        }
        out
    }

    fn header<'m>(m: &'m OwnedMessage, key: &str) -> Option<&'m str> {
        m.headers()?
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    /// The group's committed offsets for the partitions in `offsets`.
    fn committed(brokers: &str, group: &str, offsets: &Offsets) -> Offsets {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("a reader");
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in offsets.keys() {
            tpl.add_partition(topic, *partition);
        }
        let answer = reader
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        answer
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect()
    }

    fn sum(offsets: &Offsets, topic: &str) -> i64 {
        offsets
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|(_, o)| o)
            .sum()
    }

    /// The node and edge counts of a graph that applied `txns` directly.
    fn direct(txns: &[Transaction]) -> ([u64; NodeType::ALL.len()], u64) {
        let graph = Graph::new(graph_config());
        for t in txns {
            assert_eq!(graph.apply(t), ApplyOutcome::Applied);
        }
        let s = graph.stats();
        (s.nodes, s.edges)
    }

    fn shape(graph: &Graph) -> ([u64; NodeType::ALL.len()], u64) {
        let s = graph.stats();
        (s.nodes, s.edges)
    }

    #[test]
    fn malformed_records_are_dead_lettered_and_the_rest_applied_once() {
        let tansu = Tansu::start();
        let brokers = tansu.brokers.as_str();
        create_topics(brokers);
        let (records, txns) = stream(600, 11);
        let labels = records.iter().filter(|r| r.topic == topics::LABELS).count() as u64;
        assert!(labels > 0, "the simulation has labels");

        let mut bad_amount = txns[0].clone();
        bad_amount.txn_id = "bad-amount".into();
        bad_amount.amount_minor = 0;
        let mut bad_ct = txns[1].clone();
        bad_ct.txn_id = "bad-content-type".into();
        let bad_label = Label {
            txn_id: txns[2].txn_id.clone(),
            is_fraud: false,
            typology: Typology::Ring as i32,
            reported_at_ms: txns[2].event_time_ms + DAY_MS,
        };
        let malformed = vec![
            Produced {
                topic: topics::TRANSACTIONS.into(),
                key: b"bad-json".to_vec(),
                payload: br#"{"txn_id": "t-1", "amount_minor": "#.to_vec(),
                content_type: Some("application/json"),
            },
            Produced {
                topic: topics::TRANSACTIONS.into(),
                key: bad_amount.account_id.clone().into_bytes(),
                payload: codec::encode(&bad_amount, PayloadFormat::Protobuf),
                content_type: Some("application/x-protobuf"),
            },
            Produced {
                topic: topics::TRANSACTIONS.into(),
                key: bad_ct.account_id.clone().into_bytes(),
                payload: codec::encode(&bad_ct, PayloadFormat::Json),
                content_type: Some("text/csv"),
            },
            Produced {
                topic: topics::LABELS.into(),
                key: bad_label.txn_id.clone().into_bytes(),
                payload: codec::encode(&bad_label, PayloadFormat::Json),
                content_type: None,
            },
        ];
        // Half the stream and the malformed records before start, the rest while running.
        let half = records.len() / 2;
        produce(brokers, &records[..half]);
        produce(brokers, &malformed);

        let rig = Rig::new(Graph::new(graph_config()));
        let config = config(brokers, "ingest-malformed");
        let (applied_tx, applied_rx) = crossbeam_channel::bounded(10_000);
        let ingest = rig.start_with(&config, &Offsets::new(), Some(applied_tx));
        wait_until("catching up", || ingest.caught_up());
        let before: u64 = records[..half]
            .iter()
            .filter(|r| r.topic == topics::TRANSACTIONS)
            .count() as u64;
        assert_eq!(
            rig.applied(),
            before,
            "caught up means the backlog is applied"
        );

        produce(brokers, &records[half..]);
        let n = txns.len() as u64;
        wait_until("every transaction applied", || rig.applied() >= n);
        wait_until("every label read", || {
            rig.count(topics::LABELS, "label") >= labels
        });
        wait_until("dead letters delivered", || {
            ingest.status().dead_lettered >= 4
        });
        wait_until("lag 0", || {
            let s = ingest.status();
            s.total_lag == 0 && !s.partitions.is_empty()
        });
        let status = ingest.status();
        assert!(status.enabled);
        assert_eq!(
            status.partitions.len(),
            6,
            "3 partitions of each topic: {status:?}"
        );
        assert_eq!(status.dead_lettered, 4);

        let offsets = ingest.shutdown().expect("clean shutdown");
        assert_eq!(rig.applied(), n, "each transaction applied once");
        assert_eq!(rig.count(topics::TRANSACTIONS, "duplicate"), 0);
        assert_eq!(rig.count(topics::TRANSACTIONS, "too_late"), 0);
        assert_eq!(rig.count(topics::TRANSACTIONS, "dead_lettered"), 3);
        assert_eq!(rig.count(topics::LABELS, "label"), labels);
        assert_eq!(rig.count(topics::LABELS, "dead_lettered"), 1);
        assert_eq!(rig.metrics.graph_transactions.get(), n);
        assert_eq!(rig.metrics.kafka_dead_lettered.get(), 4);
        let (credited, unknown) = rig.labels.totals();
        assert_eq!(
            credited + unknown,
            labels,
            "every valid label reached the book"
        );
        assert_eq!(shape(rig.live.graph()), direct(&txns));
        let mut handed_on: Vec<String> = applied_rx.try_iter().map(|t| t.txn_id).collect();
        handed_on.sort();
        let mut expected: Vec<String> = txns.iter().map(|t| t.txn_id.clone()).collect();
        expected.sort();
        assert_eq!(
            handed_on, expected,
            "every applied transaction handed on once"
        );

        // Offsets: one past the last record of every partition, and committed to the group.
        assert_eq!(sum(&offsets, topics::TRANSACTIONS), n as i64 + 3);
        assert_eq!(sum(&offsets, topics::LABELS), labels as i64 + 1);
        assert_eq!(committed(brokers, "ingest-malformed", &offsets), offsets);

        // The dead-letter topic: original bytes and key, the error naming the field.
        let dead = read_topic(brokers, topics::DEAD_LETTER, 4);
        assert_eq!(
            dead.len(),
            4,
            "exactly the malformed records are dead-lettered"
        );
        for bad in &malformed {
            let copy = dead
                .iter()
                .find(|m| m.payload() == Some(bad.payload.as_slice()))
                .expect("each malformed record is in the dead-letter topic");
            assert_eq!(copy.key(), Some(bad.key.as_slice()));
            assert_eq!(
                header(copy, topics::SOURCE_TOPIC_HEADER),
                Some(bad.topic.as_str())
            );
            let partition: i32 = header(copy, SOURCE_PARTITION_HEADER)
                .unwrap()
                .parse()
                .unwrap();
            let offset: i64 = header(copy, SOURCE_OFFSET_HEADER).unwrap().parse().unwrap();
            assert!((0..3).contains(&partition));
            assert!(offset < offsets[&(bad.topic.clone(), partition)]);
            assert_eq!(header(copy, topics::CONTENT_TYPE_HEADER), bad.content_type);
        }
        let errors: Vec<&str> = dead
            .iter()
            .map(|m| header(m, topics::ERROR_HEADER).expect("an error header"))
            .collect();
        for expected in [
            "transaction: invalid JSON payload",
            "transaction.amount_minor: must be at least 1",
            "transaction: unsupported content-type \"text/csv\"",
            "label.typology: must be TYPOLOGY_UNSPECIFIED",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "no error starting with {expected:?} in {errors:?}"
            );
        }
    }

    #[test]
    fn restart_from_a_snapshot_resumes_at_its_offsets() {
        let tansu = Tansu::start();
        let brokers = tansu.brokers.as_str();
        create_topics(brokers);
        let (records, txns) = stream(900, 12);
        let n = txns.len() as u64;
        let first = records.len() * 2 / 3;
        produce(brokers, &records[..first]);

        // Stop part-way through the first two thirds, with records still buffered.
        let mut config = config(brokers, "ingest-resume");
        config.queue_capacity = 64;
        let rig = Rig::new(Graph::new(graph_config()));
        let ingest = rig.start(&config, &Offsets::new());
        wait_until("a third applied", || rig.applied() >= n / 3);
        let offsets = ingest.shutdown().expect("clean shutdown");
        let applied_before = rig.applied();
        assert!(!offsets.is_empty());

        let bytes = rig.live.graph().snapshot_bytes(&offsets);
        let (graph, restored) =
            Graph::from_snapshot_bytes(&bytes, &graph_config(), Path::new("snapshot"))
                .expect("snapshot reads back");
        assert_eq!(restored, offsets);
        produce(brokers, &records[first..]);

        let again = Rig::new(graph);
        let ingest = again.start(&config, &restored);
        wait_until("every transaction applied", || {
            applied_before + again.applied() >= n
        });
        wait_until("catching up", || ingest.caught_up());
        let final_offsets = ingest.shutdown().expect("clean shutdown");

        assert_eq!(applied_before + again.applied(), n, "none applied twice");
        assert_eq!(
            again.count(topics::TRANSACTIONS, "duplicate"),
            0,
            "the restart read on exactly where the snapshot stopped"
        );
        assert_eq!(
            sum(&final_offsets, topics::TRANSACTIONS),
            n as i64,
            "every transaction record consumed"
        );
        for t in &txns {
            assert_eq!(
                again.live.graph().apply(t),
                ApplyOutcome::Duplicate,
                "none lost"
            );
        }
        assert_eq!(shape(again.live.graph()), direct(&txns));
    }

    #[test]
    fn rereading_everything_is_idempotent() {
        let tansu = Tansu::start();
        let brokers = tansu.brokers.as_str();
        create_topics(brokers);
        let (records, txns) = stream(400, 13);
        let n = txns.len() as u64;
        produce(brokers, &records);

        let rig = Rig::new(Graph::new(graph_config()));
        let config = config(brokers, "ingest-reread");
        let ingest = rig.start(&config, &Offsets::new());
        wait_until("catching up", || ingest.caught_up());
        let first = ingest.shutdown().expect("clean shutdown");
        assert_eq!(rig.applied(), n);
        let shape_once = shape(rig.live.graph());

        // Same group, committed offsets at the end, yet no resume offsets: read it all again.
        let ingest = rig.start(&config, &Offsets::new());
        wait_until("catching up", || ingest.caught_up());
        let second = ingest.shutdown().expect("clean shutdown");
        assert_eq!(second, first);
        assert_eq!(rig.applied(), n, "nothing applied twice");
        assert_eq!(
            rig.count(topics::TRANSACTIONS, "duplicate"),
            n,
            "all read again"
        );
        assert_eq!(rig.metrics.graph_transactions.get(), n);
        assert_eq!(shape(rig.live.graph()), shape_once);
        assert_eq!(shape_once, direct(&txns));
    }

    #[test]
    fn a_backlog_on_several_partitions_is_applied_in_event_time_order() {
        let tansu = Tansu::start();
        let brokers = tansu.brokers.as_str();
        create_topics(brokers);
        // 3,000 transactions over the simulated months: about 40 minutes apart, so reading
        // one partition a few records ahead of another already passes the 1 h late window.
        let (records, txns) = stream(3_000, 17);
        let n = txns.len() as u64;
        produce(brokers, &records);
        let by_partition = read_topic(brokers, topics::TRANSACTIONS, txns.len())
            .iter()
            .fold([0usize; 3], |mut c, m| {
                c[m.partition() as usize] += 1;
                c
            });
        assert!(by_partition.iter().all(|&c| c > 500), "{by_partition:?}");

        // The production late window; only eviction is kept out of the way.
        let rig = Rig::new(Graph::new(GraphConfig {
            late_window_ms: GraphConfig::default().late_window_ms,
            ..graph_config()
        }));
        let ingest = rig.start(&config(brokers, "ingest-backlog"), &Offsets::new());
        wait_until("catching up", || ingest.caught_up());
        ingest.shutdown().expect("clean shutdown");
        assert_eq!(rig.count(topics::TRANSACTIONS, "too_late"), 0);
        assert_eq!(rig.applied(), n);
        assert_eq!(shape(rig.live.graph()), direct(&txns));
        assert_eq!(rig.metrics.kafka_merge_held.get(), 0, "nothing left held");
    }

    #[test]
    fn decisions_are_keyed_protobuf_records() {
        let tansu = Tansu::start();
        let brokers = tansu.brokers.as_str();
        create_topics(brokers);
        let metrics = Arc::new(Metrics::new());
        let producer =
            DecisionProducer::connect(&config(brokers, "unused"), Arc::clone(&metrics)).unwrap();
        let responses: Vec<ScoreResponse> = (0..3)
            .map(|i| ScoreResponse {
                txn_id: format!("txn-{i}"),
                score: 0.25 * i as f32,
                decision: Decision::Review as i32,
                model_version: "v-test".into(),
                ..ScoreResponse::default()
            })
            .collect();
        for (i, r) in responses.iter().enumerate() {
            producer.send(&format!("acc-{i}"), r).unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(metrics.decisions_produced.get(), 3);

        let written = read_topic(brokers, topics::DECISIONS, 3);
        assert_eq!(written.len(), 3);
        for m in &written {
            assert_eq!(
                header(m, topics::CONTENT_TYPE_HEADER),
                Some("application/x-protobuf")
            );
            let r: ScoreResponse = prost::Message::decode(m.payload().unwrap()).unwrap();
            let i: usize = r.txn_id.strip_prefix("txn-").unwrap().parse().unwrap();
            assert_eq!(r, responses[i]);
            assert_eq!(m.key(), Some(format!("acc-{i}").as_bytes()));
        }
    }

    #[test]
    fn start_fails_clearly_when_the_broker_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let brokers = format!("127.0.0.1:{port}");
        let rig = Rig::new(Graph::new(graph_config()));
        let started = Instant::now();
        let err = Ingest::start_within(
            &config(&brokers, "nobody"),
            Arc::clone(&rig.live),
            Arc::clone(&rig.labels),
            Arc::clone(&rig.metrics),
            &Offsets::new(),
            None,
            Duration::from_secs(1),
        )
        .err()
        .expect("no broker, no start");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("Kafka brokers {brokers} did not answer within 1s")),
            "{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "fails within its timeout"
        );

        let disabled = IngestConfig::default();
        let err = DecisionProducer::connect(&disabled, Arc::clone(&rig.metrics))
            .err()
            .expect("empty brokers");
        assert!(format!("{err:#}").contains("kafka.brokers"));
    }
}
