//! Kafka payloads and conventions.
//!
//! Transactions and labels travel on Kafka as the same messages the gRPC API
//! uses, encoded as protobuf or as JSON (the canonical protobuf JSON mapping
//! with the proto field names; see `docs/CONTRACT.md`). A producer says which
//! in the `content-type` header; without the header the format is detected
//! from the payload. Records are keyed by `account_id`, so one account's
//! events land in one partition and stay in order.

use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

use crate::v1::{Label, StreamRecord, Transaction};

/// Topic names and record headers.
pub mod topics {
    /// Incoming payment events (`Transaction`), keyed by account_id.
    pub const TRANSACTIONS: &str = "fraudgraph.transactions.v1";
    /// Incoming verdicts (`Label`), keyed by txn_id.
    pub const LABELS: &str = "fraudgraph.labels.v1";
    /// Scores produced on ingest (`ScoreResponse`), keyed by account_id.
    pub const DECISIONS: &str = "fraudgraph.decisions.v1";
    /// Records that could not be decoded or validated, unchanged, with the
    /// error in the [`ERROR_HEADER`] header.
    pub const DEAD_LETTER: &str = "fraudgraph.dead-letter.v1";
    /// Header naming the payload format: `application/x-protobuf` or
    /// `application/json`.
    pub const CONTENT_TYPE_HEADER: &str = "content-type";
    /// Header on dead-lettered records saying what was wrong.
    pub const ERROR_HEADER: &str = "fraudgraph-error";
    /// Header on dead-lettered records naming the topic they came from.
    pub const SOURCE_TOPIC_HEADER: &str = "fraudgraph-source-topic";
}

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// Protobuf binary encoding.
    Protobuf,
    /// Canonical protobuf JSON mapping, proto field names.
    Json,
}

