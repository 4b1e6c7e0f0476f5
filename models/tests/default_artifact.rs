//! The committed default artifact (`models/artifacts/default`) is what the
//! service runs on a fresh machine: it must load with this build (feature
//! schema, network shape, checksums) and score real subgraphs sensibly.

use std::path::Path;

use fraudgraph_models::artifact::{Artifact, score_gbdt, score_gnn};
use fraudgraph_models::dataset::LabelledStream;
use fraudgraph_models::metrics::roc_auc;
use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::graph::Graph;
use fraudgraph_sampler::sample::sample;
use fraudgraph_simulator::{SimConfig, Simulation};
use tch::Device;

#[test]
fn the_committed_artifact_loads_and_scores() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    let artifact = Artifact::load(&dir, Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}\nretrain it with the command in docs/MODELS.md"));
    let gbdt = artifact.gbdt().unwrap();
    let sim = Simulation::generate(&SimConfig {
        transactions: 4_000,
        seed: 21,
        days: 10,
        fraud_rate: 0.05,
        ..SimConfig::default()
    })
    .unwrap();
    let stream = LabelledStream::from_simulation(&sim);
    let graph = Graph::new(artifact.graph_config());
    let sampler = artifact.sampler_config();
    let mut subs = Vec::new();
    let mut fraud = Vec::new();
    for (i, t) in stream.transactions.iter().enumerate() {
        if i > 2_000 && i % 10 == 0 {
            subs.push(sample(&graph, t, &sampler));
            fraud.push(stream.fraud.contains_key(&t.txn_id));
        }
        graph.apply(t);
    }
    let mut batch = Batch::default();
    let gnn = score_gnn(
        &artifact.net,
        &subs,
        artifact.manifest.max_sequence,
        &mut batch,
    )
    .unwrap();
    let gbdt_scores = score_gbdt(&gbdt, &subs, &mut Vec::new()).unwrap();
    assert_eq!(gnn.len(), subs.len());
    assert!(gnn.iter().all(|p| (0.0..=1.0).contains(p)));
    assert!(gbdt_scores.iter().all(|p| (0.0..=1.0).contains(p)));
    // Trained models rank this unseen world's frauds above its legitimate
    // payments.
    assert!(fraud.iter().any(|f| *f), "the sample holds fraud");
    let gnn: Vec<f64> = gnn.iter().map(|p| f64::from(*p)).collect();
    let gnn_auc = roc_auc(&gnn, &fraud).unwrap();
    let gbdt_auc = roc_auc(&gbdt_scores, &fraud).unwrap();
    assert!(gnn_auc > 0.8, "gnn ROC-AUC {gnn_auc}");
    assert!(gbdt_auc > 0.8, "gbdt ROC-AUC {gbdt_auc}");
}
