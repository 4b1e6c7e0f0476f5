//! Kafka plumbing shared by the subcommands: a blocking producer that counts
//! failed deliveries, topic creation, and a broker health check.
//!
//! Everything here blocks the calling thread (librdkafka's own threads do the
//! network I/O); callers on a tokio runtime run it on a blocking thread.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;

/// Counts deliveries and keeps the first failure, so a producer can report
/// `"N records not delivered: <reason>"` instead of losing data silently.
#[derive(Default)]
pub struct DeliveryReport {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryReport {}

impl ProducerContext for DeliveryReport {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((err, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| err.to_string());
            }
        }
    }
}

/// A blocking producer of keyed records with a `content-type` header.
pub struct RecordProducer {
    inner: BaseProducer<DeliveryReport>,
    sent: u64,
}

impl RecordProducer {
    /// Connects to `brokers` (comma-separated host:port).
    pub fn connect(brokers: &str) -> anyhow::Result<Self> {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "200000")
            .set("message.timeout.ms", "60000")
            .set("acks", "all")
            .create_with_context(DeliveryReport::default())
            .with_context(|| format!("creating a Kafka producer for {brokers}"))?;
        Ok(RecordProducer { inner, sent: 0 })
    }

    /// Queues one record, waiting while librdkafka's queue is full.
    pub fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        content_type: &str,
    ) -> anyhow::Result<()> {
        let headers = OwnedHeaders::new().insert(Header {
            key: fraudgraph_proto::topics::CONTENT_TYPE_HEADER,
            value: Some(content_type),
        });
        let mut record = BaseRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.inner.poll(Duration::from_millis(5));
                    record = back;
                }
                Err((err, _)) => return Err(err).with_context(|| format!("producing to {topic}")),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.inner.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Waits until every queued record is delivered or failed; errors if any
    /// failed.
    pub fn finish(self, timeout: Duration) -> anyhow::Result<u64> {
        self.inner
            .flush(timeout)
            .context("flushing the Kafka producer")?;
        let report = self.inner.context();
        let failed = report.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = report
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            bail!(
                "{failed} of {} records were not delivered; first error: {first}",
                self.sent
            );
        }
        Ok(report.delivered.load(Ordering::Relaxed))
    }
}

/// Creates the topics that do not exist yet; existing ones are left alone.
pub fn ensure_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .with_context(|| format!("creating a Kafka admin client for {brokers}"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = runtime
        .block_on(admin.create_topics(&new, &options))
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// What a broker said about itself.
pub struct BrokerInfo {
    /// Brokers in the cluster.
    pub brokers: usize,
    /// Topics it knows of.
    pub topics: Vec<String>,
}

/// Asks the cluster for its metadata, within `timeout`.
pub fn check_broker(brokers: &str, timeout: Duration) -> anyhow::Result<BrokerInfo> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", timeout.as_millis().max(10).to_string())
        .create()
        .with_context(|| format!("creating a Kafka client for {brokers}"))?;
    let metadata = producer
        .client()
        .fetch_metadata(None, timeout)
        .with_context(|| format!("no answer from Kafka at {brokers} within {timeout:?}"))?;
    let topics = metadata
        .topics()
        .iter()
        .filter(|t| {
            t.error()
                .is_none_or(|e| e == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        })
        .map(|t| t.name().to_owned())
        .collect();
    Ok(BrokerInfo {
        brokers: metadata.brokers().len(),
        topics,
    })
}
