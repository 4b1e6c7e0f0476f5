//! `deploy/gpu-check.sh`, the one script a GPU session runs for issues 4 and 5, kept
//! working on the CPU: its quick dry run (`--device cpu --quick`) with this build's binary
//! must finish every step and write the eight result files the device tool brings back,
//! with a PR-AUC per precision, the buffering comparison and the served latency. A renamed
//! flag or a changed JSON field breaks this test here instead of a scarce GPU session.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// A local address with a port nobody listens on right now.
fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds an ephemeral port");
    listener.local_addr().expect("has an address").to_string()
}

#[test]
fn the_gpu_check_script_runs_every_step_on_the_cpu() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(repo.join("deploy/gpu-check.sh"))
        .args([
            "--device",
            "cpu",
            "--quick",
            "--bin",
            env!("CARGO_BIN_EXE_fraudgraph"),
        ])
        .arg("--out")
        .arg(out.path())
        .env("GPU_CHECK_GRPC", free_address())
        .env("GPU_CHECK_METRICS", free_address())
        .output()
        .expect("the script runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "gpu-check failed:\n{stderr}");

    // What the device tool brings back: at most eight plain files.
    let mut files: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "doctor.txt",
            "metrics.txt",
            "pipeline.json",
            "serve.log",
            "serve_500.json",
            "serve_5000.json",
            "summary.json",
            "summary.md",
        ]
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).unwrap()).unwrap();
    let steps = summary["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10, "{steps:?}");
    for s in steps {
        assert_eq!(s["exit"], "0", "step failed: {s}\n{stderr}");
    }
    for p in ["f32", "f16", "bf16"] {
        let pr_auc = summary["eval"][p]["overall"]["pr_auc"].as_f64().unwrap();
        assert!(pr_auc > 0.0 && pr_auc <= 1.0, "{p}: {pr_auc}");
    }
    for p in ["f16", "bf16"] {
        let compared = &summary["eval"][p]["scores_vs_f32"];
        assert!(
            compared["rows"].as_u64().unwrap() > 1_000,
            "{p}: {compared}"
        );
        assert!(summary["eval"][p]["pr_auc_change_vs_f32"]["overall"].is_f64());
    }
    assert!(summary["pipeline"]["double_over_single"].as_f64().unwrap() > 0.0);
    let served = &summary["serve"]["500"];
    assert!(served["ok"].as_u64().unwrap() > 0, "{served}");
    assert!(summary["serve"]["5000"]["calls"].as_u64().unwrap() > 0);
    let md = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    assert!(md.contains("| bf16 |") && md.contains("| 500/s |"), "{md}");
}
