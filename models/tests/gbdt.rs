//! The LightGBM fallback: it learns, its model file round-trips bit for bit and is a standard
//! LightGBM model (Python's lightgbm reads it and predicts the same), models of another
//! feature layout are refused, and the tabular features of real sampled subgraphs are fixed
//! width and finite.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fraudgraph_models::gbdt::{
    Gbdt, GbdtError, GbdtParams, Importance, tabular_feature_names, tabular_features, tabular_width,
};
use fraudgraph_models::metrics::{Metrics, roc_auc};
use fraudgraph_proto::v1::{Transaction, stream_record::Record};
use fraudgraph_sampler::graph::{Graph, GraphConfig};
use fraudgraph_sampler::sample::{SamplerConfig, sample};
use fraudgraph_simulator::{SimConfig, Simulation};

/// The column that decides the label in [`synthetic`].
const SIGNAL: usize = 5;

/// A deterministic generator of uniforms in [0, 1).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `rows` rows of `width` uniform noise columns, 10% positives, whose column [`SIGNAL`]
/// (modulo `width`) is shifted up by 0.6 for positives (the classes overlap, but rank well
/// apart).
fn synthetic(rows: usize, width: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix(seed);
    let mut x = Vec::with_capacity(rows * width);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let positive = rng.next() < 0.1;
        let start = x.len();
        x.extend((0..width).map(|_| rng.next()));
        if positive {
            x[start + SIGNAL % width] += 0.6;
        }
        y.push(if positive { 1.0 } else { 0.0 });
    }
    (x, y)
}

fn params() -> GbdtParams {
    GbdtParams {
        num_iterations: 60,
        min_data_in_leaf: 20,
        num_threads: 2,
        ..GbdtParams::default()
    }
}

/// A model over the tabular layout, trained on synthetic rows, and held-out test rows.
fn trained() -> (Gbdt, Vec<f32>, Vec<f32>) {
    let w = tabular_width();
    let (x, y) = synthetic(3_000, w, 1);
    let (vx, vy) = synthetic(1_000, w, 2);
    let model = Gbdt::train(&x, &y, Some((&vx, &vy)), w, &params()).unwrap();
    let (tx, ty) = synthetic(1_000, w, 3);
    (model, tx, ty)
}

#[test]
fn a_separating_feature_is_learned() {
    let (model, tx, ty) = trained();
    let w = tabular_width();
    assert_eq!(model.num_features(), w);
    assert_eq!(model.feature_names(), tabular_feature_names().as_slice());
    assert!(model.num_trees() >= 1 && model.num_trees() <= 60);
    let p = model.predict(&tx, w).unwrap();
    assert_eq!(p.len(), ty.len());
    assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
    let auc = roc_auc(&p, &ty).unwrap();
    // Uniform noise shifted by 0.6: the best possible ranking has ROC-AUC 0.92.
    assert!(auc > 0.9, "ROC-AUC {auc}");
    // The signal column is the most used.
    let importance = model.feature_importance(Importance::Gain).unwrap();
    let top = importance
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(top.0, tabular_feature_names()[SIGNAL]);
    // The single-row fast path gives the same bits as batch prediction.
    for (i, row) in tx.chunks_exact(w).take(20).enumerate() {
        assert_eq!(model.predict_row(row).unwrap().to_bits(), p[i].to_bits());
    }
    assert!(model.predict(&[], w).unwrap().is_empty());
}

#[test]
fn early_stopping_keeps_fewer_trees_than_allowed() {
    let w = 8;
    let (x, y) = synthetic(2_000, w, 4);
    let (vx, vy) = synthetic(500, w, 5);
    let p = GbdtParams {
        num_iterations: 400,
        learning_rate: 0.3,
        early_stopping_rounds: Some(5),
        ..params()
    };
    let model = Gbdt::train(&x, &y, Some((&vx, &vy)), w, &p).unwrap();
    assert!(model.num_trees() < 400, "{} trees", model.num_trees());
    let without = Gbdt::train(
        &x,
        &y,
        None,
        w,
        &GbdtParams {
            num_iterations: 30,
            ..p
        },
    )
    .unwrap();
    assert_eq!(without.num_trees(), 30, "no validation set: every round");
    assert_eq!(without.feature_names()[0], "Column_0");
}

#[test]
fn save_then_load_predicts_the_same_bits() {
    let (model, tx, _) = trained();
    let w = tabular_width();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.txt");
    model.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, model.model_text());
    assert!(
        text.starts_with("tree\nversion=v4\n"),
        "standard LightGBM text"
    );
    assert!(text.contains("objective=binary"));

    let loaded = Gbdt::load(&path).unwrap();
    let (a, b) = (
        model.predict(&tx, w).unwrap(),
        loaded.predict(&tx, w).unwrap(),
    );
    assert_eq!(
        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(loaded.model_text(), model.model_text());
}

