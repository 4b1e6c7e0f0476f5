//! The live temporal heterogeneous graph of who used what, and the causal
//! 3-hop sampler over it (issue #3).
//!
//! Today this crate owns the graph's [`schema`]: its node types, its typed
//! relations, and which relations one transaction creates. The graph store,
//! the sampler and snapshots build on it.

pub mod graph;
pub mod schema;

pub use schema::{NodeType, Relation, edges_of};
