//! The one validation of incoming transactions and labels.
//!
//! The gRPC handlers and the Kafka consumer both call these functions, so a
//! payment is accepted or refused by the same rules whichever way it arrives.
//! The rules are the ones documented on each field in
//! `proto/fraudgraph/v1/*.proto`. Every violation is reported, each naming its
//! field, so a caller can fix a request in one round trip.

use std::fmt;
use std::net::IpAddr;

use crate::v1::{Channel, Label, Transaction, Typology};

/// Longest accepted identifier (txn, account, device, merchant, card).
pub const MAX_ID_LEN: usize = 64;
/// Largest accepted amount in minor units.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;
/// Earliest accepted event time: 2000-01-01T00:00:00Z in Unix milliseconds.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;
/// How far ahead of the receiving clock an event time may be.
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;
/// Accepted range of `client_utc_offset_minutes` (UTC-12:00 to UTC+14:00).
pub const UTC_OFFSET_RANGE_MINUTES: std::ops::RangeInclusive<i32> = -720..=840;

/// One violated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The offending field's path, e.g. `amount_minor` or, after
    /// [`ValidationError::prefixed`], `requests[3].transaction.amount_minor`.
    pub field: String,
    /// What is wrong, in words a caller can act on.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All the rules a message violated (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// The violations, in field order.
    pub errors: Vec<FieldError>,
}

impl ValidationError {
    /// The first violation; there always is one.
    pub fn first(&self) -> &FieldError {
        &self.errors[0]
    }

    /// The same errors with `prefix.` put before every field path, for
    /// messages nested in a request (`transaction`, `requests[3].transaction`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for e in &mut self.errors {
            e.field = format!("{prefix}.{}", e.field);
        }
        self
    }

    /// The fields named, in order.
    pub fn fields(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.field.as_str()).collect()
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects violations while a message is checked.
#[derive(Default)]
struct Violations(Vec<FieldError>);

