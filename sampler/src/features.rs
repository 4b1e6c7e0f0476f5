//! The one definition of the raw features the sampler produces: per node
//! type, per edge, per transaction and per sequence element. Training and
//! serving both get their tensors from here, so there is no train/serve skew.
//!
//! [`schema_hash`] fingerprints the names and order of every feature; a model
//! artifact records it, and a mismatch means the model was trained on other
//! features.

use crate::graph::{EdgeView, Node, ports};
use crate::schema::{NodeType, Relation};

/// Bumped whenever a feature's meaning changes without its name changing.
/// Version 2: logarithms by [`ln1p`] instead of libm's `log1pf`.
pub const FEATURE_SCHEMA_VERSION: u32 = 2;

/// `ln(1 + x)` for `x >= 0` (negative inputs count as 0), to about 1e-6
/// absolute: the exponent from the float's bits, the mantissa reduced to
/// [√½, √2), and `ln m = 2·atanh((m−1)/(m+1))` by four series terms. Pure
/// f32 arithmetic, so it gives the same bits everywhere, and several times
/// cheaper than libm at the thousands of calls a sampled subgraph makes. A `const fn`, so
/// [`ln1p_count`]'s table holds exactly its values.
///
/// Written without branches (the mantissa's range and a non-finite input are selects), so
/// that [`ln1p_columns`] evaluates many of it side by side in SIMD lanes.
pub const fn ln1p(x: f32) -> f32 {
    let y = 1.0 + x.max(0.0);
    let bits = y.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let high = m > std::f32::consts::SQRT_2;
    let m = if high { m * 0.5 } else { m };
    let exponent = exponent + high as i32;
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let ln_m = 2.0 * z * (1.0 + z2 * (1.0 / 3.0 + z2 * (0.2 + z2 * (1.0 / 7.0))));
    let r = exponent as f32 * std::f32::consts::LN_2 + ln_m;
    if y.is_finite() { r } else { y }
}

/// [`ln1p`] of the small counts every node and edge carries (degrees, sightings).
const LN1P_COUNTS: [f32; 256] = {
    let mut table = [0.0; 256];
    let mut n = 0;
    while n < table.len() {
        table[n] = ln1p(n as f32);
        n += 1;
    }
    table
};

/// `ln1p(n as f32)`, the same bits, from a table below 256.
pub fn ln1p_count(n: u64) -> f32 {
    if n < LN1P_COUNTS.len() as u64 {
        LN1P_COUNTS[n as usize]
    } else {
        ln1p(n as f32)
    }
}

/// Node features every type has, before its per-port degrees.
pub const NODE_BASE_FEATURES: [&str; 10] = [
    "log_count_1h",
    "log_count_24h",
    "log_count_7d",
    "log_amount_1h",
    "log_amount_24h",
    "log_amount_7d",
    "hour_concentration_7d",
    "log_velocity_ratio_1h_24h",
    "log_age_days",
    "is_new",
];

/// The feature names of a node type: the base features, then the log of the
/// visible degree of each relation side (`deg_<relation>_<side>`).
pub fn node_feature_names(t: NodeType) -> Vec<String> {
    let mut names: Vec<String> = NODE_BASE_FEATURES.iter().map(|s| s.to_string()).collect();
    for (relation, side) in ports(t) {
        names.push(format!("log_deg_{}_{:?}", relation.name(), side).to_lowercase());
    }
    names
}

/// Feature width of a node type.
pub fn node_width(t: NodeType) -> usize {
    NODE_BASE_FEATURES.len() + ports(t).len()
}

/// Edge features.
pub const EDGE_FEATURES: [&str; 5] = [
    "log_count",
    "log_mean_amount",
    "log_days_since_first",
    "log_days_since_last",
    "is_target_edge",
];

/// Features of the transaction being scored.
pub const TXN_FEATURES: [&str; 18] = [
    "log_amount",
    "hour_sin_local",
    "hour_cos_local",
    "channel_card_present",
    "channel_ecommerce",
    "channel_mobile_app",
    "channel_transfer",
    "has_device",
    "has_ip",
    "has_card",
    "mcc_scaled",
    "offset_known",
    "offset_unusual_for_account",
    "device_new_to_account",
    "ip_new_to_account",
    "merchant_new_to_account",
    "log_seconds_since_account_last_txn",
    "log_amount_over_account_mean",
];

