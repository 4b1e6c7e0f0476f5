//! Property tests of the live graph: idempotent apply, no dangling or
//! half-stored edges under the adjacency cap, a lock-free mirror that matches the nodes, and edge and aggregate views
//! that never show anything at or after the instant asked for.

use std::collections::HashMap;

use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::graph::{Edge, Graph, GraphConfig, NodeRef, epoch_secs, ports};
use fraudgraph_sampler::{NodeType, Relation, edges_of};
use proptest::prelude::*;

mod common;

use common::{T0, make, txn_strategy};

fn config(cap: usize) -> GraphConfig {
    GraphConfig {
        adjacency_cap: cap,
        late_window_ms: 10_000_000,
        ..GraphConfig::default()
    }
}

/// Every stored edge's neighbour exists and stores the same edge back.
fn assert_symmetric(g: &Graph, keys: &HashMap<(NodeType, String), NodeRef>) {
    for ((t, _), &node) in keys {
        let (lists, first_ms, agg) =
            g.with_node(*t, node, |n| (n.ports.to_vec(), n.first_ms, n.agg));
        let hot = g.hot_view(*t, node).expect("every node is published");
        assert_eq!(
            (hot.first_ms, hot.agg),
            (first_ms, agg),
            "the lock-free first line mirrors the node"
        );
        let hot_degrees: Vec<usize> = hot.degrees[..lists.len()]
            .iter()
            .map(|&d| usize::from(d))
            .collect();
        let lengths: Vec<usize> = lists.iter().map(Vec::len).collect();
        assert_eq!(
            hot_degrees, lengths,
            "the mirror's degrees are the list lengths"
        );
        for (port, list) in lists.iter().enumerate() {
            assert!(
                list.windows(2).all(|w| w[0].last_s <= w[1].last_s),
                "adjacency ordered by last sighting"
            );
            let (relation, side) = ports(*t)[port];
            let (src_t, dst_t) = relation.endpoints();
            let nbr_t = if side == fraudgraph_sampler::graph::Side::Out {
                dst_t
            } else {
                src_t
            };
            let back_side = side.flip();
            let back_port = ports(nbr_t)
                .iter()
                .position(|p| *p == (relation, back_side))
                .unwrap();
            for e in list {
                let back = g.with_node(nbr_t, e.nbr, |n| {
                    n.ports[back_port].iter().find(|b| b.nbr == node).copied()
                });
                let back =
                    back.unwrap_or_else(|| panic!("edge {relation:?} stored at one end only"));
                assert_eq!(
                    back,
                    Edge {
                        nbr: back.nbr,
                        ..*e
                    },
                    "both ends agree"
                );
            }
        }
    }
}

