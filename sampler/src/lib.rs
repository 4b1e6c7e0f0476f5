//! The live temporal heterogeneous graph of who used what, and the causal
//! 3-hop sampler over it (issue #3).
//!
//! - [`schema`]: node types, typed relations, the edges a transaction creates.
//! - [`graph`]: the live graph store (one writer, many readers, causal views).
//! - [`adjacency`]: a node's edges, every relation side in one allocation.
//! - [`node_key`]: a node's id, inside the node when short.
//! - [`hot`]: a lock-free mirror of each node's first cache line, for samplers.
//! - `id_index`: finding a node by its id, in a table the writer can prefetch.
//! - [`features`]: the one definition of every raw feature, and its hash.
//! - [`sample`]: the causal 3-hop sampler producing a [`sample::Subgraph`].
//! - [`batch`]: collation of subgraphs into flat batch arrays.
//! - [`view`]: the subgraph as petgraph, and DOT export, for explanations.
//! - [`snapshot`]: atomic, checksummed, versioned snapshots with Kafka offsets.

pub mod adjacency;
pub mod batch;
pub mod features;
pub mod graph;
pub mod hot;
mod id_index;
pub mod node_key;
mod prefetch;
pub mod sample;
pub mod schema;
pub mod snapshot;
pub mod view;

pub use schema::{NodeType, Relation, edges_of};
