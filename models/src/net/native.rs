//! Hybrid-FraudNet's forward pass on the CPU without libtorch, for serving.
//!
//! Why it exists: on the CPU, a libtorch pass over one or two sampled subgraphs is ~300
//! small ops, and each op's fixed cost (dispatch, output allocation, bookkeeping) is a
//! few microseconds: about half of a ~1.9 ms pass on a 2-core VM is that overhead, not
//! arithmetic (docs/BENCHMARKS.md). [`NativeNet`] does the same arithmetic as the fused
//! pass ([`HybridFraudNet::forward_fused`]: one projection matmul per node type and
//! layer in the fused [`Layout`], one flat list of every edge in both directions, a
//! softmax per (message type, destination node)) in plain loops and `matrixmultiply`'s
//! sgemm, into buffers kept from one call to the next, straight from the sampler's
//! [`Batch`] (no tensors are made).
//!
//! What it promises: the same fraud probabilities as [`HybridFraudNet::predict`] up to
//! float rounding (tested on the committed artifact), for any batch
//! [`check_batch`] accepts; f32 only, no dropout, no gradients. It is a copy of the
//! parameters taken by [`HybridFraudNet::native`]: training the net afterwards does not
//! change it. libtorch stays the model's definition, its training, and its GPU path.

use std::sync::Mutex;

use fraudgraph_sampler::batch::{Batch, NO_ROW};
use fraudgraph_sampler::features::SEQ_FEATURES;
use fraudgraph_sampler::{NodeType, Relation};
use tch::{Device, Kind, Tensor, nn};

use super::{FlatEdge, HybridFraudNet, Layout, NetError, READOUT_SLOTS};
use crate::tensors::{NODE_TYPES, check_batch};

/// The epsilon of every LayerNorm of the net (tch's default, which the net is built with).
const LAYER_NORM_EPS: f32 = 1e-5;

/// The sequence feature Time2Vec encodes (`log_seconds_before_target`), as in
/// [`HybridFraudNet`]'s temporal attention.
const SEQ_AGE: usize = 1;

/// Message types: every relation in both directions.
const MESSAGE_TYPES: usize = 2 * Relation::ALL.len();

/// Most subgraphs worth putting in one [`NativeNet`] pass: a larger batch is faster run as
/// passes of this many. A pass over more gathers its projected rows from tables that
/// outgrow the caches: per subgraph ~0.78 ms in passes of 8 against ~1.16 ms in one pass
/// of 64 on a 2-core AMD VM (`cargo bench -p fraudgraph-models --bench forward`,
/// `native/8` and `native/64`, docs/BENCHMARKS.md).
pub const NATIVE_PART: usize = 8;

/// A linear layer's parameters: `y = x·Wᵀ + b`.
#[derive(Debug, Clone)]
struct Dense {
    /// `[outputs, inputs]`, row-major (libtorch's layout of a linear weight).
    weight: Vec<f32>,
    /// `[outputs]`; zeros for a linear without bias.
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    fn of(linear: &nn::Linear) -> Result<Dense, NetError> {
        let size = linear.ws.size();
        let (outputs, inputs) = (size[0] as usize, size[1] as usize);
        let bias = match &linear.bs {
            Some(b) => floats(b)?,
            None => vec![0.0; outputs],
        };
        Ok(Dense {
            weight: floats(&linear.ws)?,
            bias,
            inputs,
            outputs,
        })
    }

    /// `out ← x·Wᵀ + b` for the `n` rows of `x` (`[n, inputs]`), `out` resized to
    /// `[n, outputs]`.
    fn forward(&self, x: &[f32], n: usize, out: &mut Vec<f32>) {
        debug_assert_eq!(x.len(), n * self.inputs);
        out.clear();
        for _ in 0..n {
            out.extend_from_slice(&self.bias);
        }
        gemm_bt(n, self.inputs, self.outputs, x, &self.weight, out);
    }
}

