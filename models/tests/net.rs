//! Hybrid-FraudNet on CPU: shapes on real sampled subgraphs, edge cases (empty
//! relations and node types, no history), determinism, gradients reaching every
//! relation in both directions, and a small overfit.

use fraudgraph_models::net::{
    HybridFraudNet, NetConfig, NetError, Precision, message_type_name, set_precision,
};
use fraudgraph_models::tensors::BatchTensors;
use fraudgraph_proto::v1::Transaction;
use fraudgraph_sampler::batch::{Batch, NO_ROW};
use fraudgraph_sampler::features::{self, EDGE_FEATURES, SEQ_FEATURES, TXN_FEATURES};
use fraudgraph_sampler::graph::{Graph, GraphConfig};
use fraudgraph_sampler::sample::{SamplerConfig, sample};
use fraudgraph_sampler::{NodeType, Relation};
use fraudgraph_simulator::{SimConfig, Simulation};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

/// libtorch's random generator is global to the process and the tests of this file run on
/// parallel threads: a test drawing from it (initialising a model, dropout) between another
/// test's `manual_seed` and its model's initialisation would change that model's weights and
/// fail `same_seed_gives_identical_logits_bit_for_bit` by chance. Every test here holds this
/// while it runs.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Small enough for fast debug-build tests, same architecture as the default.
fn tiny() -> NetConfig {
    NetConfig {
        hidden: 16,
        heads: 2,
        layers: 3,
        dropout: 0.1,
        time_dims: 4,
        ..NetConfig::default()
    }
}

fn model(seed: i64, config: &NetConfig) -> (nn::VarStore, HybridFraudNet) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = HybridFraudNet::new(&vs.root(), config).unwrap();
    (vs, net)
}

/// Subgraphs of a small simulated world, sampled before each transaction is applied.
fn simulated_batch(max_sequence: usize) -> Batch {
    let sim = Simulation::generate(&SimConfig {
        transactions: 3_000,
        days: 20,
        seed: 11,
        ..SimConfig::default()
    })
    .unwrap();
    let graph = Graph::new(GraphConfig::default());
    let txns: Vec<Transaction> = sim.transactions().collect();
    let mut subs = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        if i % 125 == 124 {
            subs.push(sample(&graph, t, &SamplerConfig::default()));
        }
        graph.apply(t);
    }
    let mut batch = Batch::default();
    batch.collate(&subs, max_sequence);
    batch
}

/// Deterministic pseudo-random values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn fill(&mut self, out: &mut Vec<f32>, n: usize) {
        out.extend((0..n).map(|_| self.next()));
    }
}

/// A hand-made batch of `b` subgraphs in which every relation has edges and, in both
/// directions, some node receives from two neighbours (so attention has gradients):
/// 3 accounts and 2 of every other type per subgraph, every relation between the
/// first two rows of its endpoint types fully connected, and transfers 0→1, 2→1, 1→0,
/// 1→2. Subgraph `g` has `g % (max_sequence + 1)` history elements.
fn synthetic_batch(b: usize, max_sequence: usize, seed: u64) -> Batch {
    let mut rng = Lcg(seed);
    let counts = [3u32, 2, 2, 2, 2];
    let mut batch = Batch {
        size: b,
        max_sequence,
        ..Batch::default()
    };
    for g in 0..b {
        let offset: Vec<u32> = counts.iter().map(|&c| c * g as u32).collect();
        for t in NodeType::ALL {
            let i = t.index();
            rng.fill(
                &mut batch.node_features[i],
                counts[i] as usize * features::node_width(t),
            );
            batch.node_graph[i].extend(std::iter::repeat_n(g as u32, counts[i] as usize));
        }
        for r in Relation::ALL {
            let (st, dt) = r.endpoints();
            let pairs: Vec<(u32, u32)> = if r == Relation::AccountAccount {
                vec![(0, 1), (2, 1), (1, 0), (1, 2)]
            } else {
                vec![(0, 0), (0, 1), (1, 0), (1, 1)]
            };
            for (s, d) in pairs {
                batch.edge_index[r.index()].push((s + offset[st.index()], d + offset[dt.index()]));
            }
            rng.fill(&mut batch.edge_features[r.index()], 4 * EDGE_FEATURES.len());
        }
        batch.target_account.push(offset[0]);
        for t in NodeType::ALL {
            // The first row of each type is the transaction's own entity; every
            // third subgraph has no card.
            let own = if t == NodeType::Card && g % 3 == 0 {
                NO_ROW
            } else {
                offset[t.index()]
            };
            batch.own_rows[t.index()].push(own);
        }
        // Every other subgraph's transaction is a transfer to its second account.
        batch
            .counterparty_row
            .push(if g % 2 == 0 { offset[0] + 1 } else { NO_ROW });
        rng.fill(&mut batch.txn_features, TXN_FEATURES.len());
        let len = g % (max_sequence + 1);
        let w = SEQ_FEATURES.len();
        batch
            .sequence
            .extend(std::iter::repeat_n(0.0, (max_sequence - len) * w));
        rng.fill(&mut batch.sequence, len * w);
        batch.sequence_len.push(len as u32);
    }
    batch
}

