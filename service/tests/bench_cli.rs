//! `fraudgraph bench sampler` prints the one JSON object the benchmark docs
//! and scripts rely on.

use std::process::Command;

#[test]
fn bench_sampler_reports_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_fraudgraph"))
        .args([
            "bench",
            "sampler",
            "--transactions",
            "5000",
            "--samples",
            "50",
            "--json",
        ])
        .output()
        .expect("the fraudgraph binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "ingest_txn_per_s",
        "edges",
        "bytes_per_edge",
        "sample_p50_us",
        "sample_p99_us",
        "sample_p99_us_under_ingest",
        "sample_p99_us_looking_back",
        "mean_sampled_nodes",
    ] {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["transactions"], 5000);
    assert_eq!(report["fanouts"], serde_json::json!([20, 10, 5]));
    // Sampled at the head of the stream (between 3/5 and 4/5 of it), one target
    // every 20 transactions: all 50 asked for.
    assert_eq!(report["samples"], 50);
    assert_eq!(report["samples_looking_back"], 50);
    assert!(
        report["samples_under_ingest"].as_u64() >= Some(1),
        "{report}"
    );
    assert!(report["sample_p50_us"].as_f64() <= report["sample_p99_us"].as_f64());
}

#[test]
fn bench_sampler_takes_fanouts_as_one_comma_separated_value() {
    let run = |fanouts: &str| {
        Command::new(env!("CARGO_BIN_EXE_fraudgraph"))
            .args([
                "bench",
                "sampler",
                "--transactions",
                "2000",
                "--samples",
                "10",
            ])
            .args(["--fanouts", fanouts, "--json"])
            .output()
            .expect("the fraudgraph binary runs")
    };
    let out = run("8,4,2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fanouts"], serde_json::json!([8, 4, 2]));

    let out = run("8,4");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--fanouts") && stderr.contains("three"),
        "{stderr}"
    );
}