/// A LayerNorm's affine parameters over `hidden` values.
#[derive(Debug, Clone)]
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn of(norm: &nn::LayerNorm) -> Result<Norm, NetError> {
        let param = |t: &Option<Tensor>| match t {
            Some(t) => floats(t),
            None => Err(NetError::Torch(
                "a LayerNorm without affine parameters".into(),
            )),
        };
        Ok(Norm {
            weight: param(&norm.ws)?,
            bias: param(&norm.bs)?,
        })
    }

    /// Normalizes every row of `x` (rows of `weight.len()` values) in place.
    fn apply(&self, x: &mut [f32]) {
        let h = self.weight.len();
        let mut sq = vec![0.0f32; h];
        for row in x.chunks_exact_mut(h) {
            let mean = sum4(row) / h as f32;
            for (d, v) in sq.iter_mut().zip(row.iter()) {
                *d = (v - mean) * (v - mean);
            }
            let var = sum4(&sq) / h as f32;
            let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

/// An input encoder: `ReLU(LayerNorm(Linear(x)))`.
#[derive(Debug, Clone)]
struct Encoder {
    linear: Dense,
    norm: Norm,
}

impl Encoder {
    fn of(e: &super::Encoder) -> Result<Encoder, NetError> {
        Ok(Encoder {
            linear: Dense::of(&e.linear)?,
            norm: Norm::of(&e.norm)?,
        })
    }

    /// `out ← ReLU(LayerNorm(Linear(x)))` for the `n` rows of `x`.
    fn forward(&self, x: &[f32], n: usize, out: &mut Vec<f32>) {
        self.linear.forward(x, n, out);
        self.norm.apply(out);
        relu(out);
    }
}

/// One round of message passing.
#[derive(Debug, Clone)]
struct Layer {
    /// Per node type: the fused projection of its [`Layout`] slots, `hidden → slots·hidden`.
    projection: Vec<Dense>,
    /// `[message types, hidden]`: the attention vectors, flattened over heads.
    att: Vec<f32>,
    /// Per message type: edge features → (key term, value term), no bias.
    edge: Vec<Dense>,
    /// Per node type: the update linear and its LayerNorm.
    update: Vec<Dense>,
    norm: Vec<Norm>,
}

/// Hybrid-FraudNet's parameters as plain `f32` arrays, and the forward pass over them
/// (see the module documentation). Made by [`HybridFraudNet::native`].
#[derive(Debug)]
pub struct NativeNet {
    hidden: usize,
    heads: usize,
    slope: f32,
    time_dims: usize,
    layout: Layout,
    encoders: Vec<Encoder>,
    layers: Vec<Layer>,
    readout: Dense,
    txn: Encoder,
    time_w: Vec<f32>,
    time_b: Vec<f32>,
    seq_in: Dense,
    seq_query: Dense,
    seq_key: Dense,
    seq_value: Dense,
    seq_out: Dense,
    fusion_hidden: Dense,
    fusion_out: Dense,
    /// Buffers kept from one pass to the next (a pass's largest are ~1 MB, which the
    /// allocator would otherwise map and fault in again on every call).
    scratch: Mutex<Scratch>,
}

/// The working memory of one pass; every buffer is cleared and refilled by the pass.
#[derive(Debug, Default)]
struct Scratch {
    /// `[nodes, hidden]`: node embeddings, node types stacked in order.
    x: Vec<f32>,
    /// Per node type: its rows' fused projections `[N_t, slots(t)·hidden]`.
    projected: Vec<Vec<f32>>,
    /// Per message type: its edges' terms `[E_r, 2·hidden]` (key term, value term).
    edge_terms: Vec<Vec<f32>>,
    /// Flat edges (every edge in both directions), see [`Scratch::plan`].
    flat: Vec<FlatEdge>,
    /// `[flat edges, heads]`: attention scores, then their softmax.
    score: Vec<f32>,
    /// `[groups, heads]`: each (message type, destination node) group's maximum score,
    /// then its softmax denominator.
    group_max: Vec<f32>,
    group_sum: Vec<f32>,
    /// `[nodes]`: 1 / the number of message types reaching each node (1 if none).
    reach: Vec<f32>,
    /// `[nodes, message types]`: whether a message type reaches a node.
    hits: Vec<bool>,
    /// `[nodes, hidden]`: summed messages, then their mean.
    agg: Vec<f32>,
    /// A temporary of linear layers.
    tmp: Vec<f32>,
}

impl HybridFraudNet {
    /// A copy of the parameters as a [`NativeNet`] (converted to f32 and copied to the
    /// host if they are not already), which computes [`HybridFraudNet::predict`]'s
    /// probabilities on the CPU without libtorch.
    pub fn native(&self) -> Result<NativeNet, NetError> {
        let _no_grad = tch::no_grad_guard();
        let h = self.config.hidden;
        let layout = self.layout.clone();
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let projection = layout
                    .slots
                    .iter()
                    .map(|slots| {
                        let (mut weight, mut bias) = (Vec::new(), Vec::new());
                        for &(m, role) in slots {
                            let d = Dense::of(layer.messages[m].projection(role))?;
                            weight.extend(d.weight);
                            bias.extend(d.bias);
                        }
                        Ok(Dense {
                            weight,
                            bias,
                            inputs: h,
                            outputs: slots.len() * h,
                        })
                    })
                    .collect::<Result<Vec<_>, NetError>>()?;
                let mut att = Vec::with_capacity(MESSAGE_TYPES * h);
                for mt in &layer.messages {
                    att.extend(floats(&mt.att)?);
                }
                Ok(Layer {
                    projection,
                    att,
                    edge: layer
                        .messages
                        .iter()
                        .map(|mt| Dense::of(&mt.edge))
                        .collect::<Result<_, _>>()?,
                    update: layer
                        .update
                        .iter()
                        .map(Dense::of)
                        .collect::<Result<_, _>>()?,
                    norm: layer.norm.iter().map(Norm::of).collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, NetError>>()?;
        Ok(NativeNet {
            hidden: h,
            heads: self.config.heads,
            slope: self.config.negative_slope as f32,
            time_dims: self.config.time_dims,
            layout,
            encoders: self
                .encoders
                .iter()
                .map(Encoder::of)
                .collect::<Result<_, _>>()?,
            layers,
            readout: Dense::of(&self.readout)?,
            txn: Encoder::of(&self.txn)?,
            time_w: floats(&self.time_w)?,
            time_b: floats(&self.time_b)?,
            seq_in: Dense::of(&self.seq_in)?,
            seq_query: Dense::of(&self.seq_query)?,
            seq_key: Dense::of(&self.seq_key)?,
            seq_value: Dense::of(&self.seq_value)?,
            seq_out: Dense::of(&self.seq_out)?,
            fusion_hidden: Dense::of(&self.fusion_hidden)?,
            fusion_out: Dense::of(&self.fusion_out)?,
            scratch: Mutex::new(Scratch::default()),
        })
    }
}

impl NativeNet {
    /// Fraud probabilities, one per subgraph of `batch`, as [`HybridFraudNet::predict`]
    /// computes them (up to float rounding). `batch` is checked first
    /// ([`check_batch`]): a malformed one is a [`NetError`] naming the array, not a
    /// panic. Concurrent calls take turns (one set of buffers).
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>, NetError> {
        let logits = self.logits(batch)?;
        Ok(logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect())
    }

    /// Logits, one per subgraph of `batch`, as [`HybridFraudNet::forward_t`] computes
    /// them without dropout (up to float rounding); checked as [`NativeNet::predict`].
    pub fn logits(&self, batch: &Batch) -> Result<Vec<f32>, NetError> {
        check_batch(batch)?;
        // A panic mid-pass leaves buffers that the next pass clears anyway.
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        let h = self.hidden;

        // Input encoders, node types stacked.
        let rows: [usize; NODE_TYPES] = std::array::from_fn(|t| batch.node_graph[t].len());
        let offsets: [usize; NODE_TYPES] = std::array::from_fn(|t| rows[..t].iter().sum::<usize>());
        let nodes: usize = rows.iter().sum();
        s.x.clear();
        for t in NodeType::ALL {
            let i = t.index();
            self.encoders[i].forward(&batch.node_features[i], rows[i], &mut s.tmp);
            s.x.extend_from_slice(&s.tmp);
        }
        let account = offsets[NodeType::Account.index()];
        let row_of = |x: &[f32], r: usize| x[r * h..(r + 1) * h].to_vec();
        // The skip connection of the target account's own encoded features.
        let own_account: Vec<Vec<f32>> = batch
            .target_account
            .iter()
            .map(|&r| row_of(&s.x, account + r as usize))
            .collect();

        self.plan(batch, &rows, s);
        for layer in &self.layers {
            self.messages(layer, batch, &rows, s);
            self.update(layer, &rows, &offsets, s);
        }

        let readout_in = self.readout_input(batch, &offsets, &own_account, &s.x);
        debug_assert_eq!(nodes * h, s.x.len());
        Ok(self.head(&readout_in, batch))
    }

    /// The readout's input `[B, READOUT_SLOTS·hidden]` from the final embeddings `x`: the
    /// target account's skip (`own_account`) and final embedding, the transaction's own
    /// other entities and a transfer's receiver (zeros where it has none), the mean of
    /// every node type per subgraph.
    fn readout_input(
        &self,
        batch: &Batch,
        offsets: &[usize; NODE_TYPES],
        own_account: &[Vec<f32>],
        x: &[f32],
    ) -> Vec<f32> {
        let h = self.hidden;
        let bs = batch.size;
        let account = offsets[NodeType::Account.index()];
        let slots = READOUT_SLOTS as usize;
        let mut readout_in = vec![0.0f32; bs * slots * h];
        let mut counts = vec![0usize; bs * NODE_TYPES];
        let means_at = slots - NODE_TYPES;
        for t in 0..NODE_TYPES {
            for (i, &g) in batch.node_graph[t].iter().enumerate() {
                let g = g as usize;
                counts[g * NODE_TYPES + t] += 1;
                let at = (g * slots + means_at + t) * h;
                let x = &x[(offsets[t] + i) * h..][..h];
                for (o, v) in readout_in[at..at + h].iter_mut().zip(x) {
                    *o += v;
                }
            }
        }
        for g in 0..bs {
            let part = &mut readout_in[g * slots * h..(g + 1) * slots * h];
            part[..h].copy_from_slice(&own_account[g]);
            let target = account + batch.target_account[g] as usize;
            part[h..2 * h].copy_from_slice(&x[target * h..][..h]);
            let own = NodeType::ALL[1..]
                .iter()
                .map(|t| (offsets[t.index()], batch.own_rows[t.index()][g]))
                .chain([(account, batch.counterparty_row[g])]);
            for (k, (offset, row)) in own.enumerate() {
                if row != NO_ROW {
                    let r = offset + row as usize;
                    part[(2 + k) * h..(3 + k) * h].copy_from_slice(&x[r * h..][..h]);
                }
            }
            for t in 0..NODE_TYPES {
                let n = counts[g * NODE_TYPES + t].max(1) as f32;
                for v in &mut part[(means_at + t) * h..(means_at + t + 1) * h] {
                    *v /= n;
                }
            }
        }
        readout_in
    }

    /// From the readout's input to the logits: readout, transaction encoder, temporal
    /// attention and the fusion MLP.
    fn head(&self, readout_in: &[f32], batch: &Batch) -> Vec<f32> {
        let h = self.hidden;
        let bs = batch.size;
        let mut graph = Vec::new();
        self.readout.forward(readout_in, bs, &mut graph);
        relu(&mut graph);
        let mut txn = Vec::new();
        self.txn.forward(&batch.txn_features, bs, &mut txn);
        let temporal = self.temporal(&graph, &txn, batch);

        let mut fused = Vec::with_capacity(bs * 3 * h);
        for g in 0..bs {
            fused.extend_from_slice(&graph[g * h..(g + 1) * h]);
            fused.extend_from_slice(&txn[g * h..(g + 1) * h]);
            fused.extend_from_slice(&temporal[g * h..(g + 1) * h]);
        }
        let mut hidden = Vec::new();
        self.fusion_hidden.forward(&fused, bs, &mut hidden);
        relu(&mut hidden);
        let mut logits = Vec::new();
        self.fusion_out.forward(&hidden, bs, &mut logits);
        logits
    }

    /// The batch's flat edges, their softmax groups and every node's reach, shared by all
    /// layers ([`Layout::flat_edges`], as the fused pass's plan builds them).
    fn plan(&self, batch: &Batch, rows: &[usize; NODE_TYPES], s: &mut Scratch) {
        let groups = self.layout.flat_edges(
            rows,
            |r| {
                batch.edge_index[r]
                    .iter()
                    .map(|&(src, dst)| (src as usize, dst as usize))
            },
            &mut s.flat,
            &mut s.hits,
            &mut s.reach,
        );
        s.group_max.clear();
        s.group_max.resize(groups * self.heads, f32::NEG_INFINITY);
        s.group_sum.clear();
        s.group_sum.resize(groups * self.heads, 0.0);
    }

    /// One layer's attention messages: `s.agg` ← per node, the sum over message types of
    /// the attention-weighted messages into it, times its reach (a mean over the message
    /// types that reached it).
    fn messages(&self, layer: &Layer, batch: &Batch, rows: &[usize; NODE_TYPES], s: &mut Scratch) {
        let h = self.hidden;
        let heads = self.heads;
        let dh = h / heads;
        let lay = &self.layout;
        let nodes: usize = rows.iter().sum();
        s.agg.clear();
        s.agg.resize(nodes * h, 0.0);
        if s.flat.is_empty() {
            return;
        }
        // Per node type: every slot's projection of every row.
        s.projected.resize_with(NODE_TYPES, Vec::new);
        let mut start = 0;
        for ((&n, dense), out) in rows.iter().zip(&layer.projection).zip(&mut s.projected) {
            dense.forward(&s.x[start * h..(start + n) * h], n, out);
            start += n;
        }
        // Per message type: the edge terms of its relation's edges.
        s.edge_terms.resize_with(MESSAGE_TYPES, Vec::new);
        for (m, dense) in layer.edge.iter().enumerate() {
            let r = m / 2;
            let e = batch.edge_index[r].len();
            dense.forward(&batch.edge_features[r], e, &mut s.edge_terms[m]);
        }

        // Scores a·LeakyReLU(q + k + key term) per head, and each group's maximum.
        let slope = self.slope;
        let mut terms = vec![0.0f32; h];
        s.score.clear();
        s.score.resize(s.flat.len() * heads, 0.0);
        s.group_max.fill(f32::NEG_INFINITY);
        s.group_sum.fill(0.0);
        for (f, fe) in s.flat.iter().enumerate() {
            let (src_t, dst_t) = lay.ends[fe.m];
            let q_slots = lay.slots[dst_t].len();
            let k_slots = lay.slots[src_t].len();
            let q =
                &s.projected[dst_t][(fe.to * q_slots + lay.query_slot[fe.m] as usize) * h..][..h];
            let k =
                &s.projected[src_t][(fe.from * k_slots + lay.key_slot[fe.m] as usize) * h..][..h];
            let ek = &s.edge_terms[fe.m][fe.edge * 2 * h..][..h];
            let att = &layer.att[fe.m * h..(fe.m + 1) * h];
            for ((((t, q), k), ek), a) in terms.iter_mut().zip(q).zip(k).zip(ek).zip(att) {
                let z = q + (k + ek);
                let z = if z > 0.0 { z } else { z * slope };
                *t = z * a;
            }
            for (hd, head) in terms.chunks_exact(dh).enumerate() {
                let score = sum4(head);
                s.score[f * heads + hd] = score;
                let max = &mut s.group_max[fe.group * heads + hd];
                *max = max.max(score);
            }
        }
        // Softmax over each group.
        for (f, fe) in s.flat.iter().enumerate() {
            for hd in 0..heads {
                let g = fe.group * heads + hd;
                let e = (s.score[f * heads + hd] - s.group_max[g]).exp();
                s.score[f * heads + hd] = e;
                s.group_sum[g] += e;
            }
        }
        // Messages: attention-weighted values (v + value term) into their destinations.
        for (f, fe) in s.flat.iter().enumerate() {
            let src_t = lay.ends[fe.m].0;
            let k_slots = lay.slots[src_t].len();
            let v = &s.projected[src_t]
                [(fe.from * k_slots + lay.key_slot[fe.m] as usize + 1) * h..][..h];
            let ev = &s.edge_terms[fe.m][fe.edge * 2 * h + h..][..h];
            let out = &mut s.agg[fe.dst * h..(fe.dst + 1) * h];
            for (hd, ((out, v), ev)) in out
                .chunks_exact_mut(dh)
                .zip(v.chunks_exact(dh))
                .zip(ev.chunks_exact(dh))
                .enumerate()
            {
                let alpha = s.score[f * heads + hd] / s.group_sum[fe.group * heads + hd];
                for ((o, v), e) in out.iter_mut().zip(v).zip(ev) {
                    *o += alpha * (v + e);
                }
            }
        }
        for (row, r) in s.agg.chunks_exact_mut(h).zip(&s.reach) {
            for v in row {
                *v *= r;
            }
        }
    }

    /// `x ← LayerNorm(x + GELU(Linear(mean)))` per node type, `mean` being `s.agg`.
    fn update(
        &self,
        layer: &Layer,
        rows: &[usize; NODE_TYPES],
        offsets: &[usize; NODE_TYPES],
        s: &mut Scratch,
    ) {
        let h = self.hidden;
        for t in 0..NODE_TYPES {
            let span = offsets[t] * h..(offsets[t] + rows[t]) * h;
            layer.update[t].forward(&s.agg[span.clone()], rows[t], &mut s.tmp);
            let x = &mut s.x[span];
            for (x, u) in x.iter_mut().zip(&s.tmp) {
                *x += gelu(*u);
            }
            layer.norm[t].apply(x);
        }
    }

    /// Attention of the graph + transaction query over each account's recent
    /// transactions: `[B, hidden]`, zeros for a subgraph with no history.
    fn temporal(&self, graph: &[f32], txn: &[f32], batch: &Batch) -> Vec<f32> {
        let h = self.hidden;
        let heads = self.heads;
        let dh = h / heads;
        let (bs, l) = (batch.size, batch.max_sequence);
        let mut out = vec![0.0f32; bs * h];
        if l == 0 {
            return out;
        }
        let sw = SEQ_FEATURES.len();
        let td = self.time_dims;
        // Every real sequence element of the batch, with its Time2Vec encoding.
        let mut elems = Vec::new();
        let mut owner = Vec::new();
        for g in 0..bs {
            let len = batch.sequence_len[g] as usize;
            for p in l - len..l {
                let feat = &batch.sequence[(g * l + p) * sw..][..sw];
                elems.extend_from_slice(feat);
                let age = feat[SEQ_AGE];
                for i in 0..td {
                    let v = age * self.time_w[i] + self.time_b[i];
                    elems.push(if i == 0 { v } else { v.sin() });
                }
                owner.push(g);
            }
        }
        let n = owner.len();
        if n == 0 {
            return out;
        }
        let mut input = Vec::new();
        self.seq_in.forward(&elems, n, &mut input);
        relu(&mut input);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        self.seq_key.forward(&input, n, &mut keys);
        self.seq_value.forward(&input, n, &mut values);
        let mut query_in = Vec::with_capacity(bs * 2 * h);
        for g in 0..bs {
            query_in.extend_from_slice(&graph[g * h..(g + 1) * h]);
            query_in.extend_from_slice(&txn[g * h..(g + 1) * h]);
        }
        let mut query = Vec::new();
        self.seq_query.forward(&query_in, bs, &mut query);

        let scale = 1.0 / (dh as f32).sqrt();
        let mut attended = vec![0.0f32; bs * h];
        let mut has_history = vec![false; bs];
        let mut first = 0;
        while first < n {
            let g = owner[first];
            let last = first + owner[first..].iter().take_while(|&&o| o == g).count();
            has_history[g] = true;
            let q = &query[g * h..(g + 1) * h];
            for hd in 0..heads {
                let span = hd * dh..(hd + 1) * dh;
                let scores: Vec<f32> = (first..last)
                    .map(|e| {
                        let k = &keys[e * h..(e + 1) * h];
                        span.clone().map(|i| q[i] * k[i]).sum::<f32>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = exps.iter().sum();
                let o = &mut attended[g * h..(g + 1) * h];
                for (e, w) in (first..last).zip(&exps) {
                    let v = &values[e * h..(e + 1) * h];
                    for i in span.clone() {
                        o[i] += w / total * v[i];
                    }
                }
            }
            first = last;
        }
        self.seq_out.forward(&attended, bs, &mut out);
        for (g, row) in out.chunks_exact_mut(h).enumerate() {
            if !has_history[g] {
                row.fill(0.0);
            }
        }
        out
    }
}

/// A parameter's values as f32 on the host, row-major.
fn floats(t: &Tensor) -> Result<Vec<f32>, NetError> {
    t.f_to_kind(Kind::Float)
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_view([-1]))
        .and_then(|t| Vec::<f32>::try_from(&t))
        .map_err(|e| NetError::Torch(e.to_string()))
}

fn relu(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// GELU with erf (libtorch's `gelu("none")`, not its tanh approximation).
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf in f32 as a ratio of two polynomials in x (odd over even) on [-4, 4], where
/// it is within 5e-7 of the exact value (tested against `libm::erff`); beyond ±4 it
/// keeps its value at ±4, within 2e-7 of ±1. No branches and no exp, so loops over it vectorize: `libm::erff`
/// took a quarter of a pass. The coefficients are the monomial form of the minimax
/// rational approximation that Eigen and XLA use for f32 erf.
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ]
    .iter()
    .fold(0.0f32, |acc, &c| acc * x2 + c);
    let q = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_474e-2,
    ]
    .iter()
    .fold(0.0f32, |acc, &c| acc * x2 + c);
    x * p / q
}

/// The sum of `x` in four interleaved partial sums, which the compiler keeps in one SIMD
/// register (a single running sum is a chain it may not reorder).
fn sum4(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 4];
    let chunks = x.chunks_exact(4);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for j in 0..4 {
            acc[j] += c[j];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest
}

/// `c[m, n] += a[m, k] · bᵀ`, all row-major, `b` being `[n, k]` (a linear layer's weight).
#[allow(unsafe_code)]
fn gemm_bt(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && c.len() >= m * n,
        "gemm_bt: operands shorter than {m}×{k}·({n}×{k})ᵀ"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // SAFETY: `a` is read as m×k with strides (k, 1), so at offsets below m·k; `b` as k×n
    // with strides (1, k), at offsets below n·k; `c` is written as m×n with strides (n, 1),
    // below m·n: all within the slices, as asserted above. `c` is a unique borrow, so it
    // aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            1.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sgemm wrapper against the schoolbook product.
    #[test]
    fn gemm_bt_is_a_times_b_transposed_added_to_c() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32).sin()).collect();
        let mut c = vec![1.0f32; m * n];
        gemm_bt(m, k, n, &a, &b, &mut c);
        for i in 0..m {
            for j in 0..n {
                let want = 1.0 + (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-5, "c[{i},{j}]");
            }
        }
    }

    #[test]
    fn erf_is_within_5e7_of_libm() {
        let mut worst = 0.0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 5e-7, "erf is off by {worst}");
        assert_eq!(erf(0.0), 0.0);
        // Beyond ±4: its value at ±4, within a float step or two of ±1.
        assert!((erf(9.0) - 1.0).abs() < 2e-7);
        assert_eq!(erf(-9.0), -erf(9.0));
    }

    #[test]
    fn sum4_sums_any_length() {
        for n in 0..11u32 {
            let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            assert_eq!(sum4(&x), (n * n.saturating_sub(1) / 2) as f32, "{n}");
        }
    }

    #[test]
    fn gelu_matches_its_definition_at_known_points() {
        assert_eq!(gelu(0.0), 0.0);
        // GELU(1) = 0.5·(1 + erf(1/√2)) = 0.8413447...
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
    }
}