fn all_keys(g: &Graph, txns: &[Transaction]) -> HashMap<(NodeType, String), NodeRef> {
    let mut keys = HashMap::new();
    for t in txns {
        for (relation, s, d) in edges_of(t) {
            let (st, dt) = relation.endpoints();
            for (ty, k) in [(st, s), (dt, d)] {
                let r = g
                    .lookup(ty, k)
                    .expect("every entity of an applied transaction is a node");
                keys.insert((ty, k.to_owned()), r);
            }
        }
    }
    keys
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn apply_is_idempotent(events in prop::collection::vec(txn_strategy(), 1..80)) {
        let txns: Vec<Transaction> = events.into_iter().enumerate().map(|(i, p)| make(i, p)).collect();
        let once = Graph::new(config(64));
        let twice = Graph::new(config(64));
        for t in &txns {
            once.apply(t);
            twice.apply(t);
            prop_assert_eq!(twice.apply(t), fraudgraph_sampler::graph::ApplyOutcome::Duplicate);
        }
        for t in txns.iter().rev() {
            prop_assert_eq!(twice.apply(t), fraudgraph_sampler::graph::ApplyOutcome::Duplicate);
        }
        prop_assert_eq!(once.stats(), twice.stats());
        for ((ty, _), r) in all_keys(&once, &txns) {
            let a = once.with_node(ty, r, |n| (n.agg, n.ports.to_vec(), n.sequence.clone()));
            let b = twice.with_node(ty, r, |n| (n.agg, n.ports.to_vec(), n.sequence.clone()));
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn edges_stay_symmetric_and_capped(events in prop::collection::vec(txn_strategy(), 1..120), cap in 1usize..4) {
        let txns: Vec<Transaction> = events.into_iter().enumerate().map(|(i, p)| make(i, p)).collect();
        let g = Graph::new(config(cap));
        for t in &txns {
            g.apply(t);
        }
        let keys = all_keys(&g, &txns);
        for ((ty, _), r) in &keys {
            g.with_node(*ty, *r, |n| {
                for list in n.ports.iter() {
                    assert!(list.len() <= cap);
                }
            });
        }
        assert_symmetric(&g, &keys);
    }

    /// Edge views as of `t` count exactly the sightings before `t`'s second,
    /// or hide the edge; never more. Events arrive in any order.
    #[test]
    fn edge_views_are_causal(events in prop::collection::vec(txn_strategy(), 1..80), probe in 0u32..7_300_000) {
        let txns: Vec<Transaction> = events.into_iter().enumerate().map(|(i, p)| make(i, p)).collect();
        let g = Graph::new(config(1000));
        for t in &txns {
            g.apply(t);
        }
        let t_ms = T0 + i64::from(probe);
        let t_s = epoch_secs(t_ms);
        // Brute force: sightings per (relation, src, dst) before t_s.
        let mut truth: HashMap<(Relation, String, String), (u32, f32)> = HashMap::new();
        for t in &txns {
            if epoch_secs(t.event_time_ms) < t_s {
                for (relation, s, d) in edges_of(t) {
                    let e = truth.entry((relation, s.to_owned(), d.to_owned())).or_default();
                    e.0 += 1;
                    e.1 += t.amount_minor as f32;
                }
            }
        }
        let keys = all_keys(&g, &txns);
        for ((ty, key), r) in &keys {
            let lists: Vec<_> = g.with_node(*ty, *r, |n| n.ports.to_vec());
            for (port, list) in lists.iter().enumerate() {
                let (relation, side) = ports(*ty)[port];
                if side != fraudgraph_sampler::graph::Side::Out {
                    continue;
                }
                let (_, dst_t) = relation.endpoints();
                for e in list {
                    let dst_key = g.with_node(dst_t, e.nbr, |n| n.key.to_string());
                    let want = truth.get(&(relation, key.clone(), dst_key)).copied();
                    match (e.as_of(t_s), want) {
                        (None, _) => {}
                        (Some(v), Some((count, amount))) => {
                            prop_assert_eq!(v.count, count);
                            prop_assert!((v.amount - amount).abs() <= 1e-3 * amount.max(1.0));
                            prop_assert!(v.last_s < t_s);
                        }
                        (Some(v), None) => prop_assert!(false, "edge visible before its first sighting: {:?}", v),
                    }
                }
            }
        }
    }

    /// Aggregates as of `t` come from a state whose newest event is before
    /// `t`: their decayed 7-day count never exceeds the true decayed count of
    /// events before `t`, and equals it when events arrive in time order.
    #[test]
    fn aggregates_are_causal(mut events in prop::collection::vec(txn_strategy(), 1..60), probe in 0u32..7_300_000, sorted in any::<bool>()) {
        if sorted {
            events.sort_by_key(|e| e.6);
        }
        let txns: Vec<Transaction> = events.into_iter().enumerate().map(|(i, p)| make(i, p)).collect();
        let g = Graph::new(config(1000));
        for t in &txns {
            g.apply(t);
        }
        let t_ms = T0 + i64::from(probe);
        let keys = all_keys(&g, &txns);
        for ((ty, key), r) in keys.iter().filter(|((ty, _), _)| *ty == NodeType::Merchant) {
            let truth: f64 = txns
                .iter()
                .filter(|t| t.merchant_id == *key && t.event_time_ms < t_ms)
                .map(|t| (-((t_ms - t.event_time_ms) as f64) / 604_800_000.0).exp())
                .sum();
            let seen = g.with_node(*ty, *r, |n| n.aggregates_at(t_ms));
            let count_7d = seen.map_or(0.0, |v| f64::from(v[2]));
            prop_assert!(count_7d <= truth + 1e-3, "{} > {}", count_7d, truth);
            let all_before = txns.iter().filter(|t| t.merchant_id == *key).all(|t| t.event_time_ms < t_ms);
            if sorted && all_before {
                prop_assert!((count_7d - truth).abs() < 1e-3, "{} vs {}", count_7d, truth);
            }
        }
    }
}

#[test]
fn too_late_transactions_are_refused() {
    let g = Graph::new(GraphConfig {
        late_window_ms: 60_000,
        ..GraphConfig::default()
    });
    let mut t = make(0, (0, 0, 0, 0, 0, None, 0, 100));
    t.event_time_ms = T0 + 1_000_000;
    assert_eq!(
        g.apply(&t),
        fraudgraph_sampler::graph::ApplyOutcome::Applied
    );
    let mut late = make(1, (1, 0, 0, 0, 0, None, 0, 100));
    late.event_time_ms = T0 + 1_000_000 - 59_000;
    assert_eq!(
        g.apply(&late),
        fraudgraph_sampler::graph::ApplyOutcome::Applied
    );
    let mut too_late = make(2, (1, 0, 0, 0, 0, None, 0, 100));
    too_late.event_time_ms = T0 + 1_000_000 - 61_000;
    assert_eq!(
        g.apply(&too_late),
        fraudgraph_sampler::graph::ApplyOutcome::TooLate
    );
    let s = g.stats();
    assert_eq!(s.nodes[NodeType::Account.index()], 2);
    assert_eq!(s.watermark_ms, T0 + 1_000_000);
}

/// A long stream with eviction keeps memory bounded: only entities active
/// within the retention window stay, every stored edge still has both ends,
/// evicted slots are reused, and snapshots carry the tombstones faithfully.
#[test]
fn eviction_keeps_a_long_stream_bounded() {
    let day = 86_400_000i64;
    let g = Graph::new(GraphConfig {
        retention_ms: 3 * day,
        late_window_ms: 3_600_000,
        ..GraphConfig::default()
    });
    let mut peak_nodes = 0u64;
    let mut live_after_first_eviction = Vec::new();
    for d in 0..40i64 {
        // Each day a fresh cohort of accounts and devices, plus shared merchants.
        for i in 0..200u32 {
            let mut t = make(
                (d * 1000 + i64::from(i)) as usize,
                (0, 0, 0, (i % 3) as u8, 0, None, 0, 100),
            );
            t.event_time_ms = T0 + d * day + i64::from(i) * 1000;
            t.account_id = format!("acc-{d}-{}", i % 50);
            t.device_id = Some(format!("dev-{d}-{}", i % 40));
            t.ip = Some(format!("10.{}.{}.1", d % 200, i % 30));
            t.card_id = Some(format!("card-{d}-{}", i % 50));
            g.apply(&t);
        }
        let evicted = g.evict_idle();
        let nodes: u64 = g.stats().nodes.iter().sum();
        peak_nodes = peak_nodes.max(nodes);
        if d >= 4 {
            assert!(evicted.nodes > 0, "day {d}: old cohorts are evicted");
            live_after_first_eviction.push(nodes);
        }
    }
    // About four days of cohorts (50 accounts, 40 devices, 30 IPs, 50 cards)
    // plus 3 merchants, whatever the stream length.
    assert!(peak_nodes <= 4 * 170 + 3, "peak {peak_nodes}");
    let first = live_after_first_eviction[0];
    assert!(
        live_after_first_eviction.iter().all(|n| *n == first),
        "{live_after_first_eviction:?}"
    );

    // Stored edges are symmetric and point at live nodes.
    let mut keys = HashMap::new();
    for d in 37..40 {
        for i in 0..50 {
            for (ty, k) in [
                (NodeType::Account, format!("acc-{d}-{i}")),
                (NodeType::Card, format!("card-{d}-{i}")),
            ] {
                let r = g.lookup(ty, &k).expect("recent entities stay");
                // Slots of evicted nodes are reused: the index must find this one's.
                assert_eq!(g.key_of(ty, r).as_deref(), Some(k.as_str()));
                keys.insert((ty, k), r);
            }
        }
    }
    assert!(
        g.lookup(NodeType::Account, "acc-0-0").is_none(),
        "old entities are gone"
    );
    assert_symmetric(&g, &keys);
    for ((ty, _), r) in &keys {
        let lists = g.with_node(*ty, *r, |n| n.ports.to_vec());
        for (port, list) in lists.iter().enumerate() {
            let (relation, side) = ports(*ty)[port];
            let (s, d) = relation.endpoints();
            let nbr_t = if side == fraudgraph_sampler::graph::Side::Out {
                d
            } else {
                s
            };
            for e in list {
                assert!(
                    g.with_node(nbr_t, e.nbr, |n| n.is_live()),
                    "edge to an evicted node"
                );
            }
        }
    }

    // Snapshots round-trip tombstones and free slots byte for byte.
    let bytes = g.snapshot_bytes(&Default::default());
    let (back, _) =
        Graph::from_snapshot_bytes(&bytes, g.config(), std::path::Path::new("mem")).unwrap();
    assert!(back.snapshot_bytes(&Default::default()) == bytes);
}
