//! Labelled data for training and evaluation: a stream (file or simulation)
//! of transactions and late labels, replayed in time order through the live
//! graph and the causal sampler exactly as serving sees it.
//!
//! Each transaction is sampled *before* it is applied (score, then apply),
//! so nothing at or after its time is visible: the replay is leak-free, and
//! the features are the ones serving computes. Labels are joined by txn_id
//! with hindsight (every label in the data, whenever it was reported): this
//! is offline training, not the live label stream.
//!
//! The split is by time: the first `train` fraction of the time span trains,
//! the next `valid` fraction chooses the epoch and thresholds, the rest is
//! the held-out test period.

use std::collections::HashMap;
use std::path::Path;

use fraudgraph_proto::stream_file::{StreamFileError, StreamReader};
use fraudgraph_proto::v1::stream_record::Record;
use fraudgraph_proto::v1::{Transaction, Typology};
use fraudgraph_sampler::graph::{ApplyOutcome, Graph, GraphConfig, LOOKAHEAD};
use fraudgraph_sampler::sample::{SamplerConfig, Subgraph, sample};
use fraudgraph_simulator::Simulation;
use serde::{Deserialize, Serialize};

/// Transactions in time order and the fraud labels known for them.
#[derive(Debug, Clone, Default)]
pub struct LabelledStream {
    /// Every transaction, sorted by event time (stable).
    pub transactions: Vec<Transaction>,
    /// txn_id → typology (a `Typology` value) of every transaction labelled
    /// fraud; absent means legitimate.
    pub fraud: HashMap<String, i32>,
}

/// Errors reading labelled data.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The stream file could not be read or decoded.
    #[error(transparent)]
    Stream(#[from] StreamFileError),
    /// The data holds no transaction.
    #[error("{0}: no transactions in the data")]
    Empty(String),
    /// The split fractions are not usable.
    #[error("split: {0}")]
    Split(String),
}

impl LabelledStream {
    /// Reads a stream file written by `fraudgraph simulate` (`.jsonl` or
    /// `.pb`): transactions and labels in any order.
    pub fn read(path: &Path) -> Result<Self, DatasetError> {
        let mut out = LabelledStream::default();
        for record in StreamReader::open(path)? {
            match record?.record {
                Some(Record::Transaction(t)) => out.transactions.push(t),
                Some(Record::Label(l)) if l.is_fraud => {
                    out.fraud.insert(l.txn_id, l.typology);
                }
                _ => {}
            }
        }
        if out.transactions.is_empty() {
            return Err(DatasetError::Empty(path.display().to_string()));
        }
        out.transactions.sort_by_key(|t| t.event_time_ms);
        Ok(out)
    }

    /// The stream of a simulation, labels included.
    pub fn from_simulation(sim: &Simulation) -> Self {
        let mut out = LabelledStream::default();
        for record in sim.records() {
            match record.record {
                Some(Record::Transaction(t)) => out.transactions.push(t),
                Some(Record::Label(l)) if l.is_fraud => {
                    out.fraud.insert(l.txn_id, l.typology);
                }
                _ => {}
            }
        }
        out.transactions.sort_by_key(|t| t.event_time_ms);
        out
    }

    /// The typology of a transaction (`Unspecified` when legitimate).
    pub fn typology(&self, txn: &Transaction) -> i32 {
        self.fraud
            .get(&txn.txn_id)
            .copied()
            .unwrap_or(Typology::Unspecified as i32)
    }
}

/// Which period of a time split a transaction falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Trains the models.
    Train,
    /// Chooses the epoch and the thresholds.
    Valid,
    /// Held out for evaluation.
    Test,
}

/// A time-based split: fractions of the stream's time span.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Split {
    /// Fraction of the time span for training.
    pub train: f64,
    /// Fraction for validation; the rest is the test period.
    pub valid: f64,
    /// Days at the start that only warm the graph (no examples).
    pub warmup_days: f64,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            train: 0.6,
            valid: 0.2,
            warmup_days: 3.0,
        }
    }
}

/// The split turned into instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitTimes {
    /// Transactions before this only warm the graph.
    pub warmup_end_ms: i64,
    /// Training examples are before this.
    pub train_end_ms: i64,
    /// Validation examples are before this; test examples at or after.
    pub valid_end_ms: i64,
}