fn assert_finite(t: &Tensor) {
    assert!(
        bool::try_from(t.isfinite().all()).unwrap(),
        "non-finite values in {t}"
    );
}

#[test]
fn logits_have_one_value_per_real_subgraph() {
    let _rng = torch_rng();
    let batch = simulated_batch(16);
    assert!(batch.size >= 20);
    let used = Relation::ALL
        .iter()
        .filter(|r| !batch.edge_index[r.index()].is_empty())
        .count();
    assert!(used >= 4, "the simulated batch uses {used} relations");
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let (_vs, net) = model(1, &tiny());
    let logits = net.forward_t(&bt, true).unwrap();
    assert_eq!(logits.size(), [batch.size as i64]);
    assert_finite(&logits);
    let p = net.predict(&bt).unwrap();
    assert_eq!(p.size(), [batch.size as i64]);
    assert_eq!(p.kind(), Kind::Float);
    assert!(bool::try_from(p.ge(0.0).all().logical_and(&p.le(1.0).all())).unwrap());
}

#[test]
fn empty_relations_empty_node_types_and_no_history_are_finite() {
    let _rng = torch_rng();
    let (_vs, net) = model(2, &tiny());

    // No cards at all (an empty node type and two empty relations), no transfers, and
    // no history anywhere.
    let mut batch = synthetic_batch(4, 8, 3);
    let card = NodeType::Card.index();
    batch.node_features[card].clear();
    batch.node_graph[card].clear();
    batch.own_rows[card].iter_mut().for_each(|r| *r = NO_ROW);
    for r in [
        Relation::AccountCard,
        Relation::CardMerchant,
        Relation::AccountAccount,
    ] {
        batch.edge_index[r.index()].clear();
        batch.edge_features[r.index()].clear();
    }
    batch.sequence.iter_mut().for_each(|v| *v = 0.0);
    batch.sequence_len.iter_mut().for_each(|l| *l = 0);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    assert_eq!(bt.rows(NodeType::Card), 0);
    assert_eq!(bt.edges(Relation::CardMerchant), 0);
    let logits = net.forward_t(&bt, true).unwrap();
    assert_eq!(logits.size(), [4]);
    assert_finite(&logits);

    // Gradients stay finite too (the all-padding softmax is masked, not NaN).
    let loss = logits.square().mean(Kind::Float);
    loss.backward();
    for (name, v) in _vs.variables() {
        let g = v.grad();
        if g.defined() {
            assert!(
                bool::try_from(g.isfinite().all()).unwrap(),
                "{name} has a non-finite gradient"
            );
        }
    }

    // A batch padded to zero sequence length.
    let batch = synthetic_batch(3, 0, 4);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let logits = net.forward_t(&bt, false).unwrap();
    assert_eq!(logits.size(), [3]);
    assert_finite(&logits);
}

