//! The subcommands of the `fraudgraph` binary, one module each.

pub mod bench;
pub mod bench_pipeline;
pub mod device;
pub mod doctor;
pub mod eval;
pub mod serve;
pub mod simulate;
pub mod train;

use std::path::Path;

use anyhow::Context as _;
use serde::de::DeserializeOwned;

/// The JSON config file at `path` (any of its fields; the rest default), or the
/// default when no file is given. Errors name the file and `what` it should be.
pub fn read_json<T: DeserializeOwned + Default>(
    path: Option<&Path>,
    what: &str,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid {what}", path.display()))
}
