//! The gRPC front: the `FraudScoring` service of `proto/fraudgraph/v1/scoring.proto`.
//!
//! Handlers validate (INVALID_ARGUMENT naming the field), work out the request's deadline
//! (`grpc-timeout`, else the configured default), and await the [`Pipeline`]; they never
//! block. moka caches keep recent answers by txn_id (a retried Score gets the same answer
//! and applies nothing twice) and recent explanations.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fraudgraph_proto::v1::fraud_scoring_server::FraudScoring;
use fraudgraph_proto::v1::score_stream_response::Result as StreamResult;
use fraudgraph_proto::v1::{
    ExplainRequest, ExplainResponse, GraphStatus, ItemError, KafkaStatus, ModelInfo,
    ScoreBatchRequest, ScoreBatchResponse, ScoreRequest, ScoreResponse, ScoreStreamResponse,
    StatusRequest, StatusResponse, Transaction,
};
use fraudgraph_proto::validate;
use fraudgraph_sampler::schema::NodeType;
use futures_util::Stream;
use moka::future::Cache;
use parking_lot::Mutex;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{CacheConfig, Limits};
use crate::ingest::Ingest;
use crate::labels::LabelBook;
use crate::live_graph::LiveGraph;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, ScoreError};

/// Everything the handlers share.
pub struct ServerState {
    /// The scoring pipeline.
    pub pipeline: Arc<Pipeline>,
    /// The live graph.
    pub live: Arc<LiveGraph>,
    /// Label counts for explanations.
    pub labels: Arc<LabelBook>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// The Kafka consumer, when there is one (taken at shutdown).
    pub ingest: Mutex<Option<Ingest>>,
    /// True while the health service reports SERVING.
    pub ready: AtomicBool,
    /// The compute device, in words.
    pub device: String,
    /// The loaded models.
    pub models: Vec<ModelInfo>,
    /// Recent answers by txn_id, and whether that call applied the transaction.
    scores: Cache<String, (ScoreResponse, bool)>,
    explanations: Cache<(String, u32, bool), Arc<ExplainResponse>>,
}

