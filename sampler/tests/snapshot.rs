//! Snapshots: a restored graph is the same graph (byte for byte, sample for
//! sample, and it still knows which transactions it applied); a corrupt,
//! truncated, foreign or mismatched snapshot is refused with a clear error.

mod common;

use std::path::Path;

use common::{T0, make, txn_strategy};
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::NodeType;
use fraudgraph_sampler::graph::{ApplyOutcome, Graph, GraphConfig};
use fraudgraph_sampler::sample::{SamplerConfig, sample};
use fraudgraph_sampler::snapshot::{Offsets, SnapshotError};
use proptest::prelude::*;

fn offsets() -> Offsets {
    [
        (("fraudgraph.transactions.v1".to_string(), 0), 1234),
        (("fraudgraph.transactions.v1".to_string(), 1), 99),
    ]
    .into_iter()
    .collect()
}

/// What the graph holds (memory figures differ: a restored graph has no
/// vector slack).
fn content(g: &Graph) -> ([u64; NodeType::ALL.len()], u64, i64) {
    let s = g.stats();
    (s.nodes, s.edges, s.watermark_ms)
}

fn graph_of(txns: &[Transaction]) -> Graph {
    let g = Graph::new(GraphConfig::default());
    for t in txns {
        g.apply(t);
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn round_trip_is_the_same_graph(events in prop::collection::vec(txn_strategy(), 0..80), target in txn_strategy()) {
        let txns: Vec<Transaction> = events.into_iter().enumerate().map(|(i, p)| make(i, p)).collect();
        let g = graph_of(&txns);
        let bytes = g.snapshot_bytes(&offsets());
        let (back, off) = Graph::from_snapshot_bytes(&bytes, &GraphConfig::default(), Path::new("mem")).unwrap();
        prop_assert_eq!(off, offsets());
        prop_assert!(back.snapshot_bytes(&offsets()) == bytes, "re-encoding differs");
        prop_assert_eq!(content(&back), content(&g));
        // The lock-free first lines samplers read are restored too.
        for t in &txns {
            for (relation, src, dst) in fraudgraph_sampler::edges_of(t) {
                let (st, dt) = relation.endpoints();
                for (ty, key) in [(st, src), (dt, dst)] {
                    let hot = |g: &Graph| g.lookup(ty, key).map(|n| g.hot_view(ty, n));
                    prop_assert_eq!(hot(&back), hot(&g));
                    prop_assert!(hot(&g).is_none_or(|v| v.is_some()), "published");
                }
            }
        }
        let mut target = make(9999, target);
        target.event_time_ms = T0 + 7_300_000;
        prop_assert_eq!(sample(&back, &target, &SamplerConfig::default()), sample(&g, &target, &SamplerConfig::default()));
        // It still remembers what it applied: a redelivery changes nothing
        // (a duplicate, or still too late), exactly as in the original.
        for t in &txns {
            let outcome = back.apply(t);
            prop_assert_ne!(outcome, ApplyOutcome::Applied);
            prop_assert_eq!(outcome, g.apply(t));
        }
        prop_assert!(back.snapshot_bytes(&offsets()) == bytes, "redelivery changed the graph");
    }
}

#[test]
fn files_are_written_atomically_and_bad_ones_refused() {
    let dir = std::env::temp_dir().join(format!("fg-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let txns: Vec<Transaction> = (0..200)
        .map(|i| make(i, (i as u8 % 6, 1, 2, 0, 1, None, i as u32 * 1000, 700)))
        .collect();
    let g = graph_of(&txns);
    let path = dir.join("graph.snap");
    g.write_snapshot(&path, &offsets()).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("graph.snap")],
        "no temporary file left"
    );
    let (back, off) = Graph::read_snapshot(&path, &GraphConfig::default()).unwrap();
    assert_eq!((content(&back), off), (content(&g), offsets()));

    let good = std::fs::read(&path).unwrap();
    let check = |bytes: &[u8], config: &GraphConfig| {
        std::fs::write(&path, bytes).unwrap();
        Graph::read_snapshot(&path, config).err().expect("refused")
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    assert!(matches!(
        check(&flipped, &GraphConfig::default()),
        SnapshotError::Corrupt { .. }
    ));
    assert!(matches!(
        check(&good[..good.len() - 10], &GraphConfig::default()),
        SnapshotError::Corrupt { .. }
    ));
    assert!(matches!(
        check(b"PK\x03\x04 a zip file", &GraphConfig::default()),
        SnapshotError::Foreign { .. }
    ));
    let mut future = good.clone();
    future[8] = 9;
    let err = check(&future, &GraphConfig::default());
    assert!(
        matches!(err, SnapshotError::Version { found: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("format version 9"));
    let other = GraphConfig {
        adjacency_cap: 7,
        ..GraphConfig::default()
    };
    assert!(matches!(
        check(&good, &other),
        SnapshotError::ConfigMismatch { .. }
    ));
    let missing = Graph::read_snapshot(&dir.join("nope.snap"), &GraphConfig::default())
        .err()
        .unwrap();
    assert!(missing.to_string().contains("nope.snap"));
    std::fs::remove_dir_all(&dir).unwrap();
}
