//! `fraudgraph serve` as a gateway sees it: the whole contract over a real gRPC socket,
//! health and reflection, validation errors naming the field, idempotent apply, the GBDT
//! answering inside the deadline when the GNN is slow, metrics, graceful shutdown with a
//! snapshot and a restart from it (with the libtorch backend instead of the native one,
//! giving the same scores), calls in flight at SIGTERM answered before the exit,
//! the limits on message size and concurrent streams per connection, and a corrupt
//! snapshot refused at start with an error naming the file.

mod serve_support;

use std::time::{Duration, Instant};

use fraudgraph_proto::v1::fraud_scoring_client::FraudScoringClient;
use fraudgraph_proto::v1::score_stream_response::Result as StreamResult;
use fraudgraph_proto::v1::{
    ExplainRequest, FallbackReason, ModelKind, ScoreBatchRequest, ScoreRequest, Transaction,
    Typology,
};
use serve_support::{Serve, World};
use tonic::Code;
use tonic::transport::Channel;

const SEED: u64 = 3;
const SIM: u64 = 40_000;
const WARM: u64 = 30_000;

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("serve.json");
    let snapshot = dir.join("graph.snap");
    std::fs::write(
        &path,
        format!(
            r#"{{"warm_transactions": {WARM}, "sim_transactions": {SIM}, "sim_seed": {SEED},
                "snapshot": {{"path": "{}", "interval_s": 0}} {extra} }}"#,
            snapshot.display()
        ),
    )
    .unwrap();
    path
}

fn request(t: &Transaction, timeout: Duration) -> tonic::Request<ScoreRequest> {
    let mut r = tonic::Request::new(ScoreRequest {
        transaction: Some(t.clone()),
        apply_to_graph: false,
    });
    r.set_timeout(timeout);
    r
}

