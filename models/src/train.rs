//! Training: Hybrid-FraudNet and the LightGBM fallback from one leak-free
//! replay of a labelled stream.
//!
//! 1. Replay the stream in time order ([`crate::dataset::replay`]); every
//!    fraud of the train and validation periods and a seeded sample of the
//!    legitimate training transactions become examples; the validation period
//!    keeps every legitimate transaction (thresholds and PR-AUC depend on the
//!    true base rate).
//! 2. Train the GNN with AdamW on a class-weighted binary cross-entropy
//!    (`pos_weight` = √(negatives / positives) by default), gradient norm
//!    clipped, shuffled mini-batches, with an exponential moving average of
//!    the weights kept alongside; after each epoch score the validation
//!    frauds and a seeded share of its legitimate transactions with the
//!    averaged weights, keep those with the best PR-AUC; stop after
//!    `patience` epochs without improvement.
//! 3. Train LightGBM on the tabular features of the same examples, early
//!    stopped on the same validation set.
//! 4. Choose each model's decision threshold as its best F1 on validation.
//!
//! Everything is seeded; on CPU the result is reproducible run to run on one
//! CPU family (another family rounds differently in libtorch, and training
//! ends with another network of similar quality).

use std::collections::HashMap;
use std::time::Instant;

use fraudgraph_sampler::batch::Batch;
use fraudgraph_sampler::graph::GraphConfig;
use fraudgraph_sampler::sample::{SamplerConfig, Subgraph};
use serde::{Deserialize, Serialize};
use tch::{Device, Reduction, Tensor, nn, nn::OptimizerConfig};

use crate::artifact;
use crate::dataset::{self, Example, LabelledStream, Period, ReplayProgress, Split, SplitTimes};
use crate::gbdt::{Gbdt, GbdtError, GbdtParams, tabular_features, tabular_width};
use crate::metrics::{self, MetricError, Metrics};
use crate::net::{HybridFraudNet, NetConfig, NetError};
use crate::tensors;

/// Everything that decides a training run. Stored in the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The network.
    pub net: NetConfig,
    /// The LightGBM fallback.
    pub gbdt: GbdtParams,
    /// The time split.
    pub split: Split,
    /// Share of legitimate training transactions kept as examples (all frauds
    /// are kept).
    pub legit_sample_rate: f64,
    /// Share of legitimate validation transactions scored after each epoch
    /// to pick the best epoch (all frauds are). Thresholds and the reported
    /// validation metrics use every validation transaction.
    pub epoch_valid_legit_rate: f64,
    /// Weight of a fraud example in the loss; `None`: √(negatives/positives).
    pub pos_weight: Option<f64>,
    /// Most epochs.
    pub epochs: usize,
    /// Epochs without a better validation PR-AUC before stopping.
    pub patience: usize,
    /// Subgraphs per mini-batch.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient norm clip.
    pub clip_norm: f64,
    /// Decay of an exponential moving average of the weights, updated after every
    /// optimizer step (with a warm-up, `min(decay, (1 + t) / (10 + t))` at step `t`);
    /// validation scores and the artifact keep the average instead of the last step's
    /// weights. `None` keeps the raw weights.
    pub weight_average_decay: Option<f64>,
    /// Sequence length given to temporal attention.
    pub max_sequence: usize,
    /// Seeds initialisation, shuffling, example sampling and the sampler.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            net: NetConfig {
                hidden: 32,
                ..NetConfig::default()
            },
            gbdt: GbdtParams::default(),
            split: Split::default(),
            legit_sample_rate: 0.1,
            epoch_valid_legit_rate: 0.25,
            pos_weight: None,
            epochs: 12,
            patience: 4,
            batch_size: 128,
            learning_rate: 2e-3,
            weight_decay: 1e-4,
            clip_norm: 1.0,
            weight_average_decay: Some(0.99),
            max_sequence: 32,
            seed: 7,
        }
    }
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is unusable.
    #[error("train config: {0}")]
    Config(String),
    /// The data cannot be split or read.
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// LightGBM failed.
    #[error(transparent)]
    Gbdt(#[from] GbdtError),
    /// A metric could not be computed (e.g. no fraud in a period).
    #[error("{period} period: {source}")]
    Metric {
        /// Which period.
        period: &'static str,
        /// Why.
        source: MetricError,
    },
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Scoring through the artifact's path failed.
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
}

/// What training reports while it runs.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The replay that builds the examples.
    Replay(ReplayProgress),
    /// Examples are ready.
    Examples {
        /// Training examples (fraud, legitimate).
        train: (usize, usize),
        /// Validation examples (fraud, legitimate).
        valid: (usize, usize),
    },
    /// A mini-batch of an epoch is done.
    Batch {
        /// The epoch, from 1.
        epoch: usize,
        /// Batches done in this epoch.
        done: usize,
        /// Batches in an epoch.
        total: usize,
        /// Mean loss so far this epoch.
        loss: f64,
    },
    /// An epoch is done.
    Epoch(EpochReport),
    /// LightGBM is training.
    Gbdt,
}