impl PayloadFormat {
    /// The `content-type` header value for this format.
    pub fn content_type(self) -> &'static str {
        match self {
            PayloadFormat::Protobuf => "application/x-protobuf",
            PayloadFormat::Json => "application/json",
        }
    }

    /// The format a `content-type` header names, if it names one we speak.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/x-protobuf"
            | "application/protobuf"
            | "application/vnd.google.protobuf" => Some(PayloadFormat::Protobuf),
            "application/json" => Some(PayloadFormat::Json),
            _ => None,
        }
    }

    /// Guesses the format of a payload without a header: JSON objects start
    /// with `{` (after optional whitespace), which can never start one of our
    /// protobuf messages (`{` would be field 15 with the obsolete group wire
    /// type).
    pub fn detect(payload: &[u8]) -> Self {
        let first = payload
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        if first == Some(&b'{') {
            PayloadFormat::Json
        } else {
            PayloadFormat::Protobuf
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not valid protobuf for the expected message.
    #[error("invalid protobuf payload: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The payload is not valid JSON for the expected message.
    #[error("invalid JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    /// The `content-type` header names a format we do not speak.
    #[error("unsupported content-type {0:?}; use application/x-protobuf or application/json")]
    UnsupportedContentType(String),
}

/// A message that can travel on Kafka.
pub trait Payload: Message + Default + Serialize + DeserializeOwned {}
impl Payload for Transaction {}
impl Payload for Label {}
impl Payload for StreamRecord {}

/// Encodes a message in the given format.
pub fn encode<M: Payload>(message: &M, format: PayloadFormat) -> Vec<u8> {
    match format {
        PayloadFormat::Protobuf => message.encode_to_vec(),
        PayloadFormat::Json => serde_json::to_vec(message)
            .expect("pbjson serialization of a prost message cannot fail"),
    }
}

/// Decodes a payload; `content_type` is the record's header, if any.
pub fn decode<M: Payload>(payload: &[u8], content_type: Option<&str>) -> Result<M, DecodeError> {
    let format = match content_type {
        Some(ct) => PayloadFormat::from_content_type(ct)
            .ok_or_else(|| DecodeError::UnsupportedContentType(ct.to_owned()))?,
        None => PayloadFormat::detect(payload),
    };
    Ok(match format {
        PayloadFormat::Protobuf => M::decode(payload)?,
        PayloadFormat::Json => serde_json::from_slice(payload)?,
    })
}

/// The Kafka message key of a transaction: its account_id.
pub fn transaction_key(txn: &Transaction) -> &[u8] {
    txn.account_id.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Channel, Typology, stream_record::Record};

    fn txn() -> Transaction {
        Transaction {
            txn_id: "t-9".into(),
            event_time_ms: 1_700_000_123_456,
            account_id: "acc_42".into(),
            device_id: Some("dev_7".into()),
            ip: None,
            merchant_id: "m_3".into(),
            card_id: None,
            amount_minor: 99_99,
            currency: "USD".into(),
            mcc: 5999,
            channel: Channel::Transfer as i32,
            country: "US".into(),
            counterparty_account_id: Some("acc_43".into()),
            client_utc_offset_minutes: Some(-300),
        }
    }

    #[test]
    fn protobuf_and_json_round_trip() {
        let t = txn();
        for format in [PayloadFormat::Protobuf, PayloadFormat::Json] {
            let bytes = encode(&t, format);
            assert_eq!(PayloadFormat::detect(&bytes), format);
            let back: Transaction = decode(&bytes, None).unwrap();
            assert_eq!(back, t, "{format:?}");
            let back: Transaction = decode(&bytes, Some(format.content_type())).unwrap();
            assert_eq!(back, t, "{format:?} with header");
        }
    }

    /// The documented JSON mapping: proto field names, enums by name, 64-bit
    /// integers as strings, unset optionals omitted.
    #[test]
    fn json_mapping_is_the_documented_one() {
        let json: serde_json::Value =
            serde_json::from_slice(&encode(&txn(), PayloadFormat::Json)).unwrap();
        assert_eq!(json["txn_id"], "t-9");
        assert_eq!(json["event_time_ms"], "1700000123456");
        assert_eq!(json["amount_minor"], "9999");
        assert_eq!(json["mcc"], 5999);
        assert_eq!(json["channel"], "CHANNEL_TRANSFER");
        assert_eq!(json["client_utc_offset_minutes"], -300);
        assert!(json.get("ip").is_none());
        assert!(json.get("card_id").is_none());
    }

    /// Hand-written JSON as a producer would send it: camelCase names and
    /// plain numbers are accepted too.
    #[test]
    fn lenient_json_input_is_accepted() {
        let text = r#" {"txnId":"t-1","eventTimeMs":1700000000000,"account_id":"a","merchant_id":"m",
            "amount_minor":5,"currency":"EUR","mcc":5411,"channel":"CHANNEL_ECOMMERCE","country":"FR"}"#;
        let t: Transaction = decode(text.as_bytes(), None).unwrap();
        assert_eq!(t.txn_id, "t-1");
        assert_eq!(t.event_time_ms, 1_700_000_000_000);
        assert_eq!(t.channel, Channel::Ecommerce as i32);
    }

    #[test]
    fn stream_records_round_trip() {
        let records = [
            StreamRecord {
                record: Some(Record::Transaction(txn())),
            },
            StreamRecord {
                record: Some(Record::Label(Label {
                    txn_id: "t-9".into(),
                    is_fraud: true,
                    typology: Typology::Mule as i32,
                    reported_at_ms: 1_700_900_000_000,
                })),
            },
        ];
        for r in &records {
            for format in [PayloadFormat::Protobuf, PayloadFormat::Json] {
                let back: StreamRecord = decode(&encode(r, format), None).unwrap();
                assert_eq!(&back, r);
            }
        }
        let json = String::from_utf8(encode(&records[1], PayloadFormat::Json)).unwrap();
        assert!(json.starts_with(r#"{"label":{"#), "{json}");
        assert!(json.contains(r#""typology":"TYPOLOGY_MULE""#), "{json}");
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        assert!(matches!(
            decode::<Transaction>(b"{not json", None),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode::<Transaction>(&[0x0a, 0xff], None),
            Err(DecodeError::Protobuf(_))
        ));
        assert!(matches!(
            decode::<Transaction>(b"{}", Some("text/csv")),
            Err(DecodeError::UnsupportedContentType(_))
        ));
        assert!(matches!(
            decode::<Transaction>(br#"{"channel":"CHANNEL_TELEPATHY"}"#, None),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn content_type_parameters_are_ignored() {
        assert_eq!(
            PayloadFormat::from_content_type("application/json; charset=utf-8"),
            Some(PayloadFormat::Json)
        );
        assert_eq!(PayloadFormat::from_content_type("text/plain"), None);
    }

    #[test]
    fn transactions_are_keyed_by_account() {
        assert_eq!(transaction_key(&txn()), b"acc_42");
    }
}