#[test]
fn same_seed_gives_identical_logits_bit_for_bit() {
    let _rng = torch_rng();
    let batch = synthetic_batch(6, 8, 5);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let (_a, net_a) = model(42, &tiny());
    let first = net_a.forward_t(&bt, false).unwrap();
    let again = net_a.forward_t(&bt, false).unwrap();
    assert!(first.equal(&again), "eval mode is deterministic");

    let (_b, net_b) = model(42, &tiny());
    let second = net_b.forward_t(&bt, false).unwrap();
    assert!(first.equal(&second), "{first} != {second}");

    let (_c, net_c) = model(43, &tiny());
    assert!(!first.equal(&net_c.forward_t(&bt, false).unwrap()));
}

#[test]
fn gradients_reach_every_relation_in_both_directions() {
    let _rng = torch_rng();
    let config = NetConfig {
        dropout: 0.0,
        ..tiny()
    };
    let (vs, net) = model(3, &config);
    let batch = synthetic_batch(4, 6, 6);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    for r in Relation::ALL {
        assert!(bt.edges(r) > 0, "{r:?} has edges");
    }
    let labels = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]);
    let loss = net
        .forward_t(&bt, true)
        .unwrap()
        .binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean);
    loss.backward();

    let vars = vs.variables();
    let nonzero = |name: &str| {
        let g = vars[name].grad();
        g.defined() && f64::try_from(g.abs().sum(Kind::Float)).unwrap() > 0.0
    };
    for layer in 0..config.layers {
        for (r, reverse) in HybridFraudNet::message_types() {
            let prefix = format!("layer{layer}.{}.", message_type_name(r, reverse));
            let params: Vec<&String> = vars.keys().filter(|n| n.starts_with(&prefix)).collect();
            assert_eq!(params.len(), 8, "{prefix}: {params:?}");
            for name in params {
                assert!(nonzero(name), "{name} got no gradient");
            }
        }
    }
    // And every other parameter of the model too.
    let dead: Vec<&String> = vars.keys().filter(|n| !nonzero(n)).collect();
    assert!(dead.is_empty(), "no gradient: {dead:?}");
}

#[test]
fn a_few_adam_steps_fit_a_small_labelled_batch() {
    let _rng = torch_rng();
    let config = NetConfig {
        dropout: 0.0,
        ..tiny()
    };
    let (vs, net) = model(4, &config);
    let batch = synthetic_batch(16, 6, 7);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let labels: Vec<f32> = (0..16)
        .map(|i| ((i * 7 + 3) % 5 < 2) as u8 as f32)
        .collect();
    let labels = Tensor::from_slice(&labels);
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let loss = |train| {
        net.forward_t(&bt, train)
            .unwrap()
            .binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean)
    };
    let initial = f64::try_from(loss(false)).unwrap();
    for _ in 0..40 {
        opt.backward_step(&loss(true));
    }
    let last = f64::try_from(loss(false)).unwrap();
    assert!(
        last < 0.25 * initial,
        "loss {initial:.4} -> {last:.4} after 40 Adam steps"
    );
}

#[test]
fn malformed_batches_are_errors_not_panics() {
    let _rng = torch_rng();
    let mut batch = synthetic_batch(2, 4, 8);
    batch.edge_index[Relation::DeviceIp.index()][0].1 = 99;
    assert!(matches!(
        BatchTensors::from_batch(&batch, Device::Cpu),
        Err(NetError::IndexOutOfRange { index: 99, .. })
    ));

    let mut batch = synthetic_batch(2, 4, 8);
    batch.txn_features.pop();
    assert!(matches!(
        BatchTensors::from_batch(&batch, Device::Cpu),
        Err(NetError::Length { .. })
    ));

    let batch = synthetic_batch(2, 4, 8);
    let mut bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    bt.txn_features = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let (_vs, net) = model(5, &tiny());
    assert!(matches!(
        net.forward_t(&bt, false),
        Err(NetError::Shape { .. })
    ));
    let half = BatchTensors::from_batch(&batch, Device::Cpu)
        .unwrap()
        .to_kind(Kind::Half);
    assert!(matches!(
        net.forward_t(&half, false),
        Err(NetError::Kind { .. })
    ));
}

