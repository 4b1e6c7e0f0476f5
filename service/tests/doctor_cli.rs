//! `fraudgraph doctor` as an operator runs it: it reports the libtorch the
//! binary really loaded (2.11.0, with libtorch_cuda linked), a working
//! LightGBM, and whether a real broker answers.

mod support;

use std::process::Command;

fn doctor(args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_fraudgraph"))
        .arg("doctor")
        .arg("--json")
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("the fraudgraph binary runs");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), report)
}

#[test]
fn reports_libtorch_lightgbm_and_a_live_broker() {
    let broker = support::Tansu::start();
    let (ok, report) = doctor(&["--kafka-brokers", &broker.brokers]);
    assert!(ok, "{report:#}");
    let torch = &report["libtorch"];
    assert!(
        torch["version"].as_str().unwrap().starts_with("2.11.0"),
        "{torch}"
    );
    assert_eq!(torch["version"], torch["built_against"]);
    assert_eq!(
        torch["torch_cuda_linked"], true,
        "libtorch_cuda must stay linked"
    );
    assert_eq!(torch["cpu_check"], true);
    assert_eq!(report["lightgbm"]["version"], "4.7.0");
    assert_eq!(report["lightgbm"]["check"], true);
    assert_eq!(report["kafka"]["answers"], true);
    assert_eq!(report["kafka"]["cluster_brokers"], 1);
}

#[test]
fn a_dead_broker_fails_the_check() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let (ok, report) = doctor(&["--kafka-brokers", &brokers, "--kafka-timeout-s", "2"]);
    assert!(!ok);
    assert_eq!(report["kafka"]["answers"], false);
    assert_eq!(report["ok"], false);
    assert!(
        report["failures"][0]
            .as_str()
            .unwrap()
            .contains("no answer from Kafka")
    );
}