impl Violations {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { errors: self.0 })
        }
    }

    fn id(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.push(field, "is required");
        } else if value.len() > MAX_ID_LEN {
            self.push(
                field,
                format!(
                    "must be at most {MAX_ID_LEN} characters, got {}",
                    value.len()
                ),
            );
        } else if let Some(c) = value.chars().find(|c| !is_id_char(*c)) {
            self.push(
                field,
                format!("contains {c:?}; allowed are letters, digits and . _ : -"),
            );
        }
    }

    fn optional_id(&mut self, field: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.id(field, v);
        }
    }

    fn event_time(&mut self, field: &str, ms: i64, now_ms: Option<i64>) {
        if ms <= MIN_EVENT_TIME_MS {
            self.push(
                field,
                format!(
                    "must be Unix epoch milliseconds after 2000-01-01 ({MIN_EVENT_TIME_MS}), got {ms}"
                ),
            );
        } else if let Some(now) = now_ms
            && ms > now.saturating_add(MAX_FUTURE_SKEW_MS)
        {
            self.push(
                field,
                format!(
                    "is {} s in the future; at most {} s of clock skew is accepted",
                    (ms - now) / 1000,
                    MAX_FUTURE_SKEW_MS / 1000
                ),
            );
        }
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

fn is_upper_code(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Checks a transaction against the contract.
///
/// `now_ms` is the receiving clock in Unix milliseconds; when given, event
/// times more than [`MAX_FUTURE_SKEW_MS`] ahead of it are refused. Replays of
/// historical data pass `None`.
pub fn transaction(txn: &Transaction, now_ms: Option<i64>) -> Result<(), ValidationError> {
    let mut v = Violations::default();
    v.id("txn_id", &txn.txn_id);
    v.event_time("event_time_ms", txn.event_time_ms, now_ms);
    v.id("account_id", &txn.account_id);
    v.optional_id("device_id", txn.device_id.as_deref());
    if let Some(ip) = &txn.ip
        && ip.parse::<IpAddr>().is_err()
    {
        v.push("ip", format!("{ip:?} is not an IPv4 or IPv6 address"));
    }
    v.id("merchant_id", &txn.merchant_id);
    v.optional_id("card_id", txn.card_id.as_deref());
    if txn.amount_minor < 1 {
        v.push(
            "amount_minor",
            format!("must be at least 1, got {}", txn.amount_minor),
        );
    } else if txn.amount_minor > MAX_AMOUNT_MINOR {
        v.push(
            "amount_minor",
            format!(
                "must be at most {MAX_AMOUNT_MINOR}, got {}",
                txn.amount_minor
            ),
        );
    }
    if !is_upper_code(&txn.currency, 3) {
        v.push(
            "currency",
            format!(
                "must be an ISO 4217 code of three upper-case letters, got {:?}",
                txn.currency
            ),
        );
    }
    if !(1..=9999).contains(&txn.mcc) {
        v.push("mcc", format!("must be 1 to 9999, got {}", txn.mcc));
    }
    let channel = Channel::try_from(txn.channel).ok();
    match channel {
        None => v.push("channel", format!("unknown value {}", txn.channel)),
        Some(Channel::Unspecified) => v.push("channel", "is required"),
        Some(_) => {}
    }
    if !is_upper_code(&txn.country, 2) {
        v.push(
            "country",
            format!(
                "must be an ISO 3166-1 alpha-2 code of two upper-case letters, got {:?}",
                txn.country
            ),
        );
    }
    match (channel, txn.counterparty_account_id.as_deref()) {
        (Some(Channel::Transfer), None) => v.push(
            "counterparty_account_id",
            "is required for CHANNEL_TRANSFER",
        ),
        (Some(Channel::Transfer), Some(cp)) => {
            v.id("counterparty_account_id", cp);
            if cp == txn.account_id {
                v.push("counterparty_account_id", "must differ from account_id");
            }
        }
        (_, Some(_)) => v.push(
            "counterparty_account_id",
            "is only allowed with CHANNEL_TRANSFER",
        ),
        (_, None) => {}
    }
    if let Some(offset) = txn.client_utc_offset_minutes
        && !UTC_OFFSET_RANGE_MINUTES.contains(&offset)
    {
        v.push(
            "client_utc_offset_minutes",
            format!("must be -720 to 840, got {offset}"),
        );
    }
    v.finish()
}

/// Checks a label against the contract.
pub fn label(label: &Label) -> Result<(), ValidationError> {
    let mut v = Violations::default();
    v.id("txn_id", &label.txn_id);
    match Typology::try_from(label.typology) {
        Err(_) => v.push("typology", format!("unknown value {}", label.typology)),
        Ok(t) if !label.is_fraud && t != Typology::Unspecified => v.push(
            "typology",
            "must be TYPOLOGY_UNSPECIFIED when is_fraud is false",
        ),
        Ok(_) => {}
    }
    v.event_time("reported_at_ms", label.reported_at_ms, None);
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn valid() -> Transaction {
        Transaction {
            txn_id: "t-1".into(),
            event_time_ms: 1_700_000_000_000,
            account_id: "acc_1".into(),
            device_id: Some("dev_1".into()),
            ip: Some("203.0.113.7".into()),
            merchant_id: "m_1".into(),
            card_id: Some("card_1".into()),
            amount_minor: 1250,
            currency: "EUR".into(),
            mcc: 5411,
            channel: Channel::Ecommerce as i32,
            country: "DE".into(),
            counterparty_account_id: None,
            client_utc_offset_minutes: Some(60),
        }
    }

    fn fields_of(txn: &Transaction) -> Vec<String> {
        match transaction(txn, Some(1_700_000_000_000)) {
            Ok(()) => vec![],
            Err(e) => e.errors.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn a_valid_transaction_passes() {
        assert_eq!(fields_of(&valid()), Vec::<String>::new());
        let mut ipv6 = valid();
        ipv6.ip = Some("2001:db8::1".into());
        ipv6.device_id = None;
        ipv6.card_id = None;
        ipv6.client_utc_offset_minutes = None;
        assert_eq!(fields_of(&ipv6), Vec::<String>::new());
    }

    /// Each broken field is reported under its own name, and only it.
    #[test]
    fn each_violation_names_its_field() {
        type Breaker = fn(&mut Transaction);
        let cases: &[(&str, Breaker)] = &[
            ("txn_id", |t| t.txn_id.clear()),
            ("txn_id", |t| t.txn_id = "x".repeat(65)),
            ("txn_id", |t| t.txn_id = "t 1".into()),
            ("event_time_ms", |t| t.event_time_ms = 0),
            ("event_time_ms", |t| {
                t.event_time_ms = 1_700_000_000_000 + 301_000
            }),
            ("account_id", |t| t.account_id.clear()),
            ("device_id", |t| t.device_id = Some(String::new())),
            ("ip", |t| t.ip = Some("300.1.1.1".into())),
            ("merchant_id", |t| t.merchant_id = "m/1".into()),
            ("card_id", |t| t.card_id = Some("4111 1111".into())),
            ("amount_minor", |t| t.amount_minor = 0),
            ("amount_minor", |t| t.amount_minor = MAX_AMOUNT_MINOR + 1),
            ("currency", |t| t.currency = "eur".into()),
            ("mcc", |t| t.mcc = 0),
            ("mcc", |t| t.mcc = 10_000),
            ("channel", |t| t.channel = 0),
            ("channel", |t| t.channel = 99),
            ("country", |t| t.country = "DEU".into()),
            ("counterparty_account_id", |t| {
                t.counterparty_account_id = Some("acc_2".into())
            }),
            ("counterparty_account_id", |t| {
                t.channel = Channel::Transfer as i32
            }),
            ("counterparty_account_id", |t| {
                t.channel = Channel::Transfer as i32;
                t.counterparty_account_id = Some(t.account_id.clone());
            }),
            ("client_utc_offset_minutes", |t| {
                t.client_utc_offset_minutes = Some(900)
            }),
        ];
        for (field, breaker) in cases {
            let mut t = valid();
            breaker(&mut t);
            assert_eq!(fields_of(&t), vec![field.to_string()], "case {field}");
        }
    }

    #[test]
    fn all_violations_are_reported_and_can_be_prefixed() {
        let mut t = valid();
        t.amount_minor = -5;
        t.currency = String::new();
        let err = transaction(&t, None)
            .unwrap_err()
            .prefixed("requests[3].transaction");
        assert_eq!(
            err.fields(),
            vec![
                "requests[3].transaction.amount_minor",
                "requests[3].transaction.currency"
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with("requests[3].transaction.amount_minor: must be at least 1, got -5; "),
            "{text}"
        );
    }

    #[test]
    fn replays_skip_the_future_check() {
        let mut t = valid();
        t.event_time_ms = 4_000_000_000_000;
        assert!(transaction(&t, None).is_ok());
        assert!(transaction(&t, Some(1_700_000_000_000)).is_err());
    }

    #[test]
    fn label_rules() {
        let ok = Label {
            txn_id: "t-1".into(),
            is_fraud: true,
            typology: Typology::Ring as i32,
            reported_at_ms: 1_700_000_000_000,
        };
        assert!(label(&ok).is_ok());
        let legit_with_typology = Label {
            is_fraud: false,
            ..ok.clone()
        };
        assert_eq!(
            label(&legit_with_typology).unwrap_err().fields(),
            vec!["typology"]
        );
        let bad = Label {
            txn_id: String::new(),
            typology: 42,
            reported_at_ms: 3,
            ..ok
        };
        assert_eq!(
            label(&bad).unwrap_err().fields(),
            vec!["txn_id", "typology", "reported_at_ms"]
        );
    }
}