/// Features of one element of the account's recent-transaction sequence.
pub const SEQ_FEATURES: [&str; 7] = [
    "log_amount",
    "log_seconds_before_target",
    "hour_sin_utc",
    "hour_cos_utc",
    "channel_scaled",
    "mcc_scaled",
    "same_merchant_as_target",
];

/// A fingerprint of every feature name and order, and the version.
pub fn schema_hash() -> String {
    // FNV-1a over the names: stable across platforms and Rust versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&FEATURE_SCHEMA_VERSION.to_string());
    for t in NodeType::ALL {
        for name in node_feature_names(t) {
            feed(&name);
        }
    }
    for name in EDGE_FEATURES
        .iter()
        .chain(&TXN_FEATURES)
        .chain(&SEQ_FEATURES)
    {
        feed(name);
    }
    for r in Relation::ALL {
        feed(r.name());
    }
    format!("{h:016x}")
}

const DAY_MS: f32 = 86_400_000.0;

/// Node features of `node` as of `t_ms`; `degrees` are the visible edges per
/// port. A node the graph has never seen gets [`new_node_features`].
pub fn node_features(node: &Node, t_ms: i64, degrees: &[usize], out: &mut Vec<f32>) {
    node_features_of(node.aggregates_at(t_ms), node.first_ms, t_ms, degrees, out);
}

/// [`node_features`] from their parts: the node's aggregates as of `t_ms` (`None` when no
/// kept state predates it) and its first sighting.
pub fn node_features_of(
    agg: Option<[f32; 8]>,
    first_ms: i64,
    t_ms: i64,
    degrees: &[usize],
    out: &mut Vec<f32>,
) {
    let start = out.len();
    node_features_before_logs(agg, first_ms, t_ms, degrees, out);
    let width = out.len() - start;
    ln1p_columns(&mut out[start..], width, &NODE_LOG_COLUMNS);
}

/// The columns of a node's row that [`node_features_before_logs`] leaves holding the
/// argument of their [`ln1p`].
pub const NODE_LOG_COLUMNS: [usize; 7] = [0, 1, 2, 3, 4, 5, 8];

/// [`node_features_of`] with the columns [`NODE_LOG_COLUMNS`] left holding the argument of
/// their logarithm, for a caller that takes the logarithms of many rows at once
/// ([`ln1p_columns`]).
pub fn node_features_before_logs(
    agg: Option<[f32; 8]>,
    first_ms: i64,
    t_ms: i64,
    degrees: &[usize],
    out: &mut Vec<f32>,
) {
    let agg = agg.unwrap_or([0.0; 8]);
    let count_7d = agg[2].max(1e-6);
    let resultant = (agg[6] * agg[6] + agg[7] * agg[7]).sqrt() / count_7d;
    let age_days = (t_ms - first_ms).max(0) as f32 / DAY_MS;
    out.extend_from_slice(&[
        agg[0],
        agg[1],
        agg[2],
        agg[3],
        agg[4],
        agg[5],
        resultant.clamp(0.0, 1.0),
        ((agg[0] + 1.0) / (agg[1] / 24.0 + 1.0)).ln(),
        age_days,
        0.0,
    ]);
    out.extend(degrees.iter().map(|&d| ln1p_count(d as u64)));
}

/// Replaces `columns` of every `width`-wide row of `rows` by their [`ln1p`], the same bits
/// as one call per value. Rows are taken a block at a time: their values gathered into an
/// array of [`LN1P_BLOCK`], the logarithm taken of the whole array in one loop the compiler
/// unrolls into SIMD lanes, and put back. (One [`ln1p`] after another is a chain of
/// dependent divisions and multiplications; many side by side overlap.)
///
/// # Panics
/// If a column is not below `width` (more than [`LN1P_BLOCK`] columns do not compile).
pub fn ln1p_columns<const N: usize>(rows: &mut [f32], width: usize, columns: &[usize; N]) {
    const { assert!(N > 0 && N <= LN1P_BLOCK, "1 to LN1P_BLOCK columns") };
    assert!(
        columns.iter().all(|&c| c < width),
        "a column beyond the row"
    );
    let rows_per_block = LN1P_BLOCK / N;
    let mut values = [0.0f32; LN1P_BLOCK];
    for block in rows.chunks_mut(width * rows_per_block) {
        for (row, out) in block.chunks_exact(width).zip(values.chunks_exact_mut(N)) {
            for (o, &c) in out.iter_mut().zip(columns) {
                *o = row[c];
            }
        }
        ln1p_block(&mut values);
        for (row, logs) in block.chunks_exact_mut(width).zip(values.chunks_exact(N)) {
            for (&l, &c) in logs.iter().zip(columns) {
                row[c] = l;
            }
        }
    }
}