#[test]
fn the_model_is_built_and_used_on_its_own_thread() {
    // `Gbdt` is not `Send`: the pattern is to move the path (or text) and load on the thread.
    let (model, tx, _) = trained();
    let w = tabular_width();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.txt");
    model.save(&path).unwrap();
    let expected = model.predict(&tx, w).unwrap();
    let (rows_tx, rows_rx) = std::sync::mpsc::channel::<Vec<f32>>();
    let (out_tx, out_rx) = std::sync::mpsc::channel::<Vec<f64>>();
    let worker = std::thread::spawn(move || {
        let model = Gbdt::load(&path).unwrap();
        for rows in rows_rx {
            let scores = rows
                .chunks_exact(w)
                .map(|r| model.predict_row(r).unwrap())
                .collect();
            out_tx.send(scores).unwrap();
        }
    });
    rows_tx.send(tx[..10 * w].to_vec()).unwrap();
    assert_eq!(out_rx.recv().unwrap(), expected[..10]);
    let text = model.model_text().to_owned();
    let from_text = std::thread::spawn(move || {
        let m = Gbdt::from_model_text(text).unwrap();
        m.predict_row(&vec![0.5; w]).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(from_text, model.predict_row(&vec![0.5; w]).unwrap());
    drop(rows_tx);
    worker.join().unwrap();
}

/// `.venv/bin/python` of the repository, when it exists.
fn repo_python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    python.exists().then_some(python)
}

#[test]
fn python_lightgbm_reads_the_model_and_predicts_the_same() {
    let Some(python) = repo_python() else {
        println!("SKIPPED: no .venv/bin/python (run deploy/setup.sh) to check the model file");
        return;
    };
    let (model, tx, _) = trained();
    let w = tabular_width();
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("fallback.txt");
    let rows_path = dir.path().join("rows.f32");
    let out_path = dir.path().join("pred.f64");
    model.save(&model_path).unwrap();
    let bytes: Vec<u8> = tx.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&rows_path, bytes).unwrap();
    let script = r#"
import sys
import lightgbm as lgb
import numpy as np
model, rows, out, width = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
b = lgb.Booster(model_file=model)
assert b.num_feature() == width, (b.num_feature(), width)
x = np.fromfile(rows, dtype="<f4").reshape(-1, width)
p = b.predict(x)
p.astype("<f8").tofile(out)
print(lgb.__version__, b.num_trees(), b.feature_name()[0], b.feature_name()[-1])
"#;
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&model_path)
        .arg(&rows_path)
        .arg(&out_path)
        .arg(w.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let names = tabular_feature_names();
    assert!(stdout.starts_with("4."), "lightgbm 4.x: {stdout}");
    assert!(
        stdout.contains(&names[0]) && stdout.contains(&names[w - 1]),
        "{stdout}"
    );
    let python_scores: Vec<f64> = std::fs::read(&out_path)
        .unwrap()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let rust_scores = model.predict(&tx, w).unwrap();
    assert_eq!(python_scores.len(), rust_scores.len());
    let max_diff = python_scores
        .iter()
        .zip(&rust_scores)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    let identical = python_scores
        .iter()
        .zip(&rust_scores)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    println!("python lightgbm: {stdout}max |diff| {max_diff:e}, bit-identical: {identical}");
    assert!(max_diff <= 1e-12, "max |diff| {max_diff}");
}

