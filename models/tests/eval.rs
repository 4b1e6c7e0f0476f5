//! Evaluation of a saved artifact on a simulated stream: every test-period transaction is
//! scored by both models, and the report directory holds `metrics.json` (gnn/gbdt →
//! overall + one entry per typology, each with the headline metrics), `report.md`,
//! `pr_auc_margins.json`, `scores.csv` and the three PNGs.

mod support;

use std::cell::Cell;

use fraudgraph_models::artifact::Artifact;
use fraudgraph_models::dataset::{Period, typology_name};
use fraudgraph_models::eval::{EvalMetrics, GnnBackend, evaluate, evaluate_with};
use fraudgraph_models::net::Precision;
use tch::Device;

use support::{fixture, save_tiny};

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The tiny artifact saved under `tmp` and loaded for the CPU.
fn tiny_artifact(tmp: &tempfile::TempDir) -> Artifact {
    let dir = tmp.path().join("model");
    save_tiny(&dir);
    Artifact::load(&dir, Device::Cpu).unwrap()
}

#[test]
fn evaluation_writes_metrics_report_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = tiny_artifact(&tmp);
    let stream = &fixture().stream;
    let report_dir = tmp.path().join("reports/eval");
    let calls = Cell::new(0usize);
    let report = evaluate(&artifact, stream, &report_dir, &|p| {
        assert!(p.done <= p.total);
        calls.set(calls.get() + 1);
    })
    .unwrap();
    assert!(calls.get() >= 1, "progress is reported");

    // Every test-period transaction, none skipped, with its real labels.
    let times = artifact.manifest.split.times(stream).unwrap();
    let test: Vec<_> = stream
        .transactions
        .iter()
        .filter(|t| times.period(t.event_time_ms) == Some(Period::Test))
        .collect();
    let fraud: Vec<_> = test
        .iter()
        .filter(|t| stream.fraud.contains_key(&t.txn_id))
        .collect();
    assert_eq!(report.transactions, test.len() as u64);
    assert_eq!(report.fraud, fraud.len() as u64);
    assert!(report.fraud > 0, "the test period has fraud");
    assert_eq!(report.metrics.gnn.overall.positives, report.fraud);
    assert_eq!(
        report.metrics.gnn.overall.negatives,
        report.transactions - report.fraud
    );
    assert_eq!(report.test_first_ms, test[0].event_time_ms);

    // metrics.json: exactly gnn and gbdt, overall plus every typology present.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("metrics.json")).unwrap()).unwrap();
    let top: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(top, ["gbdt", "gnn"]);
    let mut typologies: Vec<String> = fraud
        .iter()
        .map(|t| typology_name(stream.typology(t)))
        .collect();
    typologies.sort();
    typologies.dedup();
    for model in ["gnn", "gbdt"] {
        let entries = json[model].as_object().unwrap();
        let mut keys: Vec<&String> = entries.keys().collect();
        keys.sort();
        let mut want: Vec<&String> = typologies.iter().collect();
        let overall = "overall".to_owned();
        want.push(&overall);
        want.sort();
        assert_eq!(keys, want, "{model}");
        for (key, m) in entries {
            for metric in ["pr_auc", "roc_auc", "f1", "recall_at_1pct_fpr"] {
                let v = &m[metric];
                assert!(
                    v.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)),
                    "{model}.{key}.{metric} = {v}"
                );
            }
        }
        for t in &typologies {
            assert_eq!(
                json[model][t]["negatives"], json[model]["overall"]["negatives"],
                "a typology's negatives are all legitimate test transactions"
            );
        }
    }
    // metrics.json holds the report's numbers (serde_json parses floats to within an ulp).
    let parsed: EvalMetrics = serde_json::from_value(json).unwrap();
    let pairs = [
        (&parsed.gnn, &report.metrics.gnn),
        (&parsed.gbdt, &report.metrics.gbdt),
    ];
    for (got, want) in pairs {
        let got = std::iter::once(&got.overall).chain(got.typologies.values());
        let want = std::iter::once(&want.overall).chain(want.typologies.values());
        for (g, w) in got.zip(want) {
            assert_eq!((g.positives, g.negatives), (w.positives, w.negatives));
            let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-12,
                (a, b) => a == b,
            };
            assert!(close(g.pr_auc, w.pr_auc) && close(g.roc_auc, w.roc_auc));
            assert!(close(g.f1, w.f1) && close(g.recall_at_1pct_fpr, w.recall_at_1pct_fpr));
        }
    }

    // The PR-AUC lead with its interval: for every set with fraud, the margin is the
    // difference of the two models' PR-AUC and lies within its interval's ends.
    let margin_sets: Vec<&String> = report.pr_auc_margins.keys().collect();
    let mut want_sets: Vec<&String> = typologies.iter().collect();
    let overall = "overall".to_owned();
    want_sets.push(&overall);
    want_sets.sort();
    assert_eq!(margin_sets, want_sets);
    for (name, m) in &report.pr_auc_margins {
        let (g, b) = if name == "overall" {
            (&report.metrics.gnn.overall, &report.metrics.gbdt.overall)
        } else {
            (
                &report.metrics.gnn.typologies[name],
                &report.metrics.gbdt.typologies[name],
            )
        };
        let diff = g.pr_auc.unwrap() - b.pr_auc.unwrap();
        assert!((m.margin - diff).abs() < 1e-12, "{name}: {m:?} vs {diff}");
        assert!(
            m.low <= m.high && (0.0..=1.0).contains(&m.share_ahead),
            "{name}: {m:?}"
        );
        assert_eq!(m.resamples, fraudgraph_models::eval::MARGIN_RESAMPLES);
    }
    let written: std::collections::BTreeMap<String, fraudgraph_models::margin::PrAucMargin> =
        serde_json::from_slice(&std::fs::read(report_dir.join("pr_auc_margins.json")).unwrap())
            .unwrap();
    assert!(written.keys().eq(report.pr_auc_margins.keys()));
    for (w, m) in written.values().zip(report.pr_auc_margins.values()) {
        let same = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(same(w.margin, m.margin) && same(w.low, m.low) && same(w.high, m.high));
        assert!(same(w.share_ahead, m.share_ahead) && w.resamples == m.resamples);
    }

    // scores.csv: every test transaction once, in time order, with its label, and the
    // scores the metrics were computed from.
    let csv = std::fs::read_to_string(report_dir.join("scores.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("txn_id,fraud,typology,gnn,gbdt"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), test.len());
    let (mut gnn, mut gbdt, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for (row, txn) in rows.iter().zip(&test) {
        assert_eq!(row.len(), 5, "{row:?}");
        assert_eq!(row[0], txn.txn_id);
        let typology = stream.fraud.get(&txn.txn_id);
        assert_eq!(row[1], if typology.is_some() { "1" } else { "0" });
        assert_eq!(
            row[2],
            typology.map(|&t| typology_name(t)).unwrap_or_default()
        );
        gnn.push(row[3].parse::<f64>().unwrap());
        gbdt.push(row[4].parse::<f64>().unwrap());
        labels.push(typology.is_some());
    }
    let same = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let pr_auc = fraudgraph_models::metrics::pr_auc;
    assert!(same(
        pr_auc(&gnn, &labels).unwrap(),
        report.metrics.gnn.overall.pr_auc.unwrap()
    ));
    assert!(same(
        pr_auc(&gbdt, &labels).unwrap(),
        report.metrics.gbdt.overall.pr_auc.unwrap()
    ));

    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("| overall |"), "{md}");
    assert!(md.contains("How sure the PR-AUC lead is"), "{md}");
    for t in &typologies {
        assert!(md.contains(&format!("| {t} |")), "{t} in the table:\n{md}");
    }
    assert!(
        md.contains("PR-AUC GNN") && md.contains("PR-AUC GBDT"),
        "{md}"
    );
    assert!(md.contains(&artifact.manifest.feature_schema_hash), "{md}");
    assert!(md.contains(" UTC"), "test period dates: {md}");

    for png in ["pr_curves.png", "roc_curves.png", "score_distributions.png"] {
        let bytes = std::fs::read(report_dir.join(png)).unwrap();
        assert!(bytes.len() > 1_000, "{png}");
        assert_eq!(bytes[..8], PNG_MAGIC, "{png}");
    }
}

#[test]
fn a_stream_without_a_test_period_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let artifact = tiny_artifact(&tmp);
    // Only the first day: everything is warm-up.
    let mut stream = fixture().stream.clone();
    let first = stream.transactions[0].event_time_ms;
    stream
        .transactions
        .retain(|t| t.event_time_ms < first + 86_400_000);
    let err = evaluate(&artifact, &stream, &tmp.path().join("r"), &|_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("no transactions in the test period"),
        "{err}"
    );
}

