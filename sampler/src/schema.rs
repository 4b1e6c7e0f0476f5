//! The shape of the transaction graph: node types, typed relations, and the
//! edges one transaction creates.
//!
//! This is the single place that says which transaction fields become which
//! edges; the graph store, the sampler and the model's relation-aware layers
//! all index relations by [`Relation::index`].

use fraudgraph_proto::v1::{self, Transaction};

/// The entity kinds of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeType {
    /// A customer account (payer, or receiver of a transfer).
    Account,
    /// A device fingerprint.
    Device,
    /// A client IP address.
    Ip,
    /// A merchant.
    Merchant,
    /// A card token.
    Card,
}

impl NodeType {
    /// All node types, in [`NodeType::index`] order.
    pub const ALL: [NodeType; 5] = [
        NodeType::Account,
        NodeType::Device,
        NodeType::Ip,
        NodeType::Merchant,
        NodeType::Card,
    ];

    /// A dense index, `0..NodeType::ALL.len()`, for per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The contract's name for this type.
    pub fn to_proto(self) -> v1::NodeType {
        match self {
            NodeType::Account => v1::NodeType::Account,
            NodeType::Device => v1::NodeType::Device,
            NodeType::Ip => v1::NodeType::Ip,
            NodeType::Merchant => v1::NodeType::Merchant,
            NodeType::Card => v1::NodeType::Card,
        }
    }
}

/// A typed, directed relation between two node types. Messages in the model
/// flow both ways; the direction here names which end is the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    /// An account paid from a device.
    AccountDevice,
    /// An account paid from an IP.
    AccountIp,
    /// An account paid a merchant.
    AccountMerchant,
    /// An account paid with a card.
    AccountCard,
    /// A device was seen on an IP.
    DeviceIp,
    /// A card was used at a merchant.
    CardMerchant,
    /// An account transferred money to another account.
    AccountAccount,
}

impl Relation {
    /// All relations, in [`Relation::index`] order.
    pub const ALL: [Relation; 7] = [
        Relation::AccountDevice,
        Relation::AccountIp,
        Relation::AccountMerchant,
        Relation::AccountCard,
        Relation::DeviceIp,
        Relation::CardMerchant,
        Relation::AccountAccount,
    ];

    /// A dense index, `0..Relation::ALL.len()`, for per-relation arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The source and destination node types.
    pub fn endpoints(self) -> (NodeType, NodeType) {
        use NodeType::*;
        match self {
            Relation::AccountDevice => (Account, Device),
            Relation::AccountIp => (Account, Ip),
            Relation::AccountMerchant => (Account, Merchant),
            Relation::AccountCard => (Account, Card),
            Relation::DeviceIp => (Device, Ip),
            Relation::CardMerchant => (Card, Merchant),
            Relation::AccountAccount => (Account, Account),
        }
    }

    /// A short name for explanations and DOT export, e.g. `used_device`.
    pub fn name(self) -> &'static str {
        match self {
            Relation::AccountDevice => "used_device",
            Relation::AccountIp => "used_ip",
            Relation::AccountMerchant => "paid_merchant",
            Relation::AccountCard => "used_card",
            Relation::DeviceIp => "device_on_ip",
            Relation::CardMerchant => "card_at_merchant",
            Relation::AccountAccount => "transferred_to",
        }
    }
}

/// One edge a transaction creates or reinforces: relation, source id,
/// destination id (as the caller spells them).
pub type EdgeRef<'a> = (Relation, &'a str, &'a str);

/// The edges a transaction creates: account–merchant always, and one edge per
/// optional entity it carries (device, IP, card, transfer receiver), plus
/// device–IP and card–merchant when both ends are present.
pub fn edges_of(txn: &Transaction) -> impl Iterator<Item = EdgeRef<'_>> {
    let account = txn.account_id.as_str();
    let merchant = txn.merchant_id.as_str();
    let device = txn.device_id.as_deref();
    let ip = txn.ip.as_deref();
    let card = txn.card_id.as_deref();
    let receiver = txn.counterparty_account_id.as_deref();
    [
        Some((Relation::AccountMerchant, account, merchant)),
        device.map(|d| (Relation::AccountDevice, account, d)),
        ip.map(|i| (Relation::AccountIp, account, i)),
        card.map(|c| (Relation::AccountCard, account, c)),
        device.zip(ip).map(|(d, i)| (Relation::DeviceIp, d, i)),
        card.map(|c| (Relation::CardMerchant, c, merchant)),
        receiver.map(|r| (Relation::AccountAccount, account, r)),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn() -> Transaction {
        Transaction {
            txn_id: "t".into(),
            account_id: "a".into(),
            merchant_id: "m".into(),
            ..Default::default()
        }
    }

    #[test]
    fn indices_are_dense_and_in_order() {
        for (i, t) in NodeType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
        for (i, r) in Relation::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(NodeType::Ip.to_proto(), v1::NodeType::Ip);
    }

    #[test]
    fn a_card_present_payment_links_account_merchant_and_card() {
        let mut t = txn();
        t.card_id = Some("c".into());
        let edges: Vec<_> = edges_of(&t).collect();
        assert_eq!(
            edges,
            vec![
                (Relation::AccountMerchant, "a", "m"),
                (Relation::AccountCard, "a", "c"),
                (Relation::CardMerchant, "c", "m"),
            ]
        );
    }

    #[test]
    fn an_online_transfer_creates_every_relation_it_carries() {
        let mut t = txn();
        t.device_id = Some("d".into());
        t.ip = Some("1.2.3.4".into());
        t.counterparty_account_id = Some("b".into());
        let edges: Vec<_> = edges_of(&t).collect();
        assert_eq!(
            edges,
            vec![
                (Relation::AccountMerchant, "a", "m"),
                (Relation::AccountDevice, "a", "d"),
                (Relation::AccountIp, "a", "1.2.3.4"),
                (Relation::DeviceIp, "d", "1.2.3.4"),
                (Relation::AccountAccount, "a", "b"),
            ]
        );
        for (relation, _, _) in edges {
            let (src, _) = relation.endpoints();
            assert!(matches!(src, NodeType::Account | NodeType::Device));
        }
    }
}
