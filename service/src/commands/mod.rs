//! The subcommands of the `fraudgraph` binary, one module each.

pub mod bench;
pub mod doctor;
pub mod simulate;