#[test]
fn half_precision_evaluation_says_so_and_stays_close_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = &fixture().stream;
    let mut artifact = tiny_artifact(&tmp);
    let full = evaluate(&artifact, stream, &tmp.path().join("f32"), &|_| {}).unwrap();
    assert_eq!(full.gnn_precision, Precision::F32);

    artifact.set_precision(Precision::Bf16);
    let half = evaluate(&artifact, stream, &tmp.path().join("bf16"), &|_| {}).unwrap();
    assert_eq!(half.gnn_precision, Precision::Bf16);
    assert_eq!(half.gnn_device, "cpu");
    let md = std::fs::read_to_string(tmp.path().join("bf16/report.md")).unwrap();
    assert!(
        md.contains("The GNN ran on cpu in bf16 (libtorch forward pass)."),
        "{md}"
    );

    // The GBDT does not change; the GNN's ranking barely does.
    assert_eq!(half.metrics.gbdt, full.metrics.gbdt);
    let (h, f) = (
        half.metrics.gnn.overall.roc_auc.unwrap(),
        full.metrics.gnn.overall.roc_auc.unwrap(),
    );
    assert!((h - f).abs() < 0.02, "ROC-AUC bf16 {h} vs f32 {f}");
}

/// The native CPU pass scores the test period as libtorch does: the same GNN metrics (to
/// rounding), the same GBDT, and the report says which pass ran. Asked for in half
/// precision, it refuses.
#[test]
fn native_evaluation_matches_libtorch() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = &fixture().stream;
    let mut artifact = tiny_artifact(&tmp);
    let torch = evaluate(&artifact, stream, &tmp.path().join("torch"), &|_| {}).unwrap();
    let native = evaluate_with(
        &artifact,
        stream,
        &tmp.path().join("native"),
        &|_| {},
        GnnBackend::Native,
    )
    .unwrap();
    assert_eq!(torch.gnn_backend, GnnBackend::Libtorch);
    assert_eq!(native.gnn_backend, GnnBackend::Native);
    assert_eq!(native.transactions, torch.transactions);
    assert_eq!(native.metrics.gbdt, torch.metrics.gbdt);
    let (n, t) = (&native.metrics.gnn.overall, &torch.metrics.gnn.overall);
    for (what, a, b) in [
        ("PR-AUC", n.pr_auc, t.pr_auc),
        ("ROC-AUC", n.roc_auc, t.roc_auc),
    ] {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!((a - b).abs() < 1e-4, "{what}: native {a}, libtorch {b}");
    }
    let md = std::fs::read_to_string(tmp.path().join("native/report.md")).unwrap();
    assert!(md.contains("(native forward pass)"), "{md}");

    artifact.set_precision(Precision::Bf16);
    let err = evaluate_with(
        &artifact,
        stream,
        &tmp.path().join("x"),
        &|_| {},
        GnnBackend::Native,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("native backend runs in f32"),
        "{err}"
    );
}
