//! The flat, fixed-width feature row of one transaction that the LightGBM fallback scores:
//! the transaction itself plus its one-hop context, cut from the sampled [`Subgraph`] the GNN
//! gets, so both models see the same causal view of the graph.
//!
//! Layout (names in [`tabular_feature_names`], width [`tabular_width`], 138 today):
//!
//! 1. `txn_<f>` for every `f` in [`features::TXN_FEATURES`] (`sub.txn_features`).
//! 2. `account_<f>` for every node feature of the target account (row
//!    `sub.target_account` of the account nodes; always present).
//! 3. For each of the transaction's own entities, in this order: `counterparty` (the receiver
//!    of a transfer: the destination of the target's own `transferred_to` edge), `device`,
//!    `ip`, `merchant`, `card` (the row `sub.own_rows[type]`): a presence flag `has_<slot>`,
//!    then `<slot>_<f>` for every node feature of its type ([`features::node_feature_names`]).
//!    An absent entity has the flag 0 and all its columns 0; an entity the graph has never
//!    seen is present (flag 1) with the sampler's new-node features (`is_new` = 1).
//! 4. For each relation `r` in [`Relation::ALL`] order: `edge_<r.name()>_present` (1 when the
//!    transaction has its own edge of that relation: the sampler's `is_target_edge` column),
//!    then `edge_<r.name()>_<f>` for the other [`features::EDGE_FEATURES`] of that edge (what
//!    the graph knew of it before the transaction; 0 when absent or new).
//!
//! Every value is finite: anything non-finite coming out of a subgraph is written as 0.

use fraudgraph_sampler::features;
use fraudgraph_sampler::sample::Subgraph;
use fraudgraph_sampler::{NodeType, Relation};

/// The transaction's own entities after the target account, with their node types.
const SLOTS: [(&str, NodeType); 5] = [
    ("counterparty", NodeType::Account),
    ("device", NodeType::Device),
    ("ip", NodeType::Ip),
    ("merchant", NodeType::Merchant),
    ("card", NodeType::Card),
];

/// Column of [`features::EDGE_FEATURES`] that marks the transaction's own edges (the last).
const TARGET_EDGE_COLUMN: usize = features::EDGE_FEATURES.len() - 1;

/// The names of the tabular features, in column order (see the module docs for the layout).
/// Unique, and accepted by LightGBM as feature names (ASCII letters, digits, `_`).
pub fn tabular_feature_names() -> Vec<String> {
    let mut names = Vec::with_capacity(tabular_width());
    names.extend(features::TXN_FEATURES.iter().map(|f| format!("txn_{f}")));
    names.extend(
        features::node_feature_names(NodeType::Account)
            .iter()
            .map(|f| format!("account_{f}")),
    );
    for (slot, t) in SLOTS {
        names.push(format!("has_{slot}"));
        names.extend(
            features::node_feature_names(t)
                .iter()
                .map(|f| format!("{slot}_{f}")),
        );
    }
    for r in Relation::ALL {
        let rel = r.name();
        names.push(format!("edge_{rel}_present"));
        names.extend(
            features::EDGE_FEATURES[..TARGET_EDGE_COLUMN]
                .iter()
                .map(|f| format!("edge_{rel}_{f}")),
        );
    }
    names
}

/// The number of tabular features: the same for every subgraph.
pub fn tabular_width() -> usize {
    features::TXN_FEATURES.len()
        + features::node_width(NodeType::Account)
        + SLOTS
            .iter()
            .map(|&(_, t)| 1 + features::node_width(t))
            .sum::<usize>()
        + Relation::ALL.len() * features::EDGE_FEATURES.len()
}

/// Appends the [`tabular_width`] features of `sub` to `out` (see the module docs for the
/// layout). Never panics and never writes NaN or infinities, even for a malformed subgraph
/// (short feature arrays, rows out of range): what is missing is written as 0.
pub fn tabular_features(sub: &Subgraph, out: &mut Vec<f32>) {
    let start = out.len();
    push_fixed(out, &sub.txn_features, features::TXN_FEATURES.len());

    let account = NodeType::Account;
    push_fixed(
        out,
        node_row(sub, account, sub.target_account as usize).unwrap_or(&[]),
        features::node_width(account),
    );

    let counterparty = target_edge(sub, Relation::AccountAccount)
        .and_then(|i| sub.edge_index[Relation::AccountAccount.index()].get(i))
        .map(|&(_, dst)| dst as usize);
    for (slot, t) in SLOTS {
        let row = if slot == "counterparty" {
            counterparty
        } else {
            sub.own_rows[t.index()].map(|r| r as usize)
        };
        let values = row.and_then(|r| node_row(sub, t, r));
        out.push(if values.is_some() { 1.0 } else { 0.0 });
        push_fixed(out, values.unwrap_or(&[]), features::node_width(t));
    }

    let width = features::EDGE_FEATURES.len();
    for r in Relation::ALL {
        let values = target_edge(sub, r)
            .and_then(|i| sub.edge_features[r.index()].get(i * width..(i + 1) * width));
        out.push(if values.is_some() { 1.0 } else { 0.0 });
        push_fixed(
            out,
            values.map_or(&[][..], |v| &v[..TARGET_EDGE_COLUMN]),
            TARGET_EDGE_COLUMN,
        );
    }
    debug_assert_eq!(out.len() - start, tabular_width());
}

