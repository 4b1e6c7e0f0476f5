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

/// Parses a `--fanouts` value: three neighbour counts, one per hop, as `20,10,5`.
/// A hop of 0 stops the sampling there.
pub fn parse_fanouts(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(format!(
            "fan-outs: expected three comma-separated counts, one per hop (e.g. 20,10,5), got {} value(s) in {s:?}",
            parts.len()
        ));
    };
    let hop = |i: usize, v: &str| {
        v.parse::<usize>()
            .map_err(|_| format!("fan-outs: hop {i} is {v:?}, not a whole number"))
    };
    Ok([hop(1, a)?, hop(2, b)?, hop(3, c)?])
}

#[cfg(test)]
mod tests {
    use super::parse_fanouts;

    #[test]
    fn fanouts_are_three_counts_and_a_bad_one_is_named() {
        assert_eq!(parse_fanouts("20,10,5"), Ok([20, 10, 5]));
        assert_eq!(parse_fanouts(" 8, 4 ,0"), Ok([8, 4, 0]));
        let two = parse_fanouts("20,10").unwrap_err();
        assert!(two.contains("three") && two.contains("2 value"), "{two}");
        let bad = parse_fanouts("20,ten,5").unwrap_err();
        assert!(bad.contains("hop 2") && bad.contains("\"ten\""), "{bad}");
        assert!(parse_fanouts("20,10,-1").unwrap_err().contains("hop 3"));
    }
}
