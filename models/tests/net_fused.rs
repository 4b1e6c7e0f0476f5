//! The fused forward pass (`forward_fused`, and `forward_t` / `predict`, which use it)
//! against the one-message-type-at-a-time reference (`forward_reference`): the same logits
//! on real sampled subgraphs (batches of 1, 7 and 64, a brand-new account, relations and
//! node types without rows, a batch with no edges at all) for freshly initialised nets and
//! the committed default artifact, the same gradients, dropout still at work in training,
//! and large CPU batches left to the reference. The native CPU pass (`NativeNet`, no
//! libtorch) against the same reference on the same batches, and its errors on a
//! malformed batch.

use std::path::Path;

use fraudgraph_models::artifact::Artifact;
use fraudgraph_models::net::{HybridFraudNet, NetConfig};
use fraudgraph_models::tensors::BatchTensors;
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::batch::{Batch, NO_ROW};
use fraudgraph_sampler::graph::{Graph, GraphConfig};
use fraudgraph_sampler::sample::{SamplerConfig, Subgraph, sample};
use fraudgraph_sampler::{NodeType, Relation};
use fraudgraph_simulator::{SimConfig, Simulation};
use tch::nn;
use tch::{Device, Kind, Reduction, Tensor};

const TOLERANCE: f64 = 1e-5;

fn artifact() -> Artifact {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default");
    Artifact::load(&dir, Device::Cpu).unwrap()
}

/// Subgraphs of a simulated world sampled with `sampler` just before each transaction is
/// applied, plus one of a brand-new account paying a brand-new merchant from a new
/// device (last).
fn subgraphs(graph_config: GraphConfig, sampler: &SamplerConfig) -> Vec<Subgraph> {
    let sim = Simulation::generate(&SimConfig {
        transactions: 4_000,
        days: 10,
        seed: 21,
        fraud_rate: 0.05,
        ..SimConfig::default()
    })
    .unwrap();
    let graph = Graph::new(graph_config);
    let txns: Vec<Transaction> = sim.transactions().collect();
    let mut subs = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        if i >= 1_500 && i % 20 == 0 {
            subs.push(sample(&graph, t, sampler));
        }
        graph.apply(t);
    }
    let mut fresh = txns[txns.len() - 1].clone();
    fresh.txn_id = "fused-test-brand-new".into();
    fresh.account_id = "fused-test-new-account".into();
    fresh.merchant_id = "fused-test-new-merchant".into();
    fresh.device_id = Some("fused-test-new-device".into());
    fresh.counterparty_account_id = None;
    fresh.event_time_ms += 1_000;
    subs.push(sample(&graph, &fresh, sampler));
    subs
}

/// The batches every comparison runs on, by name: real batches of 1, 7 and 64 subgraphs,
/// the brand-new account alone and with others, and edge cases built from real ones.
fn batches(subs: &[Subgraph], max_sequence: usize) -> Vec<(String, Batch)> {
    let collate = |subs: &[Subgraph]| {
        let mut b = Batch::default();
        b.collate(subs, max_sequence);
        b
    };
    let (fresh, seen) = subs.split_last().unwrap();
    assert!(seen.len() >= 64);
    let mut out = vec![
        ("1".to_string(), collate(&seen[..1])),
        ("7".to_string(), collate(&seen[10..17])),
        ("64".to_string(), collate(&seen[seen.len() - 64..])),
        (
            "brand-new".to_string(),
            collate(std::slice::from_ref(fresh)),
        ),
    ];
    let mut mixed: Vec<Subgraph> = seen[20..26].to_vec();
    mixed.insert(3, fresh.clone());
    out.push(("7 with brand-new".to_string(), collate(&mixed)));

    // Without cards (an empty node type, two empty relations) and transfers.
    let mut b = collate(&seen[30..37]);
    let card = NodeType::Card.index();
    b.node_features[card].clear();
    b.node_graph[card].clear();
    b.own_rows[card].iter_mut().for_each(|r| *r = NO_ROW);
    for r in [
        Relation::AccountCard,
        Relation::CardMerchant,
        Relation::AccountAccount,
    ] {
        b.edge_index[r.index()].clear();
        b.edge_features[r.index()].clear();
    }
    out.push(("no cards".to_string(), b));

    // No edges at all, and no history.
    let mut b = collate(&seen[40..43]);
    for r in Relation::ALL {
        b.edge_index[r.index()].clear();
        b.edge_features[r.index()].clear();
    }
    b.sequence.iter_mut().for_each(|v| *v = 0.0);
    b.sequence_len.iter_mut().for_each(|l| *l = 0);
    out.push(("no edges".to_string(), b));
    out
}

fn max_gap(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

/// The largest gap between `a` and `b`, relative beyond 1 in magnitude: logits of an
/// untrained net reach ±40, where one f32 ulp is 4e-6.
fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from(((a - b).abs() / b.abs().clamp_min(1.0)).max()).unwrap()
}

