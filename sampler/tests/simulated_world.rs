//! The sampler on the simulated world: realistic subgraphs, collation into a
//! batch, and the explanation view.

use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::batch::{Batch, NO_ROW};
use fraudgraph_sampler::features::{self, SEQ_FEATURES};
use fraudgraph_sampler::graph::{Graph, GraphConfig, LOOKAHEAD};
use fraudgraph_sampler::sample::{SamplerConfig, Strategy, Subgraph, sample, sample_into};
use fraudgraph_sampler::{NodeType, Relation};
use fraudgraph_simulator::{SimConfig, Simulation};

/// 20,000 simulated transactions.
fn simulation() -> Simulation {
    Simulation::generate(&SimConfig {
        transactions: 20_000,
        seed: 5,
        ..SimConfig::default()
    })
    .unwrap()
}

/// Replays 20,000 simulated transactions, sampling every 500th before
/// applying it (as training does).
fn replay() -> (Graph, Vec<Subgraph>) {
    let sim = simulation();
    let g = Graph::new(GraphConfig::default());
    let mut subs = Vec::new();
    let txns: Vec<Transaction> = sim.transactions().collect();
    for (i, t) in txns.iter().enumerate() {
        if i % 500 == 499 {
            subs.push(sample(&g, t, &SamplerConfig::default()));
        }
        g.apply(t);
    }
    (g, subs)
}

#[test]
fn replayed_subgraphs_reach_three_hops_and_collate() {
    let (g, subs) = replay();
    let stats = g.stats();
    assert!(stats.edges > 5_000, "{stats:?}");
    assert!(
        subs.iter().any(|s| s.hops == 3),
        "some neighbourhoods reach 3 hops"
    );
    assert!(subs.iter().map(Subgraph::node_count).max().unwrap() > 50);
    assert!(
        subs.iter().any(|s| s.sequence_len > 5),
        "accounts have history"
    );

    let mut batch = Batch::default();
    batch.collate(&subs, 32);
    assert_eq!(batch.size, subs.len());
    for t in NodeType::ALL {
        let rows: usize = subs.iter().map(|s| s.nodes[t.index()].len()).sum();
        assert_eq!(batch.node_graph[t.index()].len(), rows);
        assert_eq!(
            batch.node_features[t.index()].len(),
            rows * features::node_width(t)
        );
    }
    for r in Relation::ALL {
        let (st, dt) = r.endpoints();
        for &(s, d) in &batch.edge_index[r.index()] {
            // Both ends of an edge belong to the same subgraph.
            assert_eq!(
                batch.node_graph[st.index()][s as usize],
                batch.node_graph[dt.index()][d as usize]
            );
        }
    }
    let w = SEQ_FEATURES.len();
    for (i, sub) in subs.iter().enumerate() {
        let row = batch.target_account[i] as usize;
        assert_eq!(batch.node_graph[NodeType::Account.index()][row], i as u32);
        for t in NodeType::ALL {
            // The transaction's own entities point into its own rows.
            let own = batch.own_rows[t.index()][i];
            assert_eq!(own == NO_ROW, sub.own_rows[t.index()].is_none(), "{t:?}");
            if own != NO_ROW {
                assert_eq!(batch.node_graph[t.index()][own as usize], i as u32);
            }
        }
        let receiver = batch.counterparty_row[i];
        assert_eq!(receiver == NO_ROW, sub.counterparty_row.is_none());
        if receiver != NO_ROW {
            let accounts = &batch.node_graph[NodeType::Account.index()];
            assert_eq!(accounts[receiver as usize], i as u32);
        }
        if sub.sequence_len > 0 {
            // Right-aligned: the newest element is the last slot.
            let end = (i + 1) * 32 * w;
            let newest = &sub.sequence[(sub.sequence_len - 1) * w..sub.sequence_len * w];
            assert_eq!(&batch.sequence[end - w..end], newest);
        }
    }

    // Refilling a batch reuses its buffers and gives the same arrays.
    let capacity = batch.node_features[0].capacity();
    let before = batch.clone();
    batch.collate(&subs, 32);
    assert_eq!(batch, before);
    assert_eq!(batch.node_features[0].capacity(), capacity);
}