#[test]
fn a_model_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = synthetic(500, 3, 6);
    let small = Gbdt::train(&x, &y, None, 3, &params()).unwrap();
    let path = dir.path().join("small.txt");
    small.save(&path).unwrap();
    let err = Gbdt::load(&path).unwrap_err();
    assert!(
        matches!(err, GbdtError::FeatureCount { expected, found: 3, .. } if expected == tabular_width()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("small.txt") && msg.contains("3 features"),
        "{msg}"
    );

    // Same width, a renamed column.
    let (model, _, _) = trained();
    let renamed: String = model
        .model_text()
        .lines()
        .map(|l| {
            if l.starts_with("feature_names=") {
                l.replacen("txn_log_amount", "txn_amount_v0", 1)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.path().join("renamed.txt");
    std::fs::write(&path, renamed).unwrap();
    let err = Gbdt::load(&path).unwrap_err();
    assert!(
        matches!(&err, GbdtError::FeatureNames { index: 0, found, .. } if found == "txn_amount_v0"),
        "{err:?}"
    );
}

#[test]
fn bad_files_and_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.txt");
    let err = Gbdt::load(&missing).unwrap_err();
    assert!(matches!(err, GbdtError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.txt"));
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, "this is not a model\n").unwrap();
    let err = Gbdt::load(&garbage).unwrap_err();
    assert!(err.to_string().contains("garbage.txt"), "{err}");
    let nul = dir.path().join("nul.txt");
    std::fs::write(&nul, "tree\0").unwrap();
    assert!(matches!(
        Gbdt::load(&nul).unwrap_err(),
        GbdtError::ModelText { .. }
    ));

    let (x, mut y) = synthetic(200, 4, 7);
    assert!(matches!(
        Gbdt::train(&x[1..], &y, None, 4, &params()).unwrap_err(),
        GbdtError::Shape {
            what: "train_x",
            ..
        }
    ));
    assert!(matches!(
        Gbdt::train(&x, &y[1..], None, 4, &params()).unwrap_err(),
        GbdtError::Shape {
            what: "train_y",
            ..
        }
    ));
    assert!(matches!(
        Gbdt::train(&x, &y, None, 0, &params()).unwrap_err(),
        GbdtError::Shape { .. }
    ));
    let bad = GbdtParams {
        learning_rate: -1.0,
        ..params()
    };
    assert!(matches!(
        Gbdt::train(&x, &y, None, 4, &bad).unwrap_err(),
        GbdtError::InvalidParam {
            field: "learning_rate",
            ..
        }
    ));
    y[3] = 2.0;
    assert!(matches!(
        Gbdt::train(&x, &y, None, 4, &params()).unwrap_err(),
        GbdtError::BadLabel { index: 3, .. }
    ));
    y[3] = 0.0;
    let model = Gbdt::train(&x, &y, None, 4, &params()).unwrap();
    assert!(model.predict(&x, 5).is_err());
    assert!(model.predict(&x[..7], 4).is_err());
    assert!(model.predict_row(&x[..3]).is_err());
}

/// Replays a small simulated world, sampling every `every`-th transaction before applying
/// it (as training does), with `config`. Returns the subgraphs' tabular rows and labels.
fn simulated_rows(
    sim: &SimConfig,
    every: usize,
    config: &SamplerConfig,
) -> (Vec<f32>, Vec<f32>, usize) {
    let sim = Simulation::generate(sim).unwrap();
    let fraud: HashSet<String> = sim
        .records()
        .filter_map(|r| match r.record {
            Some(Record::Label(l)) if l.is_fraud => Some(l.txn_id),
            _ => None,
        })
        .collect();
    let graph = Graph::new(GraphConfig::default());
    let txns: Vec<Transaction> = sim.transactions().collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let w = tabular_width();
    let mut max_hops = 0;
    for (i, t) in txns.iter().enumerate() {
        if i % every == 0 {
            let sub = sample(&graph, t, config);
            max_hops = max_hops.max(sub.hops as usize);
            let before = x.len();
            tabular_features(&sub, &mut x);
            assert_eq!(x.len() - before, w, "txn {}", t.txn_id);
            y.push(if fraud.contains(&t.txn_id) { 1.0 } else { 0.0 });
        }
        graph.apply(t);
    }
    (x, y, max_hops)
}

#[test]
fn tabular_features_of_real_subgraphs_are_fixed_width_and_finite() {
    let sim = SimConfig {
        transactions: 3_000,
        seed: 11,
        days: 20,
        fraud_rate: 0.05,
        ..SimConfig::default()
    };
    let (x, y, max_hops) = simulated_rows(&sim, 10, &SamplerConfig::default());
    let w = tabular_width();
    assert_eq!(x.len(), y.len() * w);
    assert!(max_hops >= 2, "real neighbourhoods: {max_hops} hops");
    assert!(x.iter().all(|v| v.is_finite()), "no NaN or infinity");
    // The context really varies: every presence flag is seen both ways or always on, and
    // some entities were known to the graph.
    let names = tabular_feature_names();
    let column = |name: &str| {
        let j = names.iter().position(|n| n == name).unwrap();
        x.chunks_exact(w).map(move |r| r[j])
    };
    assert!(column("has_merchant").all(|v| v == 1.0));
    assert!(column("edge_paid_merchant_present").all(|v| v == 1.0));
    assert!(column("has_device").any(|v| v == 1.0));
    assert!(column("has_card").any(|v| v == 1.0));
    assert!(column("account_is_new").any(|v| v == 0.0));
    assert!(column("edge_paid_merchant_log_count").any(|v| v > 0.0));
}

#[test]
fn the_fallback_learns_fraud_in_a_simulated_world() {
    // Hop 0 is all the tabular row reads: skip the deeper hops to keep the test quick.
    let hop0 = SamplerConfig {
        fanouts: [0, 0, 0],
        ..SamplerConfig::default()
    };
    let sim = SimConfig {
        transactions: 12_000,
        seed: 12,
        days: 30,
        fraud_rate: 0.05,
        ..SimConfig::default()
    };
    let (x, y, _) = simulated_rows(&sim, 1, &hop0);
    let w = tabular_width();
    let n = y.len();
    // Time split: train on the first 60%, validate on the next 20%, test on the last 20%.
    let (a, b) = (n * 6 / 10, n * 8 / 10);
    let model = Gbdt::train(
        &x[..a * w],
        &y[..a],
        Some((&x[a * w..b * w], &y[a..b])),
        w,
        &params(),
    )
    .unwrap();
    let p = model.predict(&x[b * w..], w).unwrap();
    let m = Metrics::compute(&p, &y[b..], 0.5).unwrap();
    println!(
        "simulated world, held-out: {}",
        serde_json::to_string(&m).unwrap()
    );
    assert!(m.positives > 20, "{m:?}");
    let auc = m.roc_auc.unwrap();
    assert!(auc > 0.8, "ROC-AUC {auc}");
}
