//! `fraudgraph eval` as a user runs it: a stream file written by `fraudgraph simulate`, a
//! model artifact, and a report directory with metrics.json, report.md and three PNGs; a
//! mismatched artifact or missing data is a clear error naming the path.

use std::path::Path;
use std::process::Command;

use fraudgraph_models::artifact::{Manifest, Thresholds, save_artifact};
use fraudgraph_models::dataset::{self, LabelledStream, Period, Split};
use fraudgraph_models::gbdt::{Gbdt, GbdtParams, tabular_features, tabular_width};
use fraudgraph_models::net::{HybridFraudNet, NetConfig};
use fraudgraph_sampler::graph::GraphConfig;
use fraudgraph_sampler::sample::SamplerConfig;
use tch::Device;
use tch::nn::VarStore;

fn fraudgraph(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fraudgraph"))
        .args(args)
        .output()
        .expect("the fraudgraph binary runs")
}

fn ok(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Simulates a small world to `data` and saves a tiny artifact for it to `dir`: an
/// untrained Hybrid-FraudNet and a small GBDT trained on the training period.
fn world_and_artifact(data: &Path, dir: &Path) {
    ok(&fraudgraph(&[
        "simulate",
        "--transactions",
        "3000",
        "--seed",
        "11",
        "--days",
        "20",
        "--fraud-rate",
        "0.05",
        "--out",
        data.to_str().unwrap(),
    ]));
    let stream = LabelledStream::read(data).unwrap();
    let graph = GraphConfig::default();
    let sampler = SamplerConfig {
        fanouts: [8, 4, 2],
        ..SamplerConfig::default()
    };
    let split = Split::default();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    dataset::replay(
        &stream,
        &split.times(&stream).unwrap(),
        &graph,
        &sampler,
        |_, period, _| period == Period::Train,
        |e| {
            tabular_features(&e.sub, &mut x);
            y.push(if e.fraud { 1.0 } else { 0.0 });
        },
        &|_| {},
    );
    let params = GbdtParams {
        num_iterations: 20,
        min_data_in_leaf: 20,
        num_threads: 1,
        ..GbdtParams::default()
    };
    let gbdt = Gbdt::train(&x, &y, None, tabular_width(), &params).unwrap();
    let net = NetConfig {
        hidden: 16,
        heads: 2,
        layers: 2,
        time_dims: 4,
        ..NetConfig::default()
    };
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    HybridFraudNet::new(&vs.root(), &net).unwrap();
    let manifest = Manifest::new(
        net,
        &sampler,
        &graph,
        8,
        split,
        Thresholds {
            gnn: 0.5,
            gbdt: 0.1,
        },
    );
    save_artifact(dir, &manifest, &vs, &gbdt).unwrap();
}

#[test]
fn eval_writes_the_report_and_prints_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("world.pb");
    let artifact = tmp.path().join("model");
    world_and_artifact(&data, &artifact);
    let report = tmp.path().join("report");

    let out = fraudgraph(&[
        "eval",
        "--artifact",
        artifact.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("test transactions"), "{stdout}");
    assert!(stdout.contains("\noverall "), "{stdout}");
    assert!(stdout.contains("TYPOLOGY_"), "{stdout}");
    assert!(stdout.contains("90% bootstrap interval"), "{stdout}");
    let overall = stdout.lines().find(|l| l.starts_with("overall ")).unwrap();
    assert!(
        overall.contains(" .. ") && overall.contains(')'),
        "{overall}"
    );
    assert!(stdout.contains("report.md"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("metrics.json")).unwrap()).unwrap();
    for model in ["gnn", "gbdt"] {
        let entries = json[model].as_object().expect(model);
        assert!(entries.contains_key("overall"), "{json}");
        assert!(entries.len() >= 2, "at least one typology: {json}");
        for (key, m) in entries {
            assert!(key == "overall" || key.starts_with("TYPOLOGY_"), "{key}");
            for metric in ["pr_auc", "roc_auc", "f1", "recall_at_1pct_fpr"] {
                assert!(m[metric].is_number(), "{model}.{key}.{metric}: {m}");
            }
        }
    }
    assert!(
        std::fs::read_to_string(report.join("report.md"))
            .unwrap()
            .contains("| overall |")
    );
    for png in ["pr_curves.png", "roc_curves.png", "score_distributions.png"] {
        let bytes = std::fs::read(report.join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }

    // An artifact of another feature schema is refused, naming the artifact.
    let manifest = artifact.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["feature_schema_hash"] = "00000000deadbeef".into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = fraudgraph(&[
        "eval",
        "--artifact",
        artifact.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("built for feature schema 00000000deadbeef"),
        "{stderr}"
    );
    assert!(stderr.contains(artifact.to_str().unwrap()), "{stderr}");
    std::fs::write(&manifest, text).unwrap();

    // Missing data names the file.
    let missing = tmp.path().join("nope.pb");
    let out = fraudgraph(&[
        "eval",
        "--artifact",
        artifact.to_str().unwrap(),
        "--data",
        missing.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.pb"), "{stderr}");
}
