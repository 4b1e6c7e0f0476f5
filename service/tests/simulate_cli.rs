//! `fraudgraph simulate` as a user runs it: to files in both formats, to a
//! real Kafka-protocol broker, and with bad input.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use fraudgraph_proto::codec;
use fraudgraph_proto::stream_file::StreamReader;
use fraudgraph_proto::v1::{Label, StreamRecord, Transaction, stream_record::Record};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

fn fraudgraph(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fraudgraph"))
        .args(args)
        .output()
        .expect("the fraudgraph binary runs")
}

fn read(path: &std::path::Path) -> Vec<StreamRecord> {
    StreamReader::open(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn writes_the_same_stream_as_jsonl_and_pb_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("world.jsonl");
    let pb = dir.path().join("world.pb");
    let summary = dir.path().join("summary.json");
    for out in [&jsonl, &pb] {
        let output = fraudgraph(&[
            "simulate",
            "--transactions",
            "5000",
            "--seed",
            "42",
            "--out",
            out.to_str().unwrap(),
            "--summary",
            summary.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("TYPOLOGY_RING"),
            "summary lists typologies: {stderr}"
        );
    }
    let (a, b) = (read(&jsonl), read(&pb));
    assert_eq!(a, b, "both formats carry the same records");
    assert_eq!(a.len(), 5050, "5,000 transactions and 50 labels");
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(s["summary"]["transactions"], 5000);
    assert_eq!(s["summary"]["fraud"], 50);
    assert_eq!(s["config"]["seed"], 42);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("world.csv");
    let out = fraudgraph(&[
        "simulate",
        "--transactions",
        "10",
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use .jsonl or .pb"));

    let config = dir.path().join("hard.json");
    std::fs::write(&config, r#"{"difficulty": {"camoflage": 0.9}}"#).unwrap();
    let out = fraudgraph(&[
        "simulate",
        "--transactions",
        "10",
        "--config",
        config.to_str().unwrap(),
        "--out",
        dir.path().join("w.pb").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("camoflage"),
        "names the unknown knob"
    );

    let out = fraudgraph(&[
        "simulate",
        "--transactions",
        "10",
        "--fraud-rate",
        "2",
        "--out",
        "x.pb",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fraud_rate"));
}

/// Produces to a real broker and reads everything back: every transaction
/// and label arrives once, keyed and typed as `docs/CONTRACT.md` says.
#[test]
fn produces_to_kafka_keyed_by_account() {
    let broker = support::Tansu::start();
    let out = fraudgraph(&[
        "simulate",
        "--transactions",
        "3000",
        "--seed",
        "9",
        "--kafka-brokers",
        &broker.brokers,
        "--topic",
        "txns",
        "--labels-topic",
        "labels",
        "--format",
        "json",
        "--partitions",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", "simulate-test")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["txns", "labels"]).unwrap();
    let mut txns: HashMap<String, Transaction> = HashMap::new();
    let mut labels: Vec<Label> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while txns.len() + labels.len() < 3030 && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.unwrap();
        let content_type = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "content-type"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap());
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let payload = msg.payload().unwrap();
        if msg.topic() == "txns" {
            let t: Transaction = codec::decode(payload, content_type.as_deref()).unwrap();
            assert_eq!(
                msg.key().unwrap(),
                t.account_id.as_bytes(),
                "keyed by account_id"
            );
            assert!(
                txns.insert(t.txn_id.clone(), t).is_none(),
                "each transaction once"
            );
        } else {
            let l: Label = codec::decode(payload, content_type.as_deref()).unwrap();
            assert_eq!(msg.key().unwrap(), l.txn_id.as_bytes(), "keyed by txn_id");
            labels.push(l);
        }
    }
    assert_eq!(txns.len(), 3000);
    assert_eq!(labels.len(), 30);
    assert!(labels.iter().all(|l| txns.contains_key(&l.txn_id)));

    let file: Vec<Record> = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("same.pb");
        let out = fraudgraph(&[
            "simulate",
            "--transactions",
            "3000",
            "--seed",
            "9",
            "--out",
            path.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        read(&path).into_iter().filter_map(|r| r.record).collect()
    };
    for r in file {
        if let Record::Transaction(t) = r {
            assert_eq!(
                txns.get(&t.txn_id),
                Some(&t),
                "Kafka and file carry the same transactions"
            );
        }
    }
}