/// Values [`ln1p_columns`] takes the logarithm of at once.
pub const LN1P_BLOCK: usize = 64;

/// [`ln1p`] of every value of `values`, in AVX2's eight lanes where the CPU has them (twice
/// the four of the x86-64 baseline the crate is compiled for). The same bits either way:
/// [`ln1p`] is correctly rounded additions, multiplications and a division, whatever the
/// lane width, and nothing is fused.
fn ln1p_block(values: &mut [f32; LN1P_BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        #[allow(unsafe_code)]
        unsafe {
            ln1p_block_avx2(values)
        };
        return;
    }
    ln1p_each(values);
}

/// [`ln1p_each`] compiled for AVX2. Only call it where the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ln1p_block_avx2(values: &mut [f32; LN1P_BLOCK]) {
    ln1p_each(values);
}

/// [`ln1p`] of each value in place: a loop over a fixed-size array, which the compiler
/// unrolls into as many SIMD lanes as the function it is inlined into may use.
#[inline(always)]
fn ln1p_each(values: &mut [f32; LN1P_BLOCK]) {
    for v in values {
        *v = ln1p(*v);
    }
}

/// Node features of an entity the graph has not seen before `t`. Its logarithm columns
/// hold 0, which [`ln1p`] leaves as it is, so it needs no [`ln1p_columns`] pass and takes
/// one unchanged.
pub fn new_node_features(t: NodeType, out: &mut Vec<f32>) {
    let start = out.len();
    out.resize(start + node_width(t), 0.0);
    out[start + NODE_BASE_FEATURES.len() - 1] = 1.0;
}

/// Edge features of a visible edge as of `t_s` (seconds).
pub fn edge_features(e: &EdgeView, t_s: u32, target_edge: bool, out: &mut Vec<f32>) {
    let start = out.len();
    edge_features_before_logs(e, t_s, target_edge, out);
    ln1p_columns(&mut out[start..], EDGE_FEATURES.len(), &EDGE_LOG_COLUMNS);
}

/// The columns of an edge's row that [`edge_features_before_logs`] leaves holding the
/// argument of their [`ln1p`].
pub const EDGE_LOG_COLUMNS: [usize; 3] = [1, 2, 3];

/// [`edge_features`] with the columns [`EDGE_LOG_COLUMNS`] left holding the argument of
/// their logarithm (see [`ln1p_columns`]).
pub fn edge_features_before_logs(e: &EdgeView, t_s: u32, target_edge: bool, out: &mut Vec<f32>) {
    let days = |s: u32| t_s.saturating_sub(s) as f32 / 86_400.0;
    out.extend_from_slice(&[
        ln1p_count(u64::from(e.count)),
        e.amount / e.count.max(1) as f32,
        days(e.first_s),
        days(e.last_s),
        f32::from(u8::from(target_edge)),
    ]);
}

