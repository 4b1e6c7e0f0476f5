//! The fraudgraph contract.
//!
//! This crate owns the messages and services of `proto/fraudgraph/v1/` and
//! everything that is the same on the gRPC and the Kafka side:
//!
//! - [`v1`]: the generated prost messages, tonic client and server, and serde
//!   impls following the canonical protobuf JSON mapping (pbjson).
//! - [`validate`]: the one validation of transactions and labels; every error
//!   names the offending field.
//! - [`codec`]: Kafka payloads in protobuf or JSON, and the topic and key
//!   conventions.
//! - [`stream_file`]: `.jsonl` and `.pb` files of stream records, as the
//!   simulator writes them and training reads them.
//!
//! See `docs/CONTRACT.md` for the JSON mapping and topic layout.

pub mod codec;
pub mod stream_file;
pub mod validate;

/// The generated `fraudgraph.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/fraudgraph.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/fraudgraph.v1.serde.rs"));
}

/// The encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fraudgraph_descriptor.bin"));

pub use codec::{PayloadFormat, topics};
pub use validate::{FieldError, ValidationError};
