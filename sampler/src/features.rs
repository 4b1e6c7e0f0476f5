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
/// that [`ln1p4`] evaluates four of it in SIMD lanes.
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

/// [`ln1p`] of four values at once: four calls of the branch-free [`ln1p`], which the
/// compiler evaluates together in SIMD registers. A sampled node's features take two calls
/// and an edge's one, instead of seven and three scalar evaluations.
pub fn ln1p4(x: [f32; 4]) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    for (o, x) in out.iter_mut().zip(x) {
        *o = ln1p(x);
    }
    out
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
    let agg = agg.unwrap_or([0.0; 8]);
    let count_7d = agg[2].max(1e-6);
    let resultant = (agg[6] * agg[6] + agg[7] * agg[7]).sqrt() / count_7d;
    let [c1h, c24h, c7d, a1h] = ln1p4([agg[0], agg[1], agg[2], agg[3]]);
    let age_days = (t_ms - first_ms).max(0) as f32 / DAY_MS;
    let [a24h, a7d, age, _] = ln1p4([agg[4], agg[5], age_days, 0.0]);
    out.extend_from_slice(&[
        c1h,
        c24h,
        c7d,
        a1h,
        a24h,
        a7d,
        resultant.clamp(0.0, 1.0),
        ((agg[0] + 1.0) / (agg[1] / 24.0 + 1.0)).ln(),
        age,
        0.0,
    ]);
    out.extend(degrees.iter().map(|&d| ln1p_count(d as u64)));
}

/// Node features of an entity the graph has not seen before `t`.
pub fn new_node_features(t: NodeType, out: &mut Vec<f32>) {
    let start = out.len();
    out.resize(start + node_width(t), 0.0);
    out[start + NODE_BASE_FEATURES.len() - 1] = 1.0;
}

/// Edge features of a visible edge as of `t_s` (seconds).
pub fn edge_features(e: &EdgeView, t_s: u32, target_edge: bool, out: &mut Vec<f32>) {
    let days = |s: u32| t_s.saturating_sub(s) as f32 / 86_400.0;
    let [mean_amount, since_first, since_last, _] = ln1p4([
        e.amount / e.count.max(1) as f32,
        days(e.first_s),
        days(e.last_s),
        0.0,
    ]);
    out.extend_from_slice(&[
        ln1p_count(u64::from(e.count)),
        mean_amount,
        since_first,
        since_last,
        f32::from(u8::from(target_edge)),
    ]);
}

/// Edge features of the target's own edge to an entity it never used before.
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

    #[test]
    fn four_lanes_give_the_same_bits_as_four_calls() {
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
        for lanes in values.chunks(4) {
            let mut four = [0.0f32; 4];
            four[..lanes.len()].copy_from_slice(lanes);
            let got = ln1p4(four);
            for (v, g) in four.iter().zip(got) {
                assert_eq!(g.to_bits(), ln1p(*v).to_bits(), "ln1p4 of {v:e}");
            }
        }
    }

    #[test]
    fn the_count_table_gives_the_same_bits_as_ln1p() {
        for n in (0..300u64).chain([1 << 20, u64::from(u32::MAX)]) {
            assert_eq!(ln1p_count(n).to_bits(), ln1p(n as f32).to_bits(), "n = {n}");
        }
    }
}
