//! The compact in-memory form of a simulated transaction, before ids are
//! rendered.

use crate::world::NONE;

/// One transaction, entities as indices (`world::NONE` when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub time_ms: i64,
    pub amount_minor: i64,
    pub account: u32,
    pub merchant: u32,
    pub device: u32,
    pub ip: u32,
    pub card: u32,
    pub counterparty: u32,
    /// The client's UTC offset in minutes, or `i16::MIN` when unknown.
    pub utc_offset_min: i16,
    pub channel: u8,
    /// The proto `Typology` value; 0 for legitimate transactions.
    pub typology: u8,
}

impl Event {
    /// A card-present payment: no device, IP or client time zone.
    pub(crate) fn new(time_ms: i64, account: u32, merchant: u32, channel: u8) -> Self {
        Event {
            time_ms,
            amount_minor: 1,
            account,
            merchant,
            device: NONE,
            ip: NONE,
            card: NONE,
            counterparty: NONE,
            utc_offset_min: i16::MIN,
            channel,
            typology: 0,
        }
    }
}