impl Split {
    /// Checks the fractions.
    pub fn validate(&self) -> Result<(), DatasetError> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        if !(ok(self.train) && ok(self.valid) && self.train + self.valid < 1.0) {
            return Err(DatasetError::Split(format!(
                "train {} and valid {} must be positive and sum to less than 1",
                self.train, self.valid
            )));
        }
        if !(self.warmup_days.is_finite() && self.warmup_days >= 0.0) {
            return Err(DatasetError::Split(format!(
                "warmup_days {} must be >= 0",
                self.warmup_days
            )));
        }
        Ok(())
    }

    /// The instants of this split over `stream`.
    pub fn times(&self, stream: &LabelledStream) -> Result<SplitTimes, DatasetError> {
        self.validate()?;
        let (first, last) = match (stream.transactions.first(), stream.transactions.last()) {
            (Some(f), Some(l)) => (f.event_time_ms, l.event_time_ms),
            _ => return Err(DatasetError::Empty("stream".into())),
        };
        let warmup_end_ms = first + (self.warmup_days * 86_400_000.0) as i64;
        let span = (last - warmup_end_ms).max(1) as f64;
        Ok(SplitTimes {
            warmup_end_ms,
            train_end_ms: warmup_end_ms + (span * self.train) as i64,
            valid_end_ms: warmup_end_ms + (span * (self.train + self.valid)) as i64,
        })
    }
}

impl SplitTimes {
    /// The period of an event time; `None` during warm-up.
    pub fn period(&self, t_ms: i64) -> Option<Period> {
        if t_ms < self.warmup_end_ms {
            None
        } else if t_ms < self.train_end_ms {
            Some(Period::Train)
        } else if t_ms < self.valid_end_ms {
            Some(Period::Valid)
        } else {
            Some(Period::Test)
        }
    }
}

/// One labelled, sampled transaction.
#[derive(Debug, Clone)]
pub struct Example {
    /// Its causal neighbourhood.
    pub sub: Subgraph,
    /// True when it is fraud.
    pub fraud: bool,
    /// Its typology (a `Typology` value; `Unspecified` when legitimate).
    pub typology: i32,
    /// Its period.
    pub period: Period,
}

/// How far a replay has got, for progress displays.
#[derive(Debug, Clone, Copy)]
pub struct ReplayProgress {
    /// Transactions applied so far.
    pub done: usize,
    /// Transactions in the stream.
    pub total: usize,
}

/// Replays `stream` in time order through a fresh graph. For every
/// transaction after warm-up that `keep(txn, period, fraud)` accepts, the
/// neighbourhood is sampled before the transaction is applied and handed to
/// `on_example`. Transactions are applied as the service applies them
/// ([`Graph::apply_evicting`]: idle eviction included), so training and evaluation see
/// the graph serving would have at each point of the stream. `progress` is called every
/// 4,096 transactions. Returns the graph as it stands at the end.
pub fn replay(
    stream: &LabelledStream,
    split: &SplitTimes,
    graph_config: &GraphConfig,
    sampler: &SamplerConfig,
    mut keep: impl FnMut(&Transaction, Period, bool) -> bool,
    mut on_example: impl FnMut(Example),
    progress: &dyn Fn(ReplayProgress),
) -> Graph {
    let graph = Graph::new(graph_config.clone());
    let total = stream.transactions.len();
    for (i, txn) in stream.transactions.iter().enumerate() {
        if let Some(period) = split.period(txn.event_time_ms) {
            let typology = stream.typology(txn);
            let fraud = typology != Typology::Unspecified as i32;
            if keep(txn, period, fraud) {
                on_example(Example {
                    sub: sample(&graph, txn, sampler),
                    fraud,
                    typology,
                    period,
                });
            }
        }
        graph.prefetch_upcoming(stream.transactions.iter().skip(i + 1).take(LOOKAHEAD));
        let (outcome, _) = graph.apply_evicting(txn);
        debug_assert_ne!(outcome, ApplyOutcome::TooLate, "the stream is sorted");
        if i % 4096 == 4095 {
            progress(ReplayProgress { done: i + 1, total });
        }
    }
    progress(ReplayProgress { done: total, total });
    graph
}

/// The proto name of a typology value, e.g. `TYPOLOGY_RING`.
pub fn typology_name(typology: i32) -> String {
    Typology::try_from(typology)
        .map(|t| t.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("TYPOLOGY_{typology}"))
}
