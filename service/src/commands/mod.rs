//! The subcommands of the `fraudgraph` binary, one module each.

pub mod bench;
pub mod device;
pub mod doctor;
pub mod eval;
pub mod simulate;
pub mod train;