impl ServerState {
    /// State with empty caches sized by `caches`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pipeline: Arc<Pipeline>,
        live: Arc<LiveGraph>,
        labels: Arc<LabelBook>,
        metrics: Arc<Metrics>,
        limits: Limits,
        caches: &CacheConfig,
        device: String,
        models: Vec<ModelInfo>,
    ) -> ServerState {
        ServerState {
            pipeline,
            live,
            labels,
            metrics,
            limits,
            ingest: Mutex::new(None),
            ready: AtomicBool::new(false),
            device,
            models,
            scores: Cache::builder()
                .max_capacity(caches.scores_capacity)
                .time_to_live(Duration::from_secs(caches.scores_ttl_s))
                .build(),
            explanations: Cache::builder()
                .max_capacity(caches.explanations_capacity)
                .time_to_live(Duration::from_secs(caches.scores_ttl_s))
                .build(),
        }
    }

    /// The Status answer.
    pub fn status(&self) -> StatusResponse {
        let stats = self.live.graph().stats();
        let nodes_by_type = NodeType::ALL
            .iter()
            .map(|t| {
                (
                    fraudgraph_models::net::node_type_name(*t).to_owned(),
                    stats.nodes[t.index()],
                )
            })
            .collect();
        let kafka = self
            .ingest
            .lock()
            .as_ref()
            .map(Ingest::status)
            .unwrap_or(KafkaStatus {
                enabled: false,
                ..KafkaStatus::default()
            });
        let ready = self.ready.load(Ordering::Acquire);
        let mut models = self.models.clone();
        for m in &mut models {
            if m.kind == fraudgraph_proto::v1::ModelKind::Gnn as i32 {
                m.loaded = self.pipeline.gnn_ready();
            }
        }
        StatusResponse {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            models,
            device: self.device.clone(),
            graph: Some(GraphStatus {
                nodes_by_type,
                edges: stats.edges,
                transactions: stats.transactions,
                bytes: stats.edge_bytes + stats.node_bytes,
                watermark_ms: stats.watermark_ms.max(0),
            }),
            kafka: Some(kafka),
            ready,
        }
    }

    /// Validates and scores one request (with `keep_subgraph` for Explain).
    async fn score_one(
        &self,
        req: ScoreRequest,
        field: &str,
        deadline: Instant,
        keep_subgraph: bool,
    ) -> Result<crate::pipeline::Scored, Status> {
        let txn = checked(req.transaction, field)?;
        self.score_valid(txn, req.apply_to_graph, deadline, keep_subgraph)
            .await
    }

    /// Scores a transaction that [`checked`] accepted.
    async fn score_valid(
        &self,
        txn: Transaction,
        apply_to_graph: bool,
        deadline: Instant,
        keep_subgraph: bool,
    ) -> Result<crate::pipeline::Scored, Status> {
        // A retry gets the first answer; a retry that now asks to apply (the first call
        // did not) goes through the pipeline so the transaction is applied.
        let cached = self.scores.get(&txn.txn_id).await;
        if !keep_subgraph
            && let Some((hit, applied)) = cached
            && (applied || !apply_to_graph)
        {
            return Ok(crate::pipeline::Scored {
                response: hit,
                subgraph: None,
            });
        }
        let key = txn.txn_id.clone();
        let scored = self
            .pipeline
            .score(txn, apply_to_graph, deadline, keep_subgraph)
            .await
            .map_err(status_of)?;
        if !keep_subgraph {
            self.scores
                .insert(key, (scored.response.clone(), apply_to_graph))
                .await;
        }
        Ok(scored)
    }

    fn invalid(&self, rpc: &str) {
        self.metrics.rpc_invalid.with_label_values(&[rpc]).inc();
    }

    fn timed(&self, rpc: &str, started: Instant) {
        self.metrics
            .rpc_duration
            .with_label_values(&[rpc])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The request's transaction, validated; errors name `field`'s sub-field.
fn checked(txn: Option<Transaction>, field: &str) -> Result<Transaction, Status> {
    let Some(txn) = txn else {
        return Err(Status::invalid_argument(format!("{field}: required")));
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    validate::transaction(&txn, Some(now_ms))
        .map_err(|e| Status::invalid_argument(e.prefixed(field).to_string()))?;
    Ok(txn)
}

fn status_of(e: ScoreError) -> Status {
    match e {
        ScoreError::Overloaded(_) => Status::resource_exhausted(e.to_string()),
        ScoreError::DeadlineExceeded => Status::deadline_exceeded(e.to_string()),
        ScoreError::ShuttingDown => Status::unavailable(e.to_string()),
        ScoreError::Internal(_) => Status::internal(e.to_string()),
    }
}

/// Parses a `grpc-timeout` header value (`"50m"`: digits then one of H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request's deadline: now + its `grpc-timeout`, or now + `default`.
pub fn deadline_of(metadata: &MetadataMap, default: Duration) -> Instant {
    let budget = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(default);
    Instant::now() + budget
}

/// The tonic service.
#[derive(Clone)]
pub struct ScoringService {
    state: Arc<ServerState>,
}

impl ScoringService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> ScoringService {
        ScoringService { state }
    }
}

type StreamOut = Pin<Box<dyn Stream<Item = Result<ScoreStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FraudScoring for ScoringService {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let started = Instant::now();
        let s = &self.state;
        let deadline = deadline_of(request.metadata(), s.pipeline.default_deadline());
        let result = s
            .score_one(request.into_inner(), "transaction", deadline, false)
            .await;
        if matches!(&result, Err(st) if st.code() == tonic::Code::InvalidArgument) {
            s.invalid("Score");
        }
        s.timed("Score", started);
        result.map(|scored| Response::new(scored.response))
    }

    async fn score_batch(
        &self,
        request: Request<ScoreBatchRequest>,
    ) -> Result<Response<ScoreBatchResponse>, Status> {
        let started = Instant::now();
        let s = &self.state;
        let deadline = deadline_of(request.metadata(), s.pipeline.default_deadline());
        let requests = request.into_inner().requests;
        if requests.len() > s.limits.max_batch_request {
            s.invalid("ScoreBatch");
            return Err(Status::invalid_argument(format!(
                "requests: at most {} items per call, got {}",
                s.limits.max_batch_request,
                requests.len()
            )));
        }
        // Validate everything before scoring anything: one bad item rejects the call.
        let mut valid = Vec::with_capacity(requests.len());
        for (i, r) in requests.into_iter().enumerate() {
            match checked(r.transaction, &format!("requests[{i}].transaction")) {
                Ok(txn) => valid.push((txn, r.apply_to_graph)),
                Err(e) => {
                    s.invalid("ScoreBatch");
                    return Err(e);
                }
            }
        }
        let futures = valid
            .into_iter()
            .map(|(txn, apply)| s.score_valid(txn, apply, deadline, false))
            .collect::<Vec<_>>();
        let mut responses = Vec::with_capacity(futures.len());
        for r in futures_util::future::join_all(futures).await {
            responses.push(r?.response);
        }
        s.timed("ScoreBatch", started);
        Ok(Response::new(ScoreBatchResponse { responses }))
    }

    type ScoreStreamStream = StreamOut;

    async fn score_stream(
        &self,
        request: Request<Streaming<ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStreamStream>, Status> {
        let state = self.state.clone();
        let budget = deadline_of(request.metadata(), state.pipeline.default_deadline())
            .saturating_duration_since(Instant::now());
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            // Each item gets the call's per-item budget from its arrival.
            while let Some(item) = inbound.next().await {
                let req = match item {
                    Ok(r) => r,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let state = state.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let txn_id = req
                        .transaction
                        .as_ref()
                        .map(|t| t.txn_id.clone())
                        .unwrap_or_default();
                    let out = match state
                        .score_one(req, "transaction", started + budget, false)
                        .await
                    {
                        Ok(scored) => StreamResult::Score(scored.response),
                        Err(status) => {
                            if status.code() == tonic::Code::InvalidArgument {
                                state.invalid("ScoreStream");
                            }
                            let msg = status.message();
                            let (field, message) = msg.split_once(": ").unwrap_or(("", msg));
                            StreamResult::Error(ItemError {
                                field: field.to_owned(),
                                message: message.to_owned(),
                            })
                        }
                    };
                    state.timed("ScoreStream", started);
                    let _ = tx
                        .send(Ok(ScoreStreamResponse {
                            txn_id,
                            result: Some(out),
                        }))
                        .await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn explain(
        &self,
        request: Request<ExplainRequest>,
    ) -> Result<Response<ExplainResponse>, Status> {
        let started = Instant::now();
        let s = &self.state;
        let deadline = deadline_of(request.metadata(), s.pipeline.default_deadline());
        let req = request.into_inner();
        let max_paths = match req.max_paths {
            0 => 5,
            n if n > s.limits.max_explain_paths => {
                s.invalid("Explain");
                return Err(Status::invalid_argument(format!(
                    "max_paths: at most {}, got {n}",
                    s.limits.max_explain_paths
                )));
            }
            n => n,
        };
        let txn = checked(req.transaction, "transaction").inspect_err(|_| s.invalid("Explain"))?;
        let key = (txn.txn_id.clone(), max_paths, req.include_dot);
        if let Some(hit) = s.explanations.get(&key).await {
            s.timed("Explain", started);
            return Ok(Response::new((*hit).clone()));
        }
        let earlier = s.scores.get(&txn.txn_id).await.map(|(r, _)| r);
        let scored = s
            .score_one(
                ScoreRequest {
                    transaction: Some(txn),
                    apply_to_graph: false,
                },
                "transaction",
                deadline,
                true,
            )
            .await?;
        let sub = scored
            .subgraph
            .ok_or_else(|| Status::internal("the pipeline returned no subgraph"))?;
        let (live, labels) = (s.live.clone(), s.labels.clone());
        let include_dot = req.include_dot;
        let evidence = tokio::task::spawn_blocking(move || {
            crate::explain::explain(live.graph(), &sub, &labels, max_paths as usize, include_dot)
        })
        .await
        .map_err(|e| Status::internal(format!("explanation failed: {e}")))?;
        let response = ExplainResponse {
            // Explaining a transaction already scored shows the score it was given.
            score: Some(earlier.unwrap_or(scored.response)),
            subgraph: Some(evidence.subgraph),
            paths: evidence.paths,
            anomalies: evidence.anomalies,
            dot: evidence.dot,
        };
        s.explanations.insert(key, Arc::new(response.clone())).await;
        s.timed("Explain", started);
        Ok(Response::new(response))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let started = Instant::now();
        let state = self.state.clone();
        // Graph stats walk every shard: a blocking thread, not a worker.
        let status = tokio::task::spawn_blocking(move || state.status())
            .await
            .map_err(|e| Status::internal(format!("status failed: {e}")))?;
        self.state.timed("Status", started);
        Ok(Response::new(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_grpc_timeout("1500u"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("1234567890m"), None, "at most 8 digits");
    }

    #[test]
    fn a_missing_or_invalid_transaction_names_the_field() {
        let e = checked(None, "requests[2].transaction").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "requests[2].transaction: required");
        let e = checked(
            Some(Transaction {
                txn_id: "t1".into(),
                ..Transaction::default()
            }),
            "transaction",
        )
        .unwrap_err();
        assert!(e.message().starts_with("transaction."), "{}", e.message());
    }
}