/// One epoch's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// PR-AUC on the per-epoch validation subset (legitimate transactions
    /// subsampled, so higher than on the full period; for choosing epochs).
    pub valid_pr_auc: f64,
    /// Seconds the epoch took (training and validation).
    pub seconds: f64,
}

/// A trained pair of models and how they were chosen.
pub struct Trained {
    /// The variables of the network (best epoch).
    pub vs: nn::VarStore,
    /// The network.
    pub net: HybridFraudNet,
    /// The fallback.
    pub gbdt: Gbdt,
    /// Decision thresholds (best validation F1) for the GNN and the GBDT.
    pub thresholds: (f64, f64),
    /// Validation metrics of both at their thresholds.
    pub valid_metrics: (Metrics, Metrics),
    /// Per-epoch figures.
    pub epochs: Vec<EpochReport>,
    /// The best epoch (from 1).
    pub best_epoch: usize,
    /// The split, as instants over the data.
    pub split_times: SplitTimes,
    /// Examples used: (train fraud, train legit, valid fraud, valid legit).
    pub examples: [usize; 4],
    /// Wall seconds: replay, GNN, GBDT.
    pub seconds: [f64; 3],
}

impl TrainConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_owned()));
        if !(self.legit_sample_rate > 0.0 && self.legit_sample_rate <= 1.0) {
            return bad("legit_sample_rate must be in (0, 1]");
        }
        if !(self.epoch_valid_legit_rate > 0.0 && self.epoch_valid_legit_rate <= 1.0) {
            return bad("epoch_valid_legit_rate must be in (0, 1]");
        }
        if self.epochs == 0 || self.batch_size == 0 || self.max_sequence == 0 {
            return bad("epochs, batch_size and max_sequence must be at least 1");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate must be positive");
        }
        if self.pos_weight.is_some_and(|w| !(w > 0.0 && w.is_finite())) {
            return bad("pos_weight must be positive");
        }
        if self
            .weight_average_decay
            .is_some_and(|d| !(0.0..1.0).contains(&d))
        {
            return bad("weight_average_decay must be in [0, 1)");
        }
        self.net.validate()?;
        self.gbdt.validate()?;
        self.split.validate()?;
        Ok(())
    }
}

/// A seeded 64-bit generator (SplitMix64) for sampling and shuffling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// An exponential moving average of a var store's weights
/// ([`TrainConfig::weight_average_decay`]).
struct WeightAverage {
    /// The most the average keeps of itself per step.
    decay: f64,
    /// Optimizer steps so far (for the warm-up).
    steps: u64,
    /// Per variable: (its average, the var store's variable itself).
    average: Vec<(Tensor, Tensor)>,
}

impl WeightAverage {
    /// Starts at the store's current weights.
    fn new(vs: &nn::VarStore, decay: f64) -> WeightAverage {
        let average = tch::no_grad(|| {
            vs.variables()
                .into_values()
                .map(|v| (v.copy(), v))
                .collect()
        });
        WeightAverage {
            decay,
            steps: 0,
            average,
        }
    }

    /// Moves the average towards the current weights (after an optimizer step).
    fn update(&mut self) {
        self.steps += 1;
        let t = self.steps as f64;
        let d = self.decay.min((1.0 + t) / (10.0 + t));
        tch::no_grad(|| {
            for (avg, var) in &mut self.average {
                let _ = avg.lerp_(var, 1.0 - d);
            }
        });
    }

    /// Swaps the average and the current weights (twice restores both).
    fn swap(&mut self) {
        tch::no_grad(|| {
            for (avg, var) in &mut self.average {
                let held = var.copy();
                var.copy_(avg);
                avg.copy_(&held);
            }
        });
    }
}

/// GNN scores of `subs`, `batch_size` at a time through [`artifact::score_gnn`], as f64
/// for the metrics.
fn score_subgraphs(
    net: &HybridFraudNet,
    subs: &[Subgraph],
    batch_size: usize,
    max_sequence: usize,
    batch: &mut Batch,
) -> Result<Vec<f64>, TrainError> {
    let mut out = Vec::with_capacity(subs.len());
    for chunk in subs.chunks(batch_size.max(1)) {
        out.extend(
            artifact::score_gnn(net, chunk, max_sequence, batch)?
                .into_iter()
                .map(f64::from),
        );
    }
    Ok(out)
}

fn metric<T>(period: &'static str, r: Result<T, MetricError>) -> Result<T, TrainError> {
    r.map_err(|source| TrainError::Metric { period, source })
}

