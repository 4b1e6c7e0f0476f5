//! The subgraph as a petgraph graph, for explanations (paths, structure) and
//! Graphviz DOT export.

use petgraph::graph::{DiGraph, NodeIndex};

use crate::graph::Graph;
use crate::sample::Subgraph;
use crate::schema::{NodeType, Relation};

/// A node of the explanation view.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewNode {
    /// The entity kind.
    pub node_type: NodeType,
    /// The entity id (`"?"` if the graph has evicted it since sampling).
    pub key: String,
    /// Hops from the transaction's account.
    pub hop: u8,
    /// True for the transaction's own entities.
    pub own: bool,
}

impl Subgraph {
    /// The subgraph as a directed petgraph graph (edges point from each
    /// relation's source type to its destination type). Node indices follow
    /// node types in [`NodeType::index`] order, then rows. Ids of known nodes
    /// are read from `graph`, the graph it was sampled from; call it soon
    /// after sampling (an evicted node's slot may since hold another id).
    pub fn to_petgraph(&self, graph: &Graph) -> DiGraph<ViewNode, Relation> {
        let mut g = DiGraph::with_capacity(self.node_count(), self.edge_count());
        let mut base = [0usize; NodeType::ALL.len()];
        for t in NodeType::ALL {
            base[t.index()] = g.node_count();
            for (row, n) in self.nodes[t.index()].iter().enumerate() {
                g.add_node(ViewNode {
                    node_type: t,
                    key: self.key(graph, t, row).unwrap_or_else(|| "?".into()),
                    hop: n.hop,
                    own: self.own_rows[t.index()] == Some(row as u32),
                });
            }
        }
        for r in Relation::ALL {
            let (st, dt) = r.endpoints();
            for &(s, d) in &self.edge_index[r.index()] {
                g.add_edge(
                    NodeIndex::new(base[st.index()] + s as usize),
                    NodeIndex::new(base[dt.index()] + d as usize),
                    r,
                );
            }
        }
        g
    }

    /// The subgraph in Graphviz DOT: one node per entity (type, id, hop), one
    /// labelled edge per relation; the transaction's own entities are bold.
    pub fn to_dot(&self, graph: &Graph) -> String {
        let g = self.to_petgraph(graph);
        let mut out = String::from("digraph subgraph {\n  rankdir=LR;\n");
        for i in g.node_indices() {
            let n = &g[i];
            let style = if n.own { ", style=bold" } else { "" };
            out.push_str(&format!(
                "  n{} [label=\"{:?}\\n{}\\nhop {}\"{style}];\n",
                i.index(),
                n.node_type,
                n.key.replace('"', "'"),
                n.hop
            ));
        }
        for e in g.edge_indices() {
            let (s, d) = g.edge_endpoints(e).expect("edge of this graph");
            out.push_str(&format!(
                "  n{} -> n{} [label=\"{}\"];\n",
                s.index(),
                d.index(),
                g[e].name()
            ));
        }
        out.push_str("}\n");
        out
    }
}