/// The GNN's scores of `txns`, one Score call each (each must be answered by the GNN).
async fn gnn_scores(client: &mut FraudScoringClient<Channel>, txns: &[&Transaction]) -> Vec<f32> {
    let mut scores = Vec::new();
    for t in txns {
        let r = client
            .score(request(t, Duration::from_secs(2)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model, ModelKind::Gnn as i32, "{}", t.txn_id);
        scores.push(r.score);
    }
    scores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_whole_contract_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let world = World::simulate(SIM, SEED);
    let held_out = &world.transactions[WARM as usize..];

    let mut serve = Serve::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    serve.wait_serving(Duration::from_secs(120)).await;
    let mut client = serve.client();

    // Reflection lists the contract and health.
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut r = ServerReflectionClient::new(serve.channel());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = r
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("not a service list: {answer:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"fraudgraph.v1.FraudScoring"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }

    // Score: the GNN answers unseen transactions, with a version, a decision and timings.
    let mut gnn = 0;
    for t in held_out.iter().take(200) {
        let r = client
            .score(request(t, Duration::from_secs(2)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.txn_id, t.txn_id);
        assert!((0.0..=1.0).contains(&r.score), "{}", r.score);
        assert_ne!(r.decision, 0);
        assert!(!r.model_version.is_empty());
        assert!(r.timings.unwrap().total_us > 0);
        gnn += usize::from(r.model == ModelKind::Gnn as i32);
    }
    assert!(
        gnn >= 198,
        "the GNN answered only {gnn} of 200 unhurried requests"
    );

    // Validation errors name the field.
    let mut bad = held_out[0].clone();
    bad.amount_minor = 0;
    let e = client
        .score(request(&bad, Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("transaction.amount_minor"),
        "{}",
        e.message()
    );
    let e = client
        .score(ScoreRequest {
            transaction: None,
            apply_to_graph: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "transaction: required")
    );

    // apply_to_graph counts a transaction once, however often it is sent, even after the
    // same transaction was scored without it.
    let before = serve.status().await.graph.unwrap().transactions;
    assert_eq!(before, WARM);
    let fresh = &held_out[5];
    for _ in 0..3 {
        let mut r = request(fresh, Duration::from_secs(2));
        r.get_mut().apply_to_graph = true;
        client.score(r).await.unwrap();
    }
    assert_eq!(serve.status().await.graph.unwrap().transactions, WARM + 1);

    // ScoreBatch: in order; one bad item rejects the call naming its index; a size limit.
    let items: Vec<_> = held_out[10..13]
        .iter()
        .map(|t| ScoreRequest {
            transaction: Some(t.clone()),
            apply_to_graph: false,
        })
        .collect();
    let r = client
        .score_batch(ScoreBatchRequest {
            requests: items.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = r.responses.iter().map(|r| r.txn_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            &held_out[10].txn_id,
            &held_out[11].txn_id,
            &held_out[12].txn_id
        ]
    );
    let mut broken = items.clone();
    broken[1].transaction.as_mut().unwrap().currency = "euro".into();
    let e = client
        .score_batch(ScoreBatchRequest { requests: broken })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("requests[1].transaction.currency"),
        "{}",
        e.message()
    );
    let e = client
        .score_batch(ScoreBatchRequest {
            requests: vec![items[0].clone(); 257],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("at most 256"), "{}", e.message());

    // ScoreStream: every item answered, the bad one with an error item.
    let mut stream_items = items.clone();
    stream_items[2].transaction.as_mut().unwrap().mcc = 0;
    let mut out = client
        .score_stream(tokio_stream::iter(stream_items))
        .await
        .unwrap()
        .into_inner();
    let (mut scores, mut errors) = (0, Vec::new());
    while let Some(item) = out.message().await.unwrap() {
        match item.result.unwrap() {
            StreamResult::Score(s) => {
                assert_eq!(s.txn_id, item.txn_id);
                scores += 1;
            }
            StreamResult::Error(e) => errors.push((item.txn_id, e.field)),
        }
    }
    assert_eq!(scores, 2);
    assert_eq!(
        errors,
        [(held_out[12].txn_id.clone(), "transaction.mcc".to_owned())]
    );

    // Explain a ring transaction: evidence paths from the account, the subgraph, DOT.
    let ring = world.fraud_of(Typology::Ring);
    let target = held_out
        .iter()
        .find(|t| ring.contains(&t.txn_id))
        .expect("a ring transaction in the held-out period");
    let e = client
        .explain(ExplainRequest {
            transaction: Some(target.clone()),
            max_paths: 3,
            include_dot: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.score.unwrap().txn_id, target.txn_id);
    let sub = e.subgraph.unwrap();
    assert!(sub.accounts >= 1 && sub.edges >= 1, "{sub:?}");
    assert!(!e.paths.is_empty() && e.paths.len() <= 3);
    for p in &e.paths {
        assert_eq!(p.nodes[0].entity_id, target.account_id);
        assert_eq!(p.relations.len(), p.nodes.len() - 1);
    }
    assert!(
        e.dot.starts_with("digraph"),
        "{}",
        &e.dot[..e.dot.len().min(40)]
    );
    let e = client
        .explain(ExplainRequest {
            transaction: Some(target.clone()),
            max_paths: 51,
            include_dot: false,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("max_paths"), "{}", e.message());

    // Status and metrics.
    let status = serve.status().await;
    assert!(status.ready);
    assert!(!status.kafka.unwrap().enabled);
    assert_eq!(status.device, "cpu");
    assert!(
        status.models.iter().all(|m| m.loaded),
        "{:?}",
        status.models
    );
    let metrics = serve.scrape().await;
    for series in [
        "fraudgraph_scores_total{model=\"gnn\",reason=\"none\"}",
        "fraudgraph_rpc_duration_seconds_bucket{rpc=\"Score\"",
        "fraudgraph_rpc_invalid_total{rpc=\"ScoreBatch\"} 2",
        "fraudgraph_stage_duration_seconds_count{stage=\"inference\"}",
        "fraudgraph_batch_size_count",
        "fraudgraph_ready 1",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains(&target.account_id),
        "no identifiers in metrics"
    );

    // Scores of transactions not sent before, to compare with the restarted server's.
    let unseen: Vec<&Transaction> = held_out[400..]
        .iter()
        .filter(|t| t.txn_id != target.txn_id)
        .take(10)
        .collect();
    let native_scores = gnn_scores(&mut client, &unseen).await;

    // Graceful shutdown writes the snapshot; a restart serves from it without warm-up.
    let status = serve.terminate();
    assert!(status.success(), "exit {status}:\n{}", serve.log());
    let log = serve.log();
    assert!(log.contains("graph snapshot written"), "{log}");
    assert!(!log.contains(&target.account_id), "no identifiers in logs");
    let forward_pass = |log: &str| {
        log.lines()
            .find(|l| l.contains("GNN forward pass"))
            .map(str::to_owned)
    };
    assert!(
        forward_pass(&log).is_some_and(|l| l.contains("native")),
        "on the CPU the native backend runs by default:\n{log}"
    );
    // Restarted with the libtorch backend (what CUDA runs): the same graph from the
    // snapshot gives the same scores as the native backend's.
    let mut again = Serve::start(
        dir.path(),
        &["--config", cfg.to_str().unwrap(), "--backend", "libtorch"],
    );
    again.wait_serving(Duration::from_secs(60)).await;
    assert_eq!(again.status().await.graph.unwrap().transactions, WARM + 1);
    assert!(again.log().contains("graph restored from snapshot"));
    assert!(
        forward_pass(&again.log()).is_some_and(|l| l.contains("libtorch")),
        "{}",
        again.log()
    );
    let libtorch_scores = gnn_scores(&mut again.client(), &unseen).await;
    for ((t, native), libtorch) in unseen.iter().zip(native_scores).zip(libtorch_scores) {
        assert!(
            (libtorch - native).abs() < 1e-5,
            "{}: libtorch {libtorch} against native {native}",
            t.txn_id
        );
    }
    assert!(again.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gnn_is_answered_by_the_gbdt_inside_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), r#", "pipeline": {"inference_delay_ms": 300}"#);
    let world = World::simulate(SIM, SEED);
    let mut serve = Serve::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    serve.wait_serving(Duration::from_secs(120)).await;

    let deadline = Duration::from_millis(100);
    // One connection, established before the clock starts (as a gateway's would be).
    let mut client = serve.client();
    client
        .status(fraudgraph_proto::v1::StatusRequest {})
        .await
        .unwrap();
    // 40 requests at 200 per second, each with its 50 ms budget.
    let mut calls = Vec::new();
    for t in world.transactions[WARM as usize..].iter().take(40) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut client = client.clone();
        let req = request(t, deadline);
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = client.score(req).await;
            (r, started.elapsed())
        }));
    }
    for call in calls {
        let (r, took) = call.await.unwrap();
        // The client enforces the deadline itself: a late answer would be an error here.
        let r = r
            .unwrap_or_else(|e| panic!("not answered inside the deadline ({took:?}): {e}"))
            .into_inner();
        assert_eq!(r.model, ModelKind::Gbdt as i32);
        assert_eq!(r.fallback_reason, FallbackReason::Timeout as i32);
        assert!((0.0..=1.0).contains(&r.score));
        let server_us = r.timings.unwrap().total_us;
        assert!(
            u128::from(server_us) < deadline.as_micros(),
            "{server_us} µs"
        );
    }
    let metrics = serve.scrape().await;
    assert!(
        metrics.contains("fraudgraph_scores_total{model=\"gbdt\",reason=\"timeout\"} 40"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_calls_in_flight_before_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    // Every forward pass takes 400 ms, so the calls are still in the pipeline at SIGTERM.
    let cfg = config(dir.path(), r#", "pipeline": {"inference_delay_ms": 400}"#);
    let world = World::simulate(SIM, SEED);
    let mut serve = Serve::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    serve.wait_serving(Duration::from_secs(120)).await;
    let client = serve.client();
    client
        .clone()
        .status(fraudgraph_proto::v1::StatusRequest {})
        .await
        .unwrap();

    let started = Instant::now();
    let mut calls = Vec::new();
    for t in world.transactions[WARM as usize..].iter().take(6) {
        let mut client = client.clone();
        let req = request(t, Duration::from_secs(10));
        calls.push(tokio::spawn(async move {
            let r = client.score(req).await;
            (r, started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let signalled = started.elapsed();
    // SIGTERM, and wait for the exit, off the runtime (it blocks).
    let exit = tokio::task::spawn_blocking(move || {
        let status = serve.terminate();
        (status, serve)
    });
    for call in calls {
        let (r, took) = call.await.unwrap();
        let r = r
            .unwrap_or_else(|e| panic!("a call in flight at SIGTERM failed: {e}"))
            .into_inner();
        // Answered after the signal, and by the GNN: the pipeline ran until the drain ended.
        assert!(took > signalled, "{took:?} vs SIGTERM at {signalled:?}");
        assert_eq!(r.model, ModelKind::Gnn as i32, "{r:?}");
        assert_eq!(r.fallback_reason, FallbackReason::None as i32);
    }
    let (status, serve) = exit.await.unwrap();
    assert!(status.success(), "exit {status}:\n{}", serve.log());
    let log = serve.log();
    assert!(log.contains("draining in-flight calls"), "{log}");
    assert!(log.contains("graph snapshot written"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_size_and_concurrent_stream_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        r#", "limits": {"max_message_bytes": 4096, "max_concurrent_streams": 2}"#,
    );
    let world = World::simulate(SIM, SEED);
    let held_out = &world.transactions[WARM as usize..];
    let mut serve = Serve::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    serve.wait_serving(Duration::from_secs(120)).await;
    let mut client = serve.client();
    let item = |t: &Transaction| ScoreRequest {
        transaction: Some(t.clone()),
        apply_to_graph: false,
    };

    // At most two streams at once on a connection: two open ScoreStreams (each has sent
    // one transaction and stays open while its sender lives) hold a third back until one
    // of them ends.
    let open = |t: &Transaction| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(item(t)).unwrap();
        (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
    };
    let (first_tx, first_rx) = open(&held_out[1]);
    let (second_tx, second_rx) = open(&held_out[2]);
    let mut first = client.score_stream(first_rx).await.unwrap().into_inner();
    let mut second = client.score_stream(second_rx).await.unwrap().into_inner();
    assert!(first.message().await.unwrap().is_some());
    assert!(second.message().await.unwrap().is_some());
    let mut third_client = client.clone();
    let third_item = held_out[3].clone();
    let third = tokio::spawn(async move {
        let mut out = third_client
            .score_stream(tokio_stream::iter([item(&third_item)]))
            .await?
            .into_inner();
        out.message().await
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        !third.is_finished(),
        "a third stream ran beside two open ones"
    );
    drop(first_tx);
    assert!(
        first.message().await.unwrap().is_none(),
        "the first stream ends"
    );
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third stream runs once the first has ended")
        .unwrap()
        .unwrap()
        .expect("an answer");
    assert_eq!(answer.txn_id, held_out[3].txn_id);
    drop(second_tx);
    assert!(second.message().await.unwrap().is_none());

    // A message over max_message_bytes is refused, saying so; a small one goes through.
    client
        .score(request(&held_out[0], Duration::from_secs(5)))
        .await
        .unwrap();
    let big = ScoreBatchRequest {
        requests: held_out[..40].iter().map(item).collect(),
    };
    let e = client.score_batch(big).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );
    assert!(e.message().contains("4096"), "{}", e.message());
}

#[test]
fn a_corrupt_snapshot_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let snapshot = dir.path().join("graph.snap");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fraudgraph"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", serve_support::free_port()),
            ])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{}", serve_support::free_port()),
            ])
            .output()
            .expect("fraudgraph serve runs")
    };

    // Not a snapshot at all, then a real one's header with its body cut short.
    std::fs::write(&snapshot, b"these bytes are not a graph snapshot").unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("reading the graph snapshot")
            && stderr.contains("not a fraudgraph snapshot"),
        "{stderr}"
    );
    assert!(stderr.contains(snapshot.to_str().unwrap()), "{stderr}");

    let graph = fraudgraph_sampler::graph::Graph::new(Default::default());
    for t in World::simulate(2_000, SEED).transactions.iter() {
        graph.apply(t);
    }
    graph
        .write_snapshot(&snapshot, &Default::default())
        .unwrap();
    let whole = std::fs::read(&snapshot).unwrap();
    std::fs::write(&snapshot, &whole[..whole.len() / 2]).unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("corrupt or truncated"), "{stderr}");
    // Refused, not replaced: the file is left for whoever investigates.
    assert_eq!(std::fs::read(&snapshot).unwrap().len(), whole.len() / 2);
}
