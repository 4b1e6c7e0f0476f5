//! Training end to end on a small simulated world: both models learn, the
//! best epoch is kept, thresholds come from validation, and a run is
//! reproducible on CPU.

use fraudgraph_models::dataset::{LabelledStream, Split};
use fraudgraph_models::gbdt::GbdtParams;
use fraudgraph_models::net::NetConfig;
use fraudgraph_models::train::{TrainConfig, TrainError, train};
use fraudgraph_sampler::graph::GraphConfig;
use fraudgraph_sampler::sample::SamplerConfig;
use fraudgraph_simulator::{SimConfig, Simulation};
use tch::Device;

fn world(transactions: u64, fraud_rate: f64) -> LabelledStream {
    let sim = Simulation::generate(&SimConfig {
        transactions,
        seed: 3,
        days: 20,
        fraud_rate,
        ..SimConfig::default()
    })
    .unwrap();
    LabelledStream::from_simulation(&sim)
}

fn small_config() -> TrainConfig {
    TrainConfig {
        net: NetConfig {
            hidden: 16,
            heads: 2,
            ..NetConfig::default()
        },
        gbdt: GbdtParams {
            num_iterations: 60,
            min_data_in_leaf: 20,
            ..GbdtParams::default()
        },
        split: Split {
            train: 0.6,
            valid: 0.25,
            warmup_days: 2.0,
        },
        legit_sample_rate: 0.3,
        epochs: 4,
        patience: 2,
        batch_size: 64,
        learning_rate: 5e-3,
        ..TrainConfig::default()
    }
}

#[test]
fn both_models_learn_and_a_run_is_reproducible() {
    let stream = world(6_000, 0.05);
    let run = || {
        train(
            &stream,
            &small_config(),
            &GraphConfig::default(),
            &SamplerConfig::default(),
            Device::Cpu,
            &|_| {},
        )
        .unwrap()
    };
    let a = run();
    let [tf, tl, vf, vl] = a.examples;
    assert!(tf > 20 && vf > 5, "fraud in both periods: {:?}", a.examples);
    assert!(tl > tf && vl > vf);
    let base_rate = vf as f64 / (vf + vl) as f64;
    let (gnn, gbdt) = &a.valid_metrics;
    // Far above the base rate a random scorer gets.
    assert!(
        gnn.pr_auc.unwrap() > 3.0 * base_rate,
        "gnn {gnn:?}, base rate {base_rate}"
    );
    assert!(gbdt.pr_auc.unwrap() > 3.0 * base_rate, "gbdt {gbdt:?}");
    assert!(gnn.roc_auc.unwrap() > 0.75, "{gnn:?}");
    // The kept epoch is the best one seen.
    let best = a
        .epochs
        .iter()
        .map(|e| e.valid_pr_auc)
        .fold(f64::MIN, f64::max);
    assert_eq!(a.epochs[a.best_epoch - 1].valid_pr_auc, best);
    assert!((0.0..=1.0).contains(&a.thresholds.0));

    let b = run();
    assert_eq!(a.epochs.len(), b.epochs.len());
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!(x.loss, y.loss, "CPU training is deterministic");
        assert_eq!(x.valid_pr_auc, y.valid_pr_auc);
    }
    assert_eq!(a.thresholds, b.thresholds);
}

#[test]
fn a_period_without_fraud_is_a_clear_error() {
    let stream = world(1_500, 0.0005);
    let err = train(
        &stream,
        &small_config(),
        &GraphConfig::default(),
        &SamplerConfig::default(),
        Device::Cpu,
        &|_| {},
    )
    .err()
    .expect("no fraud to learn from");
    assert!(matches!(err, TrainError::Config(_)), "{err}");
    assert!(
        err.to_string().contains("need fraud in both periods"),
        "{err}"
    );
}

#[test]
fn bad_settings_name_the_setting() {
    let config = TrainConfig {
        legit_sample_rate: 0.0,
        ..small_config()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("legit_sample_rate"), "{err}");
}