/// `forward_fused`, `forward_t` and `predict` against the reference on every batch.
fn assert_fused_matches(net: &HybridFraudNet, batches: &[(String, Batch)]) {
    let _no_grad = tch::no_grad_guard();
    for (name, batch) in batches {
        let bt = BatchTensors::from_batch(batch, Device::Cpu).unwrap();
        let reference = net.forward_reference(&bt, false).unwrap();
        let fused = net.forward_fused(&bt, false).unwrap();
        assert_eq!(fused.size(), [batch.size as i64], "{name}");
        assert!(bool::try_from(fused.isfinite().all()).unwrap(), "{name}");
        let gap = relative_gap(&fused, &reference);
        assert!(
            gap < TOLERANCE,
            "batch {name}: fused logits differ by {gap}"
        );
        let gap = relative_gap(&net.forward_t(&bt, false).unwrap(), &reference);
        assert!(gap < TOLERANCE, "batch {name}: forward_t differs by {gap}");
        let p = net.predict(&bt).unwrap();
        let gap = max_gap(&p, &reference.sigmoid());
        assert!(
            gap < TOLERANCE,
            "batch {name}: probabilities differ by {gap}"
        );
    }
}

fn check_cases(batches: &[(String, Batch)]) {
    let by_name = |n: &str| &batches.iter().find(|(name, _)| name == n).unwrap().1;
    let one = by_name("1");
    assert!(
        Relation::ALL
            .iter()
            .any(|r| one.edge_index[r.index()].is_empty()),
        "the batch of one has an empty relation"
    );
    assert!(
        Relation::ALL
            .iter()
            .filter(|r| !by_name("64").edge_index[r.index()].is_empty())
            .count()
            >= 5
    );
    let fresh = by_name("brand-new");
    assert_eq!(fresh.sequence_len, [0], "a new account has no history");
}

#[test]
fn fused_and_native_passes_match_the_reference_on_fresh_nets() {
    let a = artifact();
    let subs = subgraphs(a.graph_config(), &a.sampler_config());
    let batches = batches(&subs, a.manifest.max_sequence);
    check_cases(&batches);
    for (seed, config) in [
        (7, NetConfig::default()),
        (
            8,
            NetConfig {
                hidden: 16,
                heads: 2,
                layers: 2,
                time_dims: 4,
                ..NetConfig::default()
            },
        ),
    ] {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = HybridFraudNet::new(&vs.root(), &config).unwrap();
        assert_fused_matches(&net, &batches);
        assert_native_matches(&net, &batches);
    }
}

#[test]
fn fused_gradients_match_the_reference() {
    let a = artifact();
    let subs = subgraphs(a.graph_config(), &a.sampler_config());
    let config = NetConfig {
        dropout: 0.0,
        ..NetConfig::default()
    };
    tch::manual_seed(9);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = HybridFraudNet::new(&vs.root(), &config).unwrap();
    let mut batch = Batch::default();
    batch.collate(&subs[subs.len() - 17..], a.manifest.max_sequence);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let labels: Vec<f32> = (0..batch.size).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let labels = Tensor::from_slice(&labels);
    let grads = |fused: bool| {
        for mut v in vs.trainable_variables() {
            v.zero_grad();
        }
        let logits = if fused {
            net.forward_fused(&bt, true)
        } else {
            net.forward_reference(&bt, true)
        }
        .unwrap();
        logits
            .binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean)
            .backward();
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter()
            .map(|(name, v)| (name, v.grad().copy()))
            .collect::<Vec<_>>()
    };
    let reference = grads(false);
    let fused = grads(true);
    let mut with_gradient = 0;
    for ((name, r), (_, f)) in reference.iter().zip(&fused) {
        assert_eq!(r.defined(), f.defined(), "{name}");
        if !r.defined() {
            continue;
        }
        let scale = f64::try_from(r.abs().max()).unwrap().max(1e-3);
        let gap = max_gap(r, f);
        assert!(
            gap / scale < 1e-4,
            "{name}: gradients differ by {gap} (scale {scale})"
        );
        with_gradient += 1;
    }
    assert_eq!(
        with_gradient,
        reference.len(),
        "every parameter has a gradient"
    );
}

#[test]
fn fused_training_pass_applies_dropout() {
    let a = artifact();
    let subs = subgraphs(a.graph_config(), &a.sampler_config());
    let mut batch = Batch::default();
    batch.collate(&subs[subs.len() - 9..], a.manifest.max_sequence);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    tch::manual_seed(10);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = HybridFraudNet::new(&vs.root(), &NetConfig::default()).unwrap();
    let eval = net.forward_fused(&bt, false).unwrap();
    let first = net.forward_fused(&bt, true).unwrap();
    let second = net.forward_fused(&bt, true).unwrap();
    assert!(bool::try_from(first.isfinite().all()).unwrap());
    assert!(max_gap(&first, &second) > 1e-4, "dropout draws new masks");
    assert!(max_gap(&first, &eval) > 1e-4, "dropout is on in training");
    // Without dropout, a training pass is the eval pass.
    let vs = nn::VarStore::new(Device::Cpu);
    let config = NetConfig {
        dropout: 0.0,
        ..NetConfig::default()
    };
    let net = HybridFraudNet::new(&vs.root(), &config).unwrap();
    let train = net.forward_fused(&bt, true).unwrap();
    let reference = net.forward_reference(&bt, false).unwrap();
    assert!(relative_gap(&train, &reference) < TOLERANCE);
    assert_eq!(train.kind(), Kind::Float);
}

