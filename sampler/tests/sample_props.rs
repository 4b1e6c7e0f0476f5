//! Properties of the causal 3-hop sampler: the target's own application is
//! invisible to it, nothing from at or after its time leaks in, fan-out
//! bounds hold, sampling is deterministic, and unseen targets are included.

mod common;

use std::collections::{HashMap, HashSet};

use common::{T0, TxnSpec, make, txn_strategy};
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::features::{self, EDGE_FEATURES, NODE_BASE_FEATURES};
use fraudgraph_sampler::graph::{Graph, GraphConfig, Side, epoch_secs, ports};
use fraudgraph_sampler::sample::{SamplerConfig, Strategy, Subgraph, sample};
use fraudgraph_sampler::{NodeType, Relation, edges_of};
use proptest::prelude::*;

fn graph_of(txns: &[Transaction]) -> Graph {
    let g = Graph::new(GraphConfig {
        late_window_ms: 100_000_000,
        ..GraphConfig::default()
    });
    for t in txns {
        g.apply(t);
    }
    g
}

fn stream(events: Vec<TxnSpec>) -> Vec<Transaction> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, p)| make(i, p))
        .collect()
}

fn configs() -> [SamplerConfig; 2] {
    [
        SamplerConfig {
            fanouts: [3, 2, 2],
            strategy: Strategy::MostRecent,
            seed: 1,
        },
        SamplerConfig {
            fanouts: [3, 2, 2],
            strategy: Strategy::Weighted,
            seed: 1,
        },
    ]
}

/// Node features of every sampled node, recomputed from the node itself under its lock: the
/// visible edges per port counted one by one. The sampler reads most nodes from their
/// lock-free first line instead, and must give exactly these values.
fn assert_features_match_the_nodes(g: &Graph, sub: &Subgraph) {
    let t_s = epoch_secs(sub.t_ms);
    for t in NodeType::ALL {
        let w = features::node_width(t);
        for (row, n) in sub.nodes[t.index()].iter().enumerate() {
            let Some(node) = n.node else { continue };
            let mut expected = Vec::new();
            g.with_node(t, node, |node| {
                let degrees: Vec<usize> = node
                    .ports
                    .iter()
                    .map(|list| list.iter().filter(|e| e.as_of(t_s).is_some()).count())
                    .collect();
                features::node_features(node, sub.t_ms, &degrees, &mut expected);
            });
            let got = &sub.node_features[t.index()][row * w..(row + 1) * w];
            assert_eq!(got, &expected[..], "{t:?} row {row}");
        }
    }
}