/// Trains both models on `stream` on `device`.
pub fn train(
    stream: &LabelledStream,
    config: &TrainConfig,
    graph_config: &GraphConfig,
    sampler: &SamplerConfig,
    device: Device,
    progress: &dyn Fn(TrainEvent),
) -> Result<Trained, TrainError> {
    config.validate()?;
    let split_times = config.split.times(stream)?;

    // 1. Examples.
    let started = Instant::now();
    let mut rng = Rng(config.seed ^ 0x5eed);
    let mut train_set: Vec<Example> = Vec::new();
    let (mut valid_subs, mut valid_labels): (Vec<Subgraph>, Vec<bool>) = (Vec::new(), Vec::new());
    dataset::replay(
        stream,
        &split_times,
        graph_config,
        sampler,
        |_, period, fraud| match period {
            Period::Train => fraud || rng.unit() < config.legit_sample_rate,
            Period::Valid => true,
            Period::Test => false,
        },
        |e| match e.period {
            Period::Train => train_set.push(e),
            _ => {
                valid_labels.push(e.fraud);
                valid_subs.push(e.sub);
            }
        },
        &|p| progress(TrainEvent::Replay(p)),
    );
    let tf = train_set.iter().filter(|e| e.fraud).count();
    let tl = train_set.len() - tf;
    let vf = valid_labels.iter().filter(|f| **f).count();
    let vl = valid_labels.len() - vf;
    progress(TrainEvent::Examples {
        train: (tf, tl),
        valid: (vf, vl),
    });
    if tf == 0 || vf == 0 {
        return Err(TrainError::Config(format!(
            "need fraud in both periods: {tf} in training, {vf} in validation; use more data"
        )));
    }
    let replay_s = started.elapsed().as_secs_f64();

    // 2. The network.
    let started = Instant::now();
    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = HybridFraudNet::new(&vs.root(), &config.net)?;
    let mut opt = nn::AdamW {
        wd: config.weight_decay,
        ..Default::default()
    }
    .build(&vs, config.learning_rate)?;
    let pos_weight = config
        .pos_weight
        .unwrap_or_else(|| (tl as f64 / tf as f64).sqrt());
    let pos_weight_t = Tensor::from_slice(&[pos_weight as f32]).to_device(device);
    let mut batch = Batch::default();
    // The per-epoch validation subset: every fraud, a seeded share of the rest.
    let (epoch_subs, epoch_labels): (Vec<Subgraph>, Vec<bool>) = valid_subs
        .iter()
        .zip(&valid_labels)
        .filter(|(_, fraud)| **fraud || rng.unit() < config.epoch_valid_legit_rate)
        .map(|(s, f)| (s.clone(), *f))
        .unzip();
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let mut chunk: Vec<Subgraph> = Vec::with_capacity(config.batch_size);
    let mut labels: Vec<f32> = Vec::with_capacity(config.batch_size);
    let mut epochs = Vec::new();
    let mut best: Option<(f64, usize, HashMap<String, Tensor>)> = None;
    let mut average = config
        .weight_average_decay
        .map(|d| WeightAverage::new(&vs, d));
    let batches = order.len().div_ceil(config.batch_size);
    for epoch in 1..=config.epochs {
        let epoch_start = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for (b, idx) in order.chunks(config.batch_size).enumerate() {
            chunk.clear();
            labels.clear();
            for &i in idx {
                chunk.push(train_set[i].sub.clone());
                labels.push(f32::from(u8::from(train_set[i].fraud)));
            }
            batch.collate(&chunk, config.max_sequence);
            let t = tensors::from_batch(&batch, device)?;
            let logits = net.forward_t(&t, true)?;
            let y = Tensor::from_slice(&labels).to_device(device);
            let loss = logits.f_binary_cross_entropy_with_logits(
                &y,
                None::<Tensor>,
                Some(pos_weight_t.shallow_clone()),
                Reduction::Mean,
            )?;
            // tch's step unwraps libtorch errors; a failure here is a bug,
            // not bad input (shapes were checked by from_batch).
            opt.backward_step_clip_norm(&loss, config.clip_norm);
            if let Some(average) = &mut average {
                average.update();
            }
            loss_sum += loss.f_double_value(&[])?;
            if b % 8 == 7 || b + 1 == batches {
                progress(TrainEvent::Batch {
                    epoch,
                    done: b + 1,
                    total: batches,
                    loss: loss_sum / (b + 1) as f64,
                });
            }
        }
        // Validation (and a best epoch's copy) sees the averaged weights; training goes on
        // from the raw ones.
        if let Some(average) = &mut average {
            average.swap();
        }
        let scores = score_subgraphs(
            &net,
            &epoch_subs,
            config.batch_size * 2,
            config.max_sequence,
            &mut batch,
        )?;
        let pr = metric("validation", metrics::pr_auc(&scores, &epoch_labels))?;
        let report = EpochReport {
            epoch,
            loss: loss_sum / batches.max(1) as f64,
            valid_pr_auc: pr,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        progress(TrainEvent::Epoch(report.clone()));
        epochs.push(report);
        let better = best.as_ref().is_none_or(|(b, _, _)| pr > *b);
        if better {
            let weights = tch::no_grad(|| {
                vs.variables()
                    .into_iter()
                    .map(|(k, v)| (k, v.copy()))
                    .collect()
            });
            best = Some((pr, epoch, weights));
        }
        if let Some(average) = &mut average {
            average.swap();
        }
        if !better
            && best
                .as_ref()
                .is_some_and(|(_, e, _)| epoch - e >= config.patience)
        {
            break;
        }
    }
    let (_, best_epoch, weights) = best.expect("at least one epoch ran");
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if let Some(w) = weights.get(&name) {
                var.copy_(w);
            }
        }
    });
    let gnn_valid = score_subgraphs(
        &net,
        &valid_subs,
        config.batch_size * 2,
        config.max_sequence,
        &mut batch,
    )?;
    let gnn_s = started.elapsed().as_secs_f64();

    // 3. The fallback.
    progress(TrainEvent::Gbdt);
    let started = Instant::now();
    let width = tabular_width();
    let tabular = |subs: &mut dyn Iterator<Item = &Subgraph>| {
        let mut x = Vec::new();
        for sub in subs {
            tabular_features(sub, &mut x);
        }
        x
    };
    let train_x = tabular(&mut train_set.iter().map(|e| &e.sub));
    let train_y: Vec<f32> = train_set
        .iter()
        .map(|e| f32::from(u8::from(e.fraud)))
        .collect();
    let valid_x = tabular(&mut valid_subs.iter());
    let valid_y: Vec<f32> = valid_labels
        .iter()
        .map(|f| f32::from(u8::from(*f)))
        .collect();
    let gbdt = Gbdt::train(
        &train_x,
        &train_y,
        Some((&valid_x, &valid_y)),
        width,
        &config.gbdt,
    )?;
    let gbdt_valid = gbdt.predict(&valid_x, width)?;
    let gbdt_s = started.elapsed().as_secs_f64();

    // 4. Thresholds.
    let choose = |scores: &[f64]| -> Result<(f64, Metrics), TrainError> {
        let t = metric(
            "validation",
            metrics::threshold_for_best_f1(scores, &valid_labels),
        )?;
        let m = metric(
            "validation",
            Metrics::compute(scores, &valid_labels, t.threshold),
        )?;
        Ok((t.threshold, m))
    };
    let (gnn_t, gnn_m) = choose(&gnn_valid)?;
    let (gbdt_t, gbdt_m) = choose(&gbdt_valid)?;
    Ok(Trained {
        vs,
        net,
        gbdt,
        thresholds: (gnn_t, gbdt_t),
        valid_metrics: (gnn_m, gbdt_m),
        epochs,
        best_epoch,
        split_times,
        examples: [tf, tl, vf, vl],
        seconds: [replay_s, gnn_s, gbdt_s],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (nn::VarStore, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2], nn::Init::Const(0.0));
        (vs, w)
    }

    #[test]
    fn the_weight_average_follows_the_weights_with_a_warm_up() {
        let (vs, mut w) = store();
        let mut average = WeightAverage::new(&vs, 0.99);
        tch::no_grad(|| w.copy_(&Tensor::from_slice(&[10.0f32, -10.0])));
        average.update();
        // Step 1 decays by min(0.99, 2/11): the average moves 9/11 of the way.
        let expected = 10.0 * 9.0 / 11.0;
        average.swap();
        let got: Vec<f32> = Vec::try_from(&w).unwrap();
        assert!((f64::from(got[0]) - expected).abs() < 1e-5, "{got:?}");
        assert!((f64::from(got[1]) + expected).abs() < 1e-5, "{got:?}");
        // Swapping back restores the raw weights exactly.
        average.swap();
        assert_eq!(Vec::<f32>::try_from(&w).unwrap(), [10.0, -10.0]);
        // After many steps at the same weights the average reaches them.
        for _ in 0..2_000 {
            average.update();
        }
        average.swap();
        let got: Vec<f32> = Vec::try_from(&w).unwrap();
        assert!(
            (got[0] - 10.0).abs() < 1e-3 && (got[1] + 10.0).abs() < 1e-3,
            "{got:?}"
        );
    }

    #[test]
    fn a_weight_average_decay_outside_zero_to_one_is_refused() {
        for decay in [1.0, -0.1, f64::NAN] {
            let config = TrainConfig {
                weight_average_decay: Some(decay),
                ..TrainConfig::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("weight_average_decay"), "{err}");
        }
    }
}