#[test]
fn forward_t_leaves_large_cpu_batches_to_the_reference() {
    let a = artifact();
    let subs = subgraphs(a.graph_config(), &a.sampler_config());
    // The world's subgraphs, repeated until the batch has more than 8,192 edges.
    let mut big: Vec<Subgraph> = Vec::new();
    while big.iter().map(|s| s.edge_count()).sum::<usize>() <= 8_192 {
        big.extend_from_slice(&subs);
    }
    let mut batch = Batch::default();
    batch.collate(&big, a.manifest.max_sequence);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let _no_grad = tch::no_grad_guard();
    let reference = a.net.forward_reference(&bt, false).unwrap();
    assert!(a.net.forward_t(&bt, false).unwrap().equal(&reference));
    let gap = relative_gap(&a.net.forward_fused(&bt, false).unwrap(), &reference);
    assert!(gap < TOLERANCE, "fused logits differ by {gap}");

    // Just under the limit, forward_t is the fused pass.
    let mut small = Vec::new();
    for s in &subs {
        if small
            .iter()
            .chain([s])
            .map(|s: &Subgraph| s.edge_count())
            .sum::<usize>()
            > 8_192
        {
            break;
        }
        small.push(s.clone());
    }
    batch.collate(&small, a.manifest.max_sequence);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let fused = a.net.forward_fused(&bt, false).unwrap();
    assert!(a.net.forward_t(&bt, false).unwrap().equal(&fused));
}

/// `NativeNet`'s logits and probabilities against the reference on every batch.
fn assert_native_matches(net: &HybridFraudNet, batches: &[(String, Batch)]) {
    let _no_grad = tch::no_grad_guard();
    let native = net.native().unwrap();
    for (name, batch) in batches {
        let bt = BatchTensors::from_batch(batch, Device::Cpu).unwrap();
        let reference = net.forward_reference(&bt, false).unwrap();
        let logits = native.logits(batch).unwrap();
        assert_eq!(logits.len(), batch.size, "{name}");
        assert!(logits.iter().all(|z| z.is_finite()), "{name}");
        let gap = relative_gap(&Tensor::from_slice(&logits), &reference);
        assert!(
            gap < TOLERANCE,
            "batch {name}: native logits differ by {gap}"
        );
        let p = Tensor::from_slice(&native.predict(batch).unwrap());
        let gap = max_gap(&p, &reference.sigmoid());
        assert!(
            gap < TOLERANCE,
            "batch {name}: native probabilities differ by {gap}"
        );
    }
}

/// Both passes against the reference on the default artifact's batches (sampled once).
#[test]
fn fused_and_native_passes_match_the_reference_on_the_default_artifact() {
    let a = artifact();
    let subs = subgraphs(a.graph_config(), &a.sampler_config());
    let batches = batches(&subs, a.manifest.max_sequence);
    assert_fused_matches(&a.net, &batches);
    assert_native_matches(&a.net, &batches);
    // The same call again reuses its buffers: the same answer.
    let native = a.net.native().unwrap();
    let (_, b64) = batches.iter().find(|(n, _)| n == "64").unwrap();
    let (_, b1) = batches.iter().find(|(n, _)| n == "1").unwrap();
    let first = native.predict(b64).unwrap();
    native.predict(b1).unwrap();
    assert_eq!(native.predict(b64).unwrap(), first);
}

/// A malformed batch is an error naming the array, never a panic or a silent score.
#[test]
fn native_pass_refuses_a_malformed_batch_naming_the_array() {
    let a = artifact();
    let subs = subgraphs(a.graph_config(), &a.sampler_config());
    let batches = batches(&subs, a.manifest.max_sequence);
    let native = a.net.native().unwrap();
    let (_, good) = batches.iter().find(|(n, _)| n == "7").unwrap();

    let mut b = good.clone();
    b.node_features[NodeType::Device.index()].pop();
    let e = native.predict(&b).unwrap_err().to_string();
    assert!(e.contains("node_features[Device]"), "{e}");

    let mut b = good.clone();
    let r = Relation::ALL
        .into_iter()
        .find(|r| !b.edge_index[r.index()].is_empty())
        .unwrap();
    b.edge_index[r.index()][0].1 = u32::MAX - 1;
    let e = native.predict(&b).unwrap_err().to_string();
    assert!(e.contains(&format!("edge_index[{r:?}] destination")), "{e}");

    let mut b = good.clone();
    b.sequence_len[0] = b.max_sequence as u32 + 1;
    let e = native.predict(&b).unwrap_err().to_string();
    assert!(e.contains("sequence_len"), "{e}");

    let mut b = good.clone();
    b.target_account.pop();
    let e = native.predict(&b).unwrap_err().to_string();
    assert!(e.contains("target_account"), "{e}");
}
