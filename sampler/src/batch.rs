//! Collation: many subgraphs into one batch of flat arrays, ready to become
//! tensors with one copy each.
//!
//! A [`Batch`] is reusable: [`Batch::collate`] clears it and refills its
//! vectors, keeping their capacity, so a pipeline can keep two batches and
//! fill one while the other is in inference (double buffering) without
//! allocating. Each subgraph's data is copied exactly once, into place.

use crate::features::{self, EDGE_FEATURES, SEQ_FEATURES, TXN_FEATURES};
use crate::sample::Subgraph;
use crate::schema::{NodeType, Relation};

/// Marks a missing row in [`Batch::own_rows`] and [`Batch::counterparty_row`].
pub const NO_ROW: u32 = u32::MAX;

/// Flat arrays of a batch of subgraphs. Node rows of all subgraphs are
/// stacked per type; edge indices are shifted to the stacked rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Subgraphs in the batch.
    pub size: usize,
    /// Node features per type, row-major, `features::node_width(t)` columns.
    pub node_features: [Vec<f32>; NodeType::ALL.len()],
    /// For each node row, the index of its subgraph in the batch.
    pub node_graph: [Vec<u32>; NodeType::ALL.len()],
    /// Edges per relation as (source row, destination row) in the stacked rows.
    pub edge_index: [Vec<(u32, u32)>; Relation::ALL.len()],
    /// Edge features per relation, row-major.
    pub edge_features: [Vec<f32>; Relation::ALL.len()],
    /// Per subgraph: the stacked row of its transaction's account.
    pub target_account: Vec<u32>,
    /// Per node type, per subgraph: the stacked row of the transaction's own
    /// entity of that type ([`Subgraph::own_rows`]), [`NO_ROW`] when it has none.
    pub own_rows: [Vec<u32>; NodeType::ALL.len()],
    /// Per subgraph: the stacked account row of its transfer's receiver
    /// ([`Subgraph::counterparty_row`]), [`NO_ROW`] when it is not a transfer.
    pub counterparty_row: Vec<u32>,
    /// Per subgraph: [`TXN_FEATURES`], row-major.
    pub txn_features: Vec<f32>,
    /// Per subgraph: `max_sequence` × [`SEQ_FEATURES`], right-aligned (the
    /// newest element last), zero-padded at the front.
    pub sequence: Vec<f32>,
    /// Per subgraph: how many sequence elements are real.
    pub sequence_len: Vec<u32>,
    /// The padded sequence length.
    pub max_sequence: usize,
}

impl Batch {
    /// Refills this batch from `subgraphs`, keeping allocated capacity.
    /// Sequences longer than `max_sequence` keep their newest elements.
    pub fn collate(&mut self, subgraphs: &[Subgraph], max_sequence: usize) {
        self.size = subgraphs.len();
        self.max_sequence = max_sequence;
        for t in NodeType::ALL {
            let rows: usize = subgraphs.iter().map(|s| s.nodes[t.index()].len()).sum();
            self.node_features[t.index()].clear();
            self.node_features[t.index()].reserve(rows * features::node_width(t));
            self.node_graph[t.index()].clear();
            self.node_graph[t.index()].reserve(rows);
        }
        for r in Relation::ALL {
            let n: usize = subgraphs
                .iter()
                .map(|s| s.edge_index[r.index()].len())
                .sum();
            self.edge_index[r.index()].clear();
            self.edge_index[r.index()].reserve(n);
            self.edge_features[r.index()].clear();
            self.edge_features[r.index()].reserve(n * EDGE_FEATURES.len());
        }
        self.target_account.clear();
        for rows in &mut self.own_rows {
            rows.clear();
        }
        self.counterparty_row.clear();
        self.txn_features.clear();
        self.txn_features
            .reserve(subgraphs.len() * TXN_FEATURES.len());
        self.sequence.clear();
        self.sequence
            .resize(subgraphs.len() * max_sequence * SEQ_FEATURES.len(), 0.0);
        self.sequence_len.clear();

        let mut offsets = [0u32; NodeType::ALL.len()];
        for (g, sub) in subgraphs.iter().enumerate() {
            for t in NodeType::ALL {
                let i = t.index();
                self.node_features[i].extend_from_slice(&sub.node_features[i]);
                self.node_graph[i].extend(std::iter::repeat_n(g as u32, sub.nodes[i].len()));
            }
            for r in Relation::ALL {
                let (st, dt) = r.endpoints();
                let (so, d_o) = (offsets[st.index()], offsets[dt.index()]);
                self.edge_index[r.index()].extend(
                    sub.edge_index[r.index()]
                        .iter()
                        .map(|&(s, d)| (s + so, d + d_o)),
                );
                self.edge_features[r.index()].extend_from_slice(&sub.edge_features[r.index()]);
            }
            self.target_account
                .push(offsets[NodeType::Account.index()] + sub.target_account);
            for t in NodeType::ALL {
                let i = t.index();
                self.own_rows[i].push(sub.own_rows[i].map_or(NO_ROW, |r| offsets[i] + r));
            }
            let accounts = offsets[NodeType::Account.index()];
            self.counterparty_row
                .push(sub.counterparty_row.map_or(NO_ROW, |r| accounts + r));
            self.txn_features.extend_from_slice(&sub.txn_features);
            let keep = sub.sequence_len.min(max_sequence);
            let w = SEQ_FEATURES.len();
            let src = &sub.sequence[(sub.sequence_len - keep) * w..];
            let end = (g + 1) * max_sequence * w;
            self.sequence[end - keep * w..end].copy_from_slice(src);
            self.sequence_len.push(keep as u32);
            for t in NodeType::ALL {
                offsets[t.index()] += sub.nodes[t.index()].len() as u32;
            }
        }
    }
}
