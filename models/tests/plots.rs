//! The PNG plots: each function writes a real PNG, and bad input is an error, not a panic.

use std::path::Path;

use fraudgraph_models::metrics::{pr_curve, roc_curve};
use fraudgraph_models::plots::{PlotError, pr_curves_png, roc_curves_png, score_histogram_png};

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 1_000,
        "{} is {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(bytes[..8], PNG_MAGIC, "{} is not a PNG", path.display());
}

/// Two models' scores on one labelled set: a good one and a weaker one.
fn scores() -> (Vec<f64>, Vec<f64>, Vec<bool>) {
    let n = 2_000;
    let labels: Vec<bool> = (0..n).map(|i| i % 20 == 0).collect();
    let noise = |i: usize, k: usize| ((i * k + 7) % 101) as f64 / 101.0;
    let good = (0..n)
        .map(|i| (0.6 * noise(i, 37) + if labels[i] { 0.4 } else { 0.0 }).min(1.0))
        .collect();
    let weak = (0..n)
        .map(|i| (0.8 * noise(i, 53) + if labels[i] { 0.2 } else { 0.0 }).min(1.0))
        .collect();
    (good, weak, labels)
}

fn split(scores: &[f64], labels: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let pos = scores.iter().zip(labels).filter(|p| *p.1).map(|p| *p.0);
    let neg = scores.iter().zip(labels).filter(|p| !*p.1).map(|p| *p.0);
    (pos.collect(), neg.collect())
}

#[test]
fn each_plot_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let (good, weak, labels) = scores();

    let pr = dir.path().join("pr.png");
    pr_curves_png(
        &pr,
        &[
            ("Hybrid-FraudNet", pr_curve(&good, &labels).unwrap()),
            ("LightGBM", pr_curve(&weak, &labels).unwrap()),
        ],
    )
    .unwrap();
    assert_png(&pr);

    let roc = dir.path().join("roc.png");
    roc_curves_png(
        &roc,
        &[
            ("Hybrid-FraudNet", roc_curve(&good, &labels).unwrap()),
            ("LightGBM", roc_curve(&weak, &labels).unwrap()),
        ],
    )
    .unwrap();
    assert_png(&roc);

    let hist = dir.path().join("scores.png");
    let (gp, gn) = split(&good, &labels);
    let (wp, wn) = split(&weak, &labels);
    score_histogram_png(&hist, &[("Hybrid-FraudNet", gp, gn), ("LightGBM", wp, wn)]).unwrap();
    assert_png(&hist);

    if let Some(keep) = std::env::var_os("FRAUDGRAPH_KEEP_PLOTS") {
        for f in ["pr.png", "roc.png", "scores.png"] {
            std::fs::copy(dir.path().join(f), Path::new(&keep).join(f)).unwrap();
        }
    }
}

#[test]
fn odd_input_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    assert!(matches!(
        pr_curves_png(&path, &[]).unwrap_err(),
        PlotError::Empty { .. }
    ));
    assert!(matches!(
        score_histogram_png(&path, &[]).unwrap_err(),
        PlotError::Empty { .. }
    ));
    // NaN points and scores are skipped; an empty class and out-of-range scores still plot.
    let odd = dir.path().join("odd.png");
    roc_curves_png(
        &odd,
        &[("odd", vec![(0.0, 0.0), (f64::NAN, 0.5), (1.0, 1.0)])],
    )
    .unwrap();
    assert_png(&odd);
    score_histogram_png(&odd, &[("odd", vec![], vec![f64::NAN, -0.5, 2.0, 0.3])]).unwrap();
    assert_png(&odd);
    // A directory that does not exist: an error naming the file.
    let nowhere = dir.path().join("no/such/dir/x.png");
    let err = roc_curves_png(&nowhere, &[("a", vec![(0.0, 0.0), (1.0, 1.0)])]).unwrap_err();
    assert!(err.to_string().contains("x.png"), "{err}");
}
