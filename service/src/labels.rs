//! What the service knows from the labels topic: per entity, how many of its labelled
//! transactions were fraud. Explanations show it to analysts (`EvidenceNode.fraud_rate`);
//! the models never see it (they are trained without labels in their inputs).
//!
//! Labels arrive days after their transactions and carry only the txn_id, so the book
//! remembers each applied transaction's entities for a while ([`LabelBook::remember`]) and
//! credits a later label to them ([`LabelBook::record`]). Both maps are bounded moka caches:
//! a label for a transaction forgotten by then is counted as unknown, never guessed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fraudgraph_proto::v1::{Label, Transaction};
use fraudgraph_sampler::graph::txn_hash;
use fraudgraph_sampler::schema::NodeType;
use moka::sync::Cache;
use parking_lot::Mutex;

/// One entity: its type and its id.
type EntityKey = (NodeType, Box<str>);

/// Labelled and fraud counts of one entity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelCounts {
    /// Labelled transactions that touched the entity.
    pub labelled: u32,
    /// Those labelled fraud.
    pub fraud: u32,
}

/// Per-entity label counts, fed by applied transactions and the labels topic.
pub struct LabelBook {
    /// txn_id hash → the transaction's entities, until its label arrives or it ages out.
    pending: Cache<u128, Arc<[EntityKey]>>,
    /// Entity → counts.
    counts: Cache<EntityKey, Arc<Mutex<LabelCounts>>>,
    unknown: AtomicU64,
    recorded: AtomicU64,
}

impl LabelBook {
    /// A book remembering up to `transactions` unlabelled transactions and counts for up to
    /// `entities` entities (least recently used dropped first).
    pub fn new(transactions: u64, entities: u64) -> LabelBook {
        LabelBook {
            pending: Cache::new(transactions),
            counts: Cache::new(entities),
            unknown: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
        }
    }

    /// Remembers an applied transaction's entities so its label can be credited later.
    pub fn remember(&self, txn: &Transaction) {
        let mut keys: Vec<EntityKey> = Vec::with_capacity(5);
        keys.push((NodeType::Account, txn.account_id.as_str().into()));
        keys.push((NodeType::Merchant, txn.merchant_id.as_str().into()));
        if let Some(d) = &txn.device_id {
            keys.push((NodeType::Device, d.as_str().into()));
        }
        if let Some(ip) = &txn.ip {
            keys.push((NodeType::Ip, ip.as_str().into()));
        }
        if let Some(c) = &txn.card_id {
            keys.push((NodeType::Card, c.as_str().into()));
        }
        self.pending.insert(txn_hash(&txn.txn_id), keys.into());
    }

    /// Credits a validated label to its transaction's entities. Returns false (and changes
    /// nothing) when the transaction is unknown or already labelled: a label delivered twice
    /// counts once.
    pub fn record(&self, label: &Label) -> bool {
        let Some(keys) = self.pending.remove(&txn_hash(&label.txn_id)) else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        for key in keys.iter() {
            let counts = self
                .counts
                .get_with(key.clone(), || Arc::new(Mutex::new(LabelCounts::default())));
            let mut c = counts.lock();
            c.labelled += 1;
            c.fraud += u32::from(label.is_fraud);
        }
        self.recorded.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The entity's counts, if any of its transactions has been labelled.
    pub fn counts(&self, t: NodeType, key: &str) -> Option<LabelCounts> {
        self.counts.get(&(t, key.into())).map(|c| *c.lock())
    }

    /// Labels credited so far, and labels whose transaction was unknown or already labelled.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.recorded.load(Ordering::Relaxed),
            self.unknown.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: &str, account: &str, device: &str) -> Transaction {
        Transaction {
            txn_id: id.into(),
            account_id: account.into(),
            device_id: Some(device.into()),
            merchant_id: "m1".into(),
            ..Transaction::default()
        }
    }

    fn label(id: &str, fraud: bool) -> Label {
        Label {
            txn_id: id.into(),
            is_fraud: fraud,
            ..Label::default()
        }
    }

    #[test]
    fn labels_are_credited_to_every_entity_once() {
        let book = LabelBook::new(100, 100);
        book.remember(&txn("t1", "a1", "d1"));
        book.remember(&txn("t2", "a2", "d1"));
        assert!(book.record(&label("t1", true)));
        assert!(
            !book.record(&label("t1", true)),
            "a repeated label counts once"
        );
        assert!(book.record(&label("t2", false)));
        assert!(!book.record(&label("t3", true)), "unknown transaction");
        let counts = |t, k| book.counts(t, k).map(|c| (c.labelled, c.fraud));
        assert_eq!(counts(NodeType::Device, "d1"), Some((2, 1)));
        assert_eq!(counts(NodeType::Account, "a1"), Some((1, 1)));
        assert_eq!(counts(NodeType::Account, "a2"), Some((1, 0)));
        assert_eq!(counts(NodeType::Ip, "1.2.3.4"), None);
        assert_eq!(book.totals(), (2, 2));
    }
}