#[test]
fn the_view_matches_the_subgraph_and_exports_dot() {
    let (graph, subs) = replay();
    let sub = subs.iter().max_by_key(|s| s.edge_count()).unwrap();
    let g = sub.to_petgraph(&graph);
    assert_eq!(g.node_count(), sub.node_count());
    assert_eq!(g.edge_count(), sub.edge_count());
    let payer = sub.key(&graph, NodeType::Account, 0).unwrap();
    assert!(payer.starts_with("acc_"), "{payer}");
    let dot = sub.to_dot(&graph);
    assert!(dot.starts_with("digraph"));
    assert!(dot.contains(&payer));
    assert_eq!(dot.matches(" -> ").count(), sub.edge_count());
}

#[test]
fn a_transfer_points_at_its_receiver_and_other_payments_at_none() {
    let sim = simulation();
    let g = Graph::new(GraphConfig::default());
    let (mut transfers, mut others) = (0, 0);
    for (i, t) in sim.transactions().enumerate() {
        if t.counterparty_account_id.is_some() || i % 200 == 0 {
            let sub = sample(&g, &t, &SamplerConfig::default());
            match (&t.counterparty_account_id, sub.counterparty_row) {
                (Some(receiver), Some(row)) => {
                    let key = sub.key(&g, NodeType::Account, row as usize);
                    assert_eq!(key.as_deref(), Some(receiver.as_str()));
                    assert_ne!(row, sub.target_account, "the receiver is not the payer");
                    transfers += 1;
                }
                (None, None) => others += 1,
                (receiver, row) => panic!("receiver {receiver:?} but counterparty row {row:?}"),
            }
        }
        g.apply(&t);
    }
    assert!(
        transfers > 50 && others > 50,
        "{transfers} transfers, {others} others"
    );
}

/// Applying a stream with look-ahead (`Graph::prefetch_upcoming` before each apply, as the
/// service's applier and the training replay do) is a hint only: the graph holds the same
/// bytes and samples the same subgraphs as one applied without it. Every third transaction
/// is given twice, so duplicates in the window are covered too.
#[test]
fn looking_ahead_while_applying_changes_nothing() {
    let sim = simulation();
    let mut txns: Vec<Transaction> = Vec::new();
    for (i, t) in sim.transactions().enumerate() {
        if i % 3 == 0 {
            txns.push(t.clone());
        }
        txns.push(t);
    }
    let plain = Graph::new(GraphConfig::default());
    let ahead = Graph::new(GraphConfig::default());
    let config = SamplerConfig::default();
    for (i, t) in txns.iter().enumerate() {
        if i % 700 == 699 {
            assert_eq!(sample(&plain, t, &config), sample(&ahead, t, &config));
        }
        plain.apply(t);
        ahead.prefetch_upcoming(txns.iter().skip(i + 1).take(LOOKAHEAD));
        ahead.apply(t);
    }
    assert_eq!(plain.stats(), ahead.stats());
    assert!(plain.stats().edges > 5_000);
    assert!(plain.snapshot_bytes(&Default::default()) == ahead.snapshot_bytes(&Default::default()));
}

/// Sampling into one reused subgraph, on a thread whose working memory has served every
/// sample before, gives what a fresh subgraph sampled on a fresh thread gives: nothing of
/// an earlier sample (another transaction, fan-out or strategy) leaks into the next.
#[test]
fn reused_subgraphs_and_scratch_sample_what_fresh_ones_do() {
    let sim = simulation();
    let g = Graph::new(GraphConfig::default());
    let configs = [
        SamplerConfig::default(),
        SamplerConfig {
            fanouts: [60, 20, 8],
            ..SamplerConfig::default()
        },
        SamplerConfig {
            fanouts: [3, 2, 1],
            strategy: Strategy::Weighted,
            seed: 9,
        },
    ];
    let mut reused = Subgraph::sized_for(&g);
    let mut compared = 0;
    for (i, t) in sim.transactions().enumerate() {
        if i % 250 == 249 {
            let config = &configs[(i / 250) % configs.len()];
            sample_into(&g, &t, config, &mut reused);
            let fresh = std::thread::scope(|s| s.spawn(|| sample(&g, &t, config)).join())
                .expect("sampling does not panic");
            assert_eq!(reused, fresh, "transaction {i}");
            compared += usize::from(reused.node_count() > 50);
        }
        g.apply(&t);
    }
    assert!(compared > 20, "{compared} large subgraphs compared");
}