/// Appends exactly `width` values: `values` (truncated or zero-padded), non-finite ones as 0.
fn push_fixed(out: &mut Vec<f32>, values: &[f32], width: usize) {
    let take = values.len().min(width);
    out.extend(
        values[..take]
            .iter()
            .map(|&v| if v.is_finite() { v } else { 0.0 }),
    );
    out.resize(out.len() + (width - take), 0.0);
}

/// The features of row `row` of node type `t`, if the subgraph has them.
fn node_row(sub: &Subgraph, t: NodeType, row: usize) -> Option<&[f32]> {
    let w = features::node_width(t);
    if row >= sub.nodes[t.index()].len() {
        return None;
    }
    sub.node_features[t.index()].get(row * w..(row + 1) * w)
}

/// The index of the transaction's own edge of relation `r`, if it has one.
fn target_edge(sub: &Subgraph, r: Relation) -> Option<usize> {
    let width = features::EDGE_FEATURES.len();
    let edges = sub.edge_index[r.index()].len();
    sub.edge_features[r.index()]
        .chunks_exact(width)
        .take(edges)
        .position(|e| e[TARGET_EDGE_COLUMN] == 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fraudgraph_sampler::sample::SampledNode;

    #[test]
    fn the_target_edge_column_is_the_last_edge_feature() {
        assert_eq!(
            features::EDGE_FEATURES[TARGET_EDGE_COLUMN],
            "is_target_edge"
        );
    }

    #[test]
    fn names_are_unique_lightgbm_safe_and_as_wide_as_the_row() {
        let names = tabular_feature_names();
        assert_eq!(names.len(), tabular_width());
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for n in &names {
            assert!(
                n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{n}"
            );
        }
        assert!(names.contains(&"edge_used_device_present".to_owned()));
        assert!(names.contains(&"device_is_new".to_owned()));
        assert!(names.contains(&"txn_log_amount".to_owned()));
    }

    fn empty() -> Subgraph {
        Subgraph {
            txn_id: "t".into(),
            t_ms: 0,
            nodes: Default::default(),
            node_features: Default::default(),
            edge_index: Default::default(),
            edge_features: Default::default(),
            target_account: 0,
            own_rows: [None; NodeType::ALL.len()],
            counterparty_row: None,
            txn_features: Vec::new(),
            sequence: Vec::new(),
            sequence_len: 0,
            hops: 0,
        }
    }

    #[test]
    fn a_malformed_subgraph_gives_a_full_finite_row() {
        let mut sub = empty();
        // A device row without features, a NaN transaction feature, and an edge without
        // features.
        sub.nodes[NodeType::Device.index()].push(SampledNode {
            node: None,
            new_key: Some("d".into()),
            hop: 1,
        });
        sub.own_rows[NodeType::Device.index()] = Some(0);
        sub.own_rows[NodeType::Ip.index()] = Some(5);
        sub.txn_features = vec![f32::NAN, f32::INFINITY, 1.0];
        sub.edge_index[0].push((0, 0));
        let mut out = vec![7.0];
        tabular_features(&sub, &mut out);
        assert_eq!(out.len(), 1 + tabular_width());
        assert!(out.iter().all(|v| v.is_finite()));
        assert_eq!(&out[1..4], &[0.0, 0.0, 1.0]);
        assert!(out[4..].iter().all(|&v| v == 0.0), "absent means zeros");
    }

    #[test]
    fn present_entities_and_edges_are_flagged() {
        let mut sub = empty();
        let node = |key: &str, hop| SampledNode {
            node: None,
            new_key: Some(key.into()),
            hop,
        };
        let a = NodeType::Account;
        let d = NodeType::Device;
        sub.nodes[a.index()] = vec![node("a", 0), node("b", 0)];
        sub.node_features[a.index()] = (0..2 * features::node_width(a)).map(|i| i as f32).collect();
        sub.nodes[d.index()] = vec![node("d1", 2), node("d0", 1)];
        sub.own_rows[a.index()] = Some(0);
        sub.own_rows[d.index()] = Some(1);
        sub.node_features[d.index()] = (0..2 * features::node_width(d))
            .map(|i| 100.0 + i as f32)
            .collect();
        let transfer = Relation::AccountAccount.index();
        sub.edge_index[transfer] = vec![(0, 1)];
        sub.edge_features[transfer] = vec![3.0, 4.0, 5.0, 6.0, 1.0];
        sub.txn_features = vec![0.5; features::TXN_FEATURES.len()];

        let names = tabular_feature_names();
        let mut out = Vec::new();
        tabular_features(&sub, &mut out);
        let get = |name: &str| out[names.iter().position(|n| n == name).unwrap()];
        assert_eq!(get("txn_log_amount"), 0.5);
        assert_eq!(get("account_log_count_1h"), 0.0);
        assert_eq!(get("has_counterparty"), 1.0);
        assert_eq!(
            get("counterparty_log_count_1h"),
            features::node_width(a) as f32
        );
        assert_eq!(get("has_device"), 1.0);
        // The transaction's own device is the second row.
        assert_eq!(
            get("device_log_count_1h"),
            100.0 + features::node_width(d) as f32
        );
        assert_eq!(get("has_ip"), 0.0);
        assert_eq!(get("edge_transferred_to_present"), 1.0);
        assert_eq!(get("edge_transferred_to_log_count"), 3.0);
        assert_eq!(get("edge_transferred_to_log_days_since_last"), 6.0);
        assert_eq!(get("edge_used_device_present"), 0.0);
    }
}
