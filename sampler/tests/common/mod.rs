//! Shared generators of small random transaction streams.

#![allow(dead_code)]

use fraudgraph_proto::v1::{Channel, Transaction};
use proptest::prelude::*;

pub const T0: i64 = 1_767_225_600_000;

/// A generated transaction: account, device, IP, merchant, card (small
/// indices; device and IP 3 mean none), transfer receiver, ms after [`T0`],
/// amount.
pub type TxnSpec = (u8, u8, u8, u8, u8, Option<u8>, u32, u16);

pub fn txn_strategy() -> impl Strategy<Value = TxnSpec> {
    (
        0u8..6,
        0u8..4,
        0u8..4,
        0u8..3,
        0u8..3,
        proptest::option::of(0u8..6),
        0u32..7_200_000,
        1u16..5000,
    )
}

pub fn make(i: usize, p: TxnSpec) -> Transaction {
    let (a, d, ip, m, c, to, dt, amount) = p;
    let to = to.filter(|b| *b != a);
    Transaction {
        txn_id: format!("t{i}"),
        event_time_ms: T0 + i64::from(dt),
        account_id: format!("a{a}"),
        device_id: (d < 3).then(|| format!("d{d}")),
        ip: (ip < 3).then(|| format!("10.0.0.{ip}")),
        merchant_id: format!("m{m}"),
        card_id: Some(format!("c{c}")),
        amount_minor: i64::from(amount),
        currency: "EUR".into(),
        mcc: 5411,
        channel: if to.is_some() {
            Channel::Transfer
        } else {
            Channel::Ecommerce
        } as i32,
        country: "DE".into(),
        counterparty_account_id: to.map(|b| format!("a{b}")),
        client_utc_offset_minutes: Some(60),
    }
}
