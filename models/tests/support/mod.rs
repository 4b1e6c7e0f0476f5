//! Test support: a small simulated world, a tiny Hybrid-FraudNet and a tiny GBDT trained on
//! its training period, saved as a model artifact.

#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use fraudgraph_models::artifact::{Manifest, Thresholds, save_artifact};
use fraudgraph_models::dataset::{self, LabelledStream, Period, Split};
use fraudgraph_models::gbdt::{Gbdt, GbdtParams, tabular_features, tabular_width};
use fraudgraph_models::net::{HybridFraudNet, NetConfig};
use fraudgraph_sampler::graph::GraphConfig;
use fraudgraph_sampler::sample::{SamplerConfig, Strategy, Subgraph};
use fraudgraph_simulator::{SimConfig, Simulation};
use tch::Device;
use tch::nn::VarStore;

/// The padded sequence length of the tiny artifact.
pub const MAX_SEQUENCE: usize = 8;

/// Small enough for fast debug-build tests, same architecture as the default.
pub fn tiny_net() -> NetConfig {
    NetConfig {
        hidden: 16,
        heads: 2,
        layers: 2,
        dropout: 0.1,
        time_dims: 4,
        ..NetConfig::default()
    }
}

/// Small fan-outs: quick sampling in debug builds.
pub fn sampler() -> SamplerConfig {
    SamplerConfig {
        fanouts: [8, 4, 2],
        strategy: Strategy::MostRecent,
        seed: 3,
    }
}

/// A non-default graph configuration, so the round trip is visible.
pub fn graph() -> GraphConfig {
    GraphConfig {
        adjacency_cap: 32,
        sequence_len: 16,
        ..GraphConfig::default()
    }
}

/// The world, its training subgraphs and a GBDT trained on them (as text: a [`Gbdt`] is
/// not `Send`), built once per test binary.
pub struct Fixture {
    /// 3,000 transactions over 20 days, 5% fraud.
    pub stream: LabelledStream,
    /// Every training-period subgraph, in replay order.
    pub train: Vec<Subgraph>,
    /// The GBDT trained on `train`.
    pub gbdt_text: String,
}

/// The shared [`Fixture`].
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let sim = Simulation::generate(&SimConfig {
            transactions: 3_000,
            seed: 11,
            days: 20,
            fraud_rate: 0.05,
            ..SimConfig::default()
        })
        .unwrap();
        let stream = LabelledStream::from_simulation(&sim);
        let times = Split::default().times(&stream).unwrap();
        let (mut train, mut y) = (Vec::new(), Vec::new());
        dataset::replay(
            &stream,
            &times,
            &graph(),
            &sampler(),
            |_, period, _| period == Period::Train,
            |e| {
                y.push(if e.fraud { 1.0 } else { 0.0 });
                train.push(e.sub);
            },
            &|_| {},
        );
        assert!(y.contains(&1.0), "the training period has fraud");
        let mut x = Vec::new();
        for sub in &train {
            tabular_features(sub, &mut x);
        }
        let params = GbdtParams {
            num_iterations: 20,
            min_data_in_leaf: 20,
            num_threads: 1,
            ..GbdtParams::default()
        };
        let gbdt = Gbdt::train(&x, &y, None, tabular_width(), &params).unwrap();
        Fixture {
            stream,
            train,
            gbdt_text: gbdt.model_text().to_owned(),
        }
    })
}

/// A tiny untrained Hybrid-FraudNet on the CPU, initialized from `seed`.
pub fn model(seed: i64) -> (VarStore, HybridFraudNet) {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let net = HybridFraudNet::new(&vs.root(), &tiny_net()).unwrap();
    (vs, net)
}

/// The manifest of the tiny artifact.
pub fn manifest() -> Manifest {
    let mut m = Manifest::new(
        tiny_net(),
        &sampler(),
        &graph(),
        MAX_SEQUENCE,
        Split::default(),
        Thresholds {
            gnn: 0.5,
            gbdt: 0.1,
        },
    );
    m.training = serde_json::json!({ "command": "test", "seed": 7 });
    m
}

/// Saves a tiny artifact (the net of [`model`]`(7)`, the fixture's GBDT) to `dir`; returns
/// the model and the booster for comparisons.
pub fn save_tiny(dir: &Path) -> (VarStore, HybridFraudNet, Gbdt) {
    let (vs, net) = model(7);
    let gbdt = Gbdt::from_model_text(fixture().gbdt_text.clone()).unwrap();
    save_artifact(dir, &manifest(), &vs, &gbdt).unwrap();
    (vs, net, gbdt)
}