#[test]
fn reduced_precision_predictions_follow_f32() {
    let _rng = torch_rng();
    // Half precision is meant for CUDA; this checks the plumbing (parameters and inputs
    // converted together) on CPU kernels, which support both kinds in libtorch 2.11.
    let batch = synthetic_batch(8, 6, 9);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let (mut vs, net) = model(6, &tiny());
    let full = net.predict(&bt).unwrap();
    for precision in [Precision::Bf16, Precision::F16] {
        set_precision(&mut vs, precision);
        assert_eq!(net.kind(), precision.kind());
        let reduced = net.predict(&bt).unwrap();
        assert_eq!(reduced.kind(), Kind::Float);
        let gap = f64::try_from((&reduced - &full).abs().max()).unwrap();
        assert!(gap < 0.05, "{precision:?} differs from f32 by {gap}");
        set_precision(&mut vs, Precision::F32);
    }
}

#[test]
fn predict_follows_parameter_changes_made_between_calls() {
    let _rng = torch_rng();
    // predict keeps the fused pass's concatenated weights between calls; an optimizer
    // step (an in-place write) must be seen by the next call, as it is by forward_t. It
    // runs in inference mode, and training must still work after it.
    let batch = synthetic_batch(4, 6, 3);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let (vs, net) = model(8, &tiny());
    let fresh = |net: &HybridFraudNet| {
        let _no_grad = tch::no_grad_guard();
        net.forward_fused(&bt, false).unwrap().sigmoid()
    };
    let before = net.predict(&bt).unwrap();
    assert!(
        before.is_inference(),
        "predict runs in libtorch's inference mode"
    );
    assert_eq!(
        f64::try_from((&before - fresh(&net)).abs().max()).unwrap(),
        0.0
    );
    assert_eq!(
        f64::try_from((&net.predict(&bt).unwrap() - &before).abs().max()).unwrap(),
        0.0,
        "a second call with unchanged parameters gives the same scores"
    );

    let mut opt = nn::AdamW::default().build(&vs, 1e-2).unwrap();
    let loss = net
        .forward_t(&bt, false)
        .unwrap()
        .binary_cross_entropy_with_logits::<Tensor>(
            &Tensor::ones([4], (Kind::Float, Device::Cpu)),
            None,
            None,
            Reduction::Mean,
        );
    opt.backward_step(&loss);

    let after = net.predict(&bt).unwrap();
    let moved = f64::try_from((&after - &before).abs().max()).unwrap();
    assert!(moved > 1e-6, "the step changed no score ({moved})");
    assert_eq!(
        f64::try_from((&after - fresh(&net)).abs().max()).unwrap(),
        0.0,
        "predict after the step equals a pass over freshly concatenated weights"
    );
}

#[test]
fn half_precision_scores_near_one_keep_their_order() {
    let _rng = torch_rng();
    // Fraud rankings live near 1, where bf16 keeps one value per 2^-8: a sigmoid taken
    // in half precision would collapse them into ties. Shift every logit up by 8.
    let batch = synthetic_batch(8, 6, 5);
    let bt = BatchTensors::from_batch(&batch, Device::Cpu).unwrap();
    let (mut vs, net) = model(9, &tiny());
    tch::no_grad(|| {
        let mut bias = vs.variables()["fusion.out.bias"].shallow_clone();
        let _ = bias.fill_(8.0);
    });
    let distinct = |t: &Tensor| {
        let mut v = Vec::<f32>::try_from(t).unwrap();
        v.sort_by(f32::total_cmp);
        v.dedup();
        v.len()
    };
    let full = net.predict(&bt).unwrap();
    assert!(
        f64::try_from(full.min()).unwrap() > 0.99,
        "the shift puts every score near 1"
    );
    assert_eq!(distinct(&full), 8);
    set_precision(&mut vs, Precision::Bf16);
    let half = net.predict(&bt).unwrap();
    assert!(
        distinct(&half) >= 6,
        "bf16 scores {:?} tie where f32 ones {:?} do not",
        Vec::<f32>::try_from(&half).unwrap(),
        Vec::<f32>::try_from(&full).unwrap()
    );
}
