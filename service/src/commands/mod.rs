//! The subcommands of the `fraudgraph` binary, one module each.

pub mod doctor;
pub mod simulate;