/// Every sampled edge once, with its features recomputed from the stored edge as of the
/// target's time (a new entity's edge, or one the graph has not seen before t, gets the new
/// edge's row); the target-edge flag is taken from the row, which the sampler sets for the
/// transaction's own edges.
fn assert_edge_features_match_the_edges(g: &Graph, sub: &Subgraph) {
    let t_s = epoch_secs(sub.t_ms);
    let w = EDGE_FEATURES.len();
    for r in Relation::ALL {
        let pairs = &sub.edge_index[r.index()];
        let distinct: HashSet<_> = pairs.iter().collect();
        assert_eq!(
            distinct.len(),
            pairs.len(),
            "{r:?} has an edge twice: {pairs:?}"
        );
        let (st, dt) = r.endpoints();
        let port = ports(st)
            .iter()
            .position(|p| *p == (r, Side::Out))
            .expect("the source's out port");
        for (i, &(s, d)) in sub.edge_index[r.index()].iter().enumerate() {
            let got = &sub.edge_features[r.index()][i * w..(i + 1) * w];
            let src = sub.nodes[st.index()][s as usize].node;
            let dst = sub.nodes[dt.index()][d as usize].node;
            let view = src.zip(dst).and_then(|(src, dst)| {
                g.with_node(st, src, |node| {
                    node.ports[port]
                        .iter()
                        .find(|e| e.nbr == dst)
                        .and_then(|e| e.as_of(t_s))
                })
            });
            let mut expected = Vec::new();
            match view {
                Some(v) => features::edge_features(&v, t_s, got[w - 1] == 1.0, &mut expected),
                None => features::new_edge_features(&mut expected),
            }
            assert_eq!(got, &expected[..], "{r:?} edge {i}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Sampled node and edge features are the nodes' and edges' own, as of the target's
    /// time, whether the sampler read a node from its lock-free first line or under its
    /// lock.
    #[test]
    fn features_are_the_nodes_and_edges_as_of_t(mut events in prop::collection::vec(txn_strategy(), 1..60), target in txn_strategy(), back in 0i64..5_000_000) {
        events.sort_by_key(|e| e.6);
        let history = stream(events);
        let g = graph_of(&history);
        let mut target = make(9999, target);
        // At the head of the stream, or back in time among the nodes' updates.
        target.event_time_ms = history.last().map_or(T0, |t| t.event_time_ms) + 1_000 - back;
        for config in configs() {
            let sub = sample(&g, &target, &config);
            assert_features_match_the_nodes(&g, &sub);
            assert_edge_features_match_the_edges(&g, &sub);
        }
    }

    /// Score, then apply: applying the target to the graph does not change
    /// what sampling it shows (the same request before and after apply).
    #[test]
    fn own_application_is_invisible(mut events in prop::collection::vec(txn_strategy(), 1..60), target in txn_strategy()) {
        events.sort_by_key(|e| e.6);
        let history = stream(events);
        let mut target = make(9999, target);
        target.event_time_ms = T0 + 7_300_000;
        let before = graph_of(&history);
        let after = graph_of(&history);
        after.apply(&target);
        for config in configs() {
            prop_assert_eq!(sample(&before, &target, &config), sample(&after, &target, &config));
        }
    }

    /// With later events in the graph too, every sampled entity and edge
    /// beyond the target's own existed strictly before the target's time,
    /// edge counts never exceed the sightings before it, and the account's
    /// sequence holds only earlier transactions.
    #[test]
    fn nothing_from_the_future_is_visible(events in prop::collection::vec(txn_strategy(), 1..80), target in txn_strategy(), probe in 0u32..7_200_000) {
        let all = stream(events);
        let g = graph_of(&all);
        let mut target = make(9999, target);
        target.event_time_ms = T0 + i64::from(probe);
        let t_s = epoch_secs(target.event_time_ms);
        let mut seen_before: HashSet<(NodeType, String)> = HashSet::new();
        let mut count_before: HashMap<(Relation, String, String), u32> = HashMap::new();
        let mut seq_before = 0usize;
        for t in all.iter().filter(|t| t.event_time_ms < target.event_time_ms) {
            for (r, s, d) in edges_of(t) {
                let (st, dt) = r.endpoints();
                seen_before.insert((st, s.to_owned()));
                seen_before.insert((dt, d.to_owned()));
            }
            if t.account_id == target.account_id {
                seq_before += 1;
            }
        }
        for t in all.iter().filter(|t| epoch_secs(t.event_time_ms) < t_s) {
            for (r, s, d) in edges_of(t) {
                *count_before.entry((r, s.to_owned(), d.to_owned())).or_default() += 1;
            }
        }
        for config in configs() {
            let sub = sample(&g, &target, &config);
            for t in NodeType::ALL {
                let width = features::node_width(t);
                for (row, n) in sub.nodes[t.index()].iter().enumerate() {
                    let is_new = sub.node_features[t.index()][row * width + NODE_BASE_FEATURES.len() - 1];
                    let key = sub.key(&g, t, row).unwrap();
                    if is_new == 0.0 {
                        prop_assert!(seen_before.contains(&(t, key.clone())), "{:?} {} not seen before t", t, key);
                    } else {
                        prop_assert!(n.new_key.is_some() && n.hop <= 1, "only the transaction's own entities are new");
                    }
                }
            }
            for r in Relation::ALL {
                let (st, dt) = r.endpoints();
                for (i, &(s, d)) in sub.edge_index[r.index()].iter().enumerate() {
                    let f = &sub.edge_features[r.index()][i * EDGE_FEATURES.len()..(i + 1) * EDGE_FEATURES.len()];
                    let count = f[0].exp_m1().round() as u32;
                    let key = (r, sub.key(&g, st, s as usize).unwrap(), sub.key(&g, dt, d as usize).unwrap());
                    let truth = count_before.get(&key).copied().unwrap_or(0);
                    prop_assert!(count <= truth, "{:?}: count {} > {} sightings before t", key, count, truth);
                    if f[4] == 0.0 {
                        prop_assert!(truth >= 1, "sampled edge {:?} did not exist before t", key);
                    }
                }
            }
            prop_assert!(sub.sequence_len <= seq_before);
            prop_assert_eq!(sub.sequence.len(), sub.sequence_len * features::SEQ_FEATURES.len());
        }
    }

    /// Fan-out: hop 1 holds the transaction's own entities and at most
    /// fanout[0] neighbours of the account; every node first reached at hop
    /// h-1 adds at most fanout[h-1] nodes at hop h; sampling twice gives the
    /// same subgraph.
    #[test]
    fn fanout_bounds_and_determinism(events in prop::collection::vec(txn_strategy(), 1..120), target in txn_strategy(), f1 in 1usize..4, f2 in 1usize..3, f3 in 1usize..3) {
        let g = graph_of(&stream(events));
        let mut target = make(9999, target);
        target.event_time_ms = T0 + 7_300_000;
        for strategy in [Strategy::MostRecent, Strategy::Weighted] {
            let config = SamplerConfig { fanouts: [f1, f2, f3], strategy, seed: 7 };
            let sub = sample(&g, &target, &config);
            let at_hop = |h: u8| sub.nodes.iter().flatten().filter(|n| n.hop == h).count();
            prop_assert_eq!(at_hop(0), 1, "the account");
            let own = edges_of(&target).count() + 1;
            prop_assert!(at_hop(1) <= f1 + own);
            for h in 2..=3u8 {
                prop_assert!(at_hop(h) <= at_hop(h - 1) * config.fanouts[usize::from(h) - 1]);
            }
            prop_assert!(sub.hops <= 3);
            prop_assert_eq!(&sub, &sample(&g, &target, &config));
            check_shapes(&sub);
        }
    }
}

fn check_shapes(sub: &Subgraph) {
    for t in NodeType::ALL {
        assert_eq!(
            sub.node_features[t.index()].len(),
            sub.nodes[t.index()].len() * features::node_width(t)
        );
    }
    for r in Relation::ALL {
        let (st, dt) = r.endpoints();
        assert_eq!(
            sub.edge_features[r.index()].len(),
            sub.edge_index[r.index()].len() * EDGE_FEATURES.len()
        );
        for &(s, d) in &sub.edge_index[r.index()] {
            assert!(
                (s as usize) < sub.nodes[st.index()].len(),
                "dangling source"
            );
            assert!(
                (d as usize) < sub.nodes[dt.index()].len(),
                "dangling destination"
            );
        }
    }
    assert_eq!(sub.txn_features.len(), features::TXN_FEATURES.len());
    assert!(sub.node_features.iter().flatten().all(|x| x.is_finite()));
    assert!(sub.edge_features.iter().flatten().all(|x| x.is_finite()));
    assert!(sub.txn_features.iter().all(|x| x.is_finite()));
}

/// A payment from entities the graph has never seen is still scored: its
/// own entities and edges are there, marked new.
#[test]
fn an_unseen_target_is_included() {
    let g = graph_of(&[]);
    let mut target = make(1, (0, 0, 0, 0, 0, Some(3), 0, 500));
    target.event_time_ms = T0;
    let sub = sample(&g, &target, &SamplerConfig::default());
    check_shapes(&sub);
    assert_eq!(
        sub.nodes[NodeType::Account.index()].len(),
        2,
        "payer and receiver"
    );
    assert_eq!(sub.key(&g, NodeType::Account, 0).as_deref(), Some("a0"));
    assert_eq!(sub.target_account, 0);
    assert_eq!(
        sub.own_rows,
        [Some(0); NodeType::ALL.len()],
        "payer, device, IP, merchant, card"
    );
    for t in [
        NodeType::Device,
        NodeType::Ip,
        NodeType::Merchant,
        NodeType::Card,
    ] {
        assert_eq!(sub.nodes[t.index()].len(), 1, "{t:?}");
        let is_new = sub.node_features[t.index()][NODE_BASE_FEATURES.len() - 1];
        assert_eq!(is_new, 1.0);
    }
    assert_eq!(sub.edge_count(), edges_of(&target).count());
    assert_eq!(sub.sequence_len, 0);
    assert_eq!(sub.hops, 1, "its own entities only");
}

/// The feature schema is pinned: changing a feature's name, order or the
/// version changes the hash, which makes artifacts trained on the old schema
/// refuse to load. Update this value together with FEATURE_SCHEMA_VERSION.
#[test]
fn feature_schema_is_pinned() {
    assert_eq!(features::schema_hash(), PINNED_SCHEMA_HASH);
}

const PINNED_SCHEMA_HASH: &str = "0488db64659b0f31";

/// The account's own history is its first hop: the merchants, devices and
/// IPs it used before are sampled even when the payment uses new ones.
#[test]
fn the_accounts_past_entities_are_its_first_hop() {
    let history: Vec<Transaction> = (0..3u8)
        .map(|m| {
            let mut t = make(
                usize::from(m),
                (0, 0, 0, m, 0, None, 1000 * u32::from(m), 100),
            );
            t.merchant_id = format!("old-m{m}");
            t
        })
        .collect();
    let g = graph_of(&history);
    let mut target = make(99, (0, 2, 2, 0, 1, None, 0, 100));
    target.event_time_ms = T0 + 3_600_000;
    target.merchant_id = "new-m".into();
    target.device_id = Some("new-d".into());
    let sub = sample(&g, &target, &SamplerConfig::default());
    let keys = |t: NodeType, hop: u8| -> Vec<String> {
        (0..sub.nodes[t.index()].len())
            .filter(|&row| sub.nodes[t.index()][row].hop == hop)
            .map(|row| sub.key(&g, t, row).unwrap())
            .collect()
    };
    let hop1 = keys(NodeType::Merchant, 1);
    for m in ["old-m0", "old-m1", "old-m2"] {
        assert!(
            hop1.iter().any(|k| k == m),
            "{m} missing from hop 1: {hop1:?}"
        );
    }
    assert!(
        hop1.iter().any(|k| k == "new-m"),
        "its own merchant is at hop 1"
    );
    assert!(keys(NodeType::Device, 1).iter().any(|k| k == "d0"));
    assert_eq!(sub.sequence_len, 3);
}