/// Edge features of the target's own edge to an entity it never used before (like
/// [`new_node_features`], unchanged by [`ln1p_columns`]).
pub fn new_edge_features(out: &mut Vec<f32>) {
    out.extend_from_slice(&[0.0, 0.0, 0.0, 0.0, 1.0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln1p_is_close_to_libm() {
        let mut x = 0.0f32;
        while x < 1e9 {
            let err = (ln1p(x) - x.ln_1p()).abs();
            assert!(err < 2e-6 * (1.0 + x.ln_1p()), "ln1p({x}) off by {err}");
            x = x * 1.37 + 0.013;
        }
        assert_eq!(ln1p(0.0), 0.0);
        assert_eq!(ln1p(-5.0), 0.0, "negative inputs clamp to 0");
    }

    /// Awkward inputs for [`ln1p`]: signed zeros, negatives, subnormals, the mantissa
    /// reduction's boundary, the extremes, non-finite values, and a sweep of magnitudes.
    fn awkward_values() -> Vec<f32> {
        let mut values = vec![
            0.0,
            -0.0,
            -1.0,
            -5.0,
            f32::MIN_POSITIVE,
            1e-45,
            0.414_213_57,
            0.414_213_6,
            1.0,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut x = 1e-7f32;
        while x < 1e12 {
            values.extend([x, x.next_up(), x.next_down(), -x]);
            x = x * 1.013 + 1e-7;
        }
        values
    }

    #[test]
    fn every_lane_width_gives_the_same_bits_as_one_call_each() {
        for block in awkward_values().chunks(LN1P_BLOCK) {
            let mut values = [0.0f32; LN1P_BLOCK];
            values[..block.len()].copy_from_slice(block);
            let mut plain = values;
            ln1p_each(&mut plain);
            let mut chosen = values;
            ln1p_block(&mut chosen);
            for ((x, p), c) in values.iter().zip(plain).zip(chosen) {
                let want = ln1p(*x).to_bits();
                assert_eq!(p.to_bits(), want, "baseline lanes, ln1p({x:e})");
                assert_eq!(c.to_bits(), want, "this CPU's lanes, ln1p({x:e})");
            }
        }
    }

    #[test]
    fn the_log_columns_get_the_same_bits_as_one_call_each() {
        let values = awkward_values();
        // Rows of width 5 whose columns 1 and 3 are logarithms; the others must not move.
        let width = 5;
        let mut rows: Vec<f32> = values
            .chunks(2)
            .flat_map(|v| [7.0, v[0], 9.0, *v.get(1).unwrap_or(&0.0), 11.0])
            .collect();
        let before = rows.clone();
        ln1p_columns(&mut rows, width, &[1, 3]);
        for (got, was) in rows.chunks_exact(width).zip(before.chunks_exact(width)) {
            for c in 0..width {
                let want = if c == 1 || c == 3 {
                    ln1p(was[c])
                } else {
                    was[c]
                };
                assert_eq!(got[c].to_bits(), want.to_bits(), "column {c} of {was:?}");
            }
        }
    }

    #[test]
    fn a_row_of_features_is_its_row_before_logs_with_the_logs_taken() {
        let agg = Some([3.0, 40.0, 250.0, 1e4, 2e5, 9e6, 12.0, -30.0]);
        let (first_ms, t_ms) = (1_600_000_000_000, 1_700_000_000_000);
        let mut whole = Vec::new();
        node_features_of(agg, first_ms, t_ms, &[0, 3, 300], &mut whole);
        let mut rows = Vec::new();
        node_features_before_logs(agg, first_ms, t_ms, &[0, 3, 300], &mut rows);
        ln1p_columns(&mut rows, whole.len(), &NODE_LOG_COLUMNS);
        assert_eq!(rows, whole);
        assert!(
            (whole[2] - 251.0f32.ln()).abs() < 1e-5,
            "log_count_7d: {whole:?}"
        );

        let e = EdgeView {
            nbr: crate::graph::NodeRef(5),
            first_s: 1_000,
            last_s: 90_000,
            count: 4,
            amount: 1_000.0,
        };
        let mut whole = Vec::new();
        edge_features(&e, 500_000, true, &mut whole);
        let mut rows = Vec::new();
        edge_features_before_logs(&e, 500_000, true, &mut rows);
        ln1p_columns(&mut rows, EDGE_FEATURES.len(), &EDGE_LOG_COLUMNS);
        assert_eq!(rows, whole);
        assert!(
            (whole[1] - 251.0f32.ln()).abs() < 1e-5,
            "log_mean_amount: {whole:?}"
        );
        // A new entity's row is all fixed points of the logarithm.
        let mut fresh = Vec::new();
        new_edge_features(&mut fresh);
        let copy = fresh.clone();
        ln1p_columns(&mut fresh, EDGE_FEATURES.len(), &EDGE_LOG_COLUMNS);
        assert_eq!(fresh, copy);
    }

    #[test]
    fn the_count_table_gives_the_same_bits_as_ln1p() {
        for n in (0..300u64).chain([1 << 20, u64::from(u32::MAX)]) {
            assert_eq!(ln1p_count(n).to_bits(), ln1p(n as f32).to_bits(), "n = {n}");
        }
    }
}
