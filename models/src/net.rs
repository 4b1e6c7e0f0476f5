//! Hybrid-FraudNet: a relation-aware heterogeneous graph attention network fused with
//! temporal attention over the account's recent transactions.
//!
//! This module owns the model's architecture, its configuration ([`NetConfig`]), the
//! names of its parameters in a [`nn::VarStore`], and its precision switch
//! ([`Precision`]). It reads only [`BatchTensors`]; training loops, artifacts and
//! serving live elsewhere.
//!
//! The forward pass, for a batch of `B` sampled subgraphs:
//!
//! 1. **Input encoders**, one per node type: `Linear(node_width(t) → hidden)`, LayerNorm,
//!    ReLU (`enc_<type>`).
//! 2. **`layers` rounds of heterogeneous message passing**. Each of the 7 relations is used
//!    in both directions, 14 message types `layer<l>/rel_<relation>_<fwd|rev>`, each with
//!    its own query (destination), key and value (source) projections, edge-feature
//!    projection and per-head attention vector. Scores are GATv2-style,
//!    `a·LeakyReLU(q_dst + k_src + W_e e)`, normalized by a numerically stable scatter
//!    softmax over the incoming edges of each destination node; messages are the
//!    attention-weighted values `v_src + W_e' e`. Per destination type the messages are
//!    averaged over the message types that reached the node, then
//!    `x ← LayerNorm(x + Dropout(GELU(Linear(m))))` (`layer<l>/update_<type>`,
//!    `layer<l>/norm_<type>`).
//! 3. **Readout**: the target account's encoded input features (a skip past message
//!    passing) and its final embedding, the embeddings of the transaction's own
//!    device, IP, merchant and card and of a transfer's receiver (zeros when it has none),
//!    and the per-subgraph mean of every node type's embeddings, through `readout`.
//! 4. **Temporal attention** (`seq`): each sequence element's features plus a Time2Vec
//!    encoding of `log_seconds_before_target` are projected to keys and values; the query
//!    comes from the graph readout and the transaction embedding; padding is masked, and
//!    a subgraph with no history gets a zero vector.
//! 5. **Transaction encoder** (`txn`) over the 18 transaction features.
//! 6. **Fusion MLP** (`fusion`) over the three vectors: one logit per subgraph.
//!
//! Message passing is implemented twice, with the same parameters and math:
//! [`HybridFraudNet::forward_reference`] follows the description above one message type
//! at a time (~1,000 small libtorch ops per pass, whose fixed overhead dominates a small
//! batch on the CPU), and [`HybridFraudNet::forward_fused`] batches all message types of
//! a layer into a few large ops. [`HybridFraudNet::forward_t`] and
//! [`HybridFraudNet::predict`] use the fused pass, except for large CPU batches. A third
//! implementation, [`NativeNet`] (`net/native.rs`, made by [`HybridFraudNet::native`]),
//! runs the fused pass's arithmetic on the CPU without libtorch, for serving.

use std::panic::{AssertUnwindSafe, catch_unwind};

use fraudgraph_sampler::features::{self, EDGE_FEATURES, SEQ_FEATURES, TXN_FEATURES};
use fraudgraph_sampler::{NodeType, Relation};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::inference_mode::InferenceMode;
use crate::tensors::{BatchTensors, NODE_TYPES};

mod native;
pub use native::{NATIVE_PART, NativeNet};

/// Hidden-sized vectors the readout concatenates: the target account's skip and final
/// embedding, the transaction's other own entities (device, IP, merchant, card), a
/// transfer's receiver, and the mean of every node type.
const READOUT_SLOTS: i64 = 2 + (NODE_TYPES as i64 - 1) + 1 + NODE_TYPES as i64;

/// Errors of building the model or running it on a batch.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration cannot describe a model.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// An array of a [`fraudgraph_sampler::batch::Batch`] has the wrong length for its
    /// row count and feature width.
    #[error("batch {what}: expected {expected} values, got {got}")]
    Length {
        /// Which array.
        what: String,
        /// The length the row count and feature width call for.
        expected: usize,
        /// The length it has.
        got: usize,
    },
    /// An index points past the rows it indexes.
    #[error("batch {what}: index {index} out of range for {rows} rows")]
    IndexOutOfRange {
        /// Which index array.
        what: String,
        /// The largest index found.
        index: usize,
        /// The rows it indexes.
        rows: usize,
    },
    /// A tensor of a [`BatchTensors`] has the wrong shape.
    #[error("tensor {what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The shape the model needs.
        expected: Vec<i64>,
        /// The shape it has.
        got: Vec<i64>,
    },
    /// The batch is on another device than the model.
    #[error("batch is on {batch:?}, model on {model:?}")]
    Device {
        /// The model's device.
        model: Device,
        /// The batch's device.
        batch: Device,
    },
    /// The batch's float tensors are of another kind than the model's parameters.
    #[error("batch features are {batch:?}, model parameters {model:?}")]
    Kind {
        /// The model's parameter kind.
        model: Kind,
        /// The batch's feature kind.
        batch: Kind,
    },
    /// libtorch failed while running the model (e.g. CUDA out of memory).
    #[error("libtorch: {0}")]
    Torch(String),
}

/// The model's hyper-parameters. Stored with a trained model; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Width of every node, sequence and transaction embedding.
    pub hidden: usize,
    /// Attention heads in message passing and temporal attention; divides `hidden`.
    pub heads: usize,
    /// Rounds of message passing (hops a message can travel).
    pub layers: usize,
    /// Dropout on attention weights and hidden activations while training.
    pub dropout: f64,
    /// Dimensions of the Time2Vec encoding of a sequence element's age (1 linear, the
    /// rest periodic); at least 1.
    pub time_dims: usize,
    /// Negative slope of the LeakyReLU in attention scores.
    pub negative_slope: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            hidden: 64,
            heads: 4,
            layers: 3,
            dropout: 0.1,
            time_dims: 8,
            negative_slope: 0.2,
        }
    }
}

impl NetConfig {
    /// Checks that the numbers describe a model.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |m: String| Err(NetError::Config(m));
        if self.hidden == 0 || self.heads == 0 || self.time_dims == 0 {
            return bad(format!(
                "hidden ({}), heads ({}) and time_dims ({}) must be positive",
                self.hidden, self.heads, self.time_dims
            ));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "heads ({}) must divide hidden ({})",
                self.heads, self.hidden
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if !(0.0..1.0).contains(&self.negative_slope) {
            return bad(format!(
                "negative_slope {} is not in [0, 1)",
                self.negative_slope
            ));
        }
        Ok(())
    }
}

/// The numeric precision the model's parameters and inputs run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: training, and inference on CPU.
    F32,
    /// IEEE half precision: inference on CUDA.
    F16,
    /// bfloat16: inference on CUDA.
    Bf16,
}

impl Precision {
    /// The precision of parameters of `kind`; f32 for any kind other than the two halves.
    pub fn of(kind: Kind) -> Precision {
        match kind {
            Kind::Half => Precision::F16,
            Kind::BFloat16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    /// Its lowercase name, as configurations and reports spell it (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The libtorch kind of this precision.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// Converts every parameter of `vs` to `precision`, in place. Models built on `vs` see
/// the change (tch swaps the tensors' data); [`HybridFraudNet::predict`] then converts its
/// inputs to match. Half precision is meant for inference on CUDA; many CPU kernels do
/// not support it.
pub fn set_precision(vs: &mut nn::VarStore, precision: Precision) {
    match precision {
        Precision::F32 => vs.float(),
        Precision::F16 => vs.half(),
        Precision::Bf16 => vs.bfloat16(),
    }
}

/// A short lowercase name of a node type, used in parameter names (`enc_account`).
pub fn node_type_name(t: NodeType) -> &'static str {
    match t {
        NodeType::Account => "account",
        NodeType::Device => "device",
        NodeType::Ip => "ip",
        NodeType::Merchant => "merchant",
        NodeType::Card => "card",
    }
}

/// The parameter-path component of a message type: `rel_<relation name>_<fwd|rev>`,
/// e.g. `rel_used_device_fwd` (account → device) or `rel_used_device_rev` (device →
/// account). Inside layer `l` its parameters are named `layer<l>.rel_..._fwd.<...>`.
pub fn message_type_name(relation: Relation, reverse: bool) -> String {
    format!(
        "rel_{}_{}",
        relation.name(),
        if reverse { "rev" } else { "fwd" }
    )
}

/// Linear → LayerNorm → ReLU.
#[derive(Debug)]
struct Encoder {
    linear: nn::Linear,
    norm: nn::LayerNorm,
}

impl Encoder {
    fn new(p: &nn::Path<'_>, input: i64, hidden: i64) -> Encoder {
        Encoder {
            linear: nn::linear(p / "linear", input, hidden, Default::default()),
            norm: nn::layer_norm(p / "norm", vec![hidden], Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.linear).apply(&self.norm).relu()
    }
}

/// One relation used in one direction inside one layer.
#[derive(Debug)]
struct MessageType {
    relation: usize,
    reverse: bool,
    src: usize,
    dst: usize,
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    /// Edge features → (key term, value term), `[E, 2·hidden]`.
    edge: nn::Linear,
    /// Per-head attention vector, `[heads, hidden/heads]`.
    att: Tensor,
}

impl MessageType {
    /// The projection that computes `role` for this message type.
    fn projection(&self, role: Role) -> &nn::Linear {
        match role {
            Role::Query => &self.query,
            Role::Key => &self.key,
            Role::Value => &self.value,
        }
    }
}

/// One round of message passing.
#[derive(Debug)]
struct Layer {
    messages: Vec<MessageType>,
    update: Vec<nn::Linear>,
    norm: Vec<nn::LayerNorm>,
}

/// What a slot of a fused per-node-type projection computes for its message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Query,
    Key,
    Value,
}

/// Where every message type's projections sit in the fused projections of a layer.
///
/// Per node type `t`, one `Linear(hidden → slots(t)·hidden)` (the message types' own
/// weights, concatenated) computes for each row the queries of every message type into
/// `t` (first, one slot each) and the key and value of every message type out of `t` (a
/// key slot, then its value slot). Viewing the output `[N_t, slots(t)·hidden]` as
/// `[N_t·slots(t), hidden]` and stacking the node types in order gives one table in which
/// the projection of row `n` of type `t` in slot `j` is row `base(t) + n·slots(t) + j`.
#[derive(Debug, Clone)]
struct Layout {
    /// Per node type: (message type, role) of each slot, in column order.
    slots: Vec<Vec<(usize, Role)>>,
    /// Per node type: how many message types end there (its query slots, first).
    queries: Vec<i64>,
    /// Per message type: (source, destination) node type.
    ends: Vec<(usize, usize)>,
    /// Per message type: the slot of its query in its destination type, which is also
    /// its index among that type's queries.
    query_slot: Vec<i64>,
    /// Per message type: the slot of its key in its source type (its value is next).
    key_slot: Vec<i64>,
}

impl Layout {
    fn new() -> Layout {
        let ends: Vec<(usize, usize)> = HybridFraudNet::message_types()
            .into_iter()
            .map(|(r, reverse)| {
                let (s, d) = r.endpoints();
                if reverse {
                    (d.index(), s.index())
                } else {
                    (s.index(), d.index())
                }
            })
            .collect();
        let mut slots = vec![Vec::new(); NODE_TYPES];
        let mut query_slot = vec![0; ends.len()];
        let mut key_slot = vec![0; ends.len()];
        for (m, &(_, dst)) in ends.iter().enumerate() {
            query_slot[m] = slots[dst].len() as i64;
            slots[dst].push((m, Role::Query));
        }
        let queries = slots.iter().map(|s| s.len() as i64).collect();
        for (m, &(src, _)) in ends.iter().enumerate() {
            key_slot[m] = slots[src].len() as i64;
            slots[src].push((m, Role::Key));
            slots[src].push((m, Role::Value));
        }
        Layout {
            slots,
            queries,
            ends,
            query_slot,
            key_slot,
        }
    }
}

/// One edge of a batch used in one direction ([`Layout::flat_edges`]): message type `m`
/// from row `from` of its source type to row `to` of its destination type; edge `edge` of
/// its relation.
#[derive(Debug, Clone, Copy)]
struct FlatEdge {
    m: usize,
    from: usize,
    to: usize,
    edge: usize,
    /// Its softmax group, (message type, destination node), numbered densely: the query
    /// slots of every node, node types in order.
    group: usize,
    /// Its destination's stacked row (node types stacked in order).
    dst: usize,
}

impl Layout {
    /// Every edge of a batch in both directions, as both the fused and the native pass
    /// walk them: relations in order, each relation's edges in order, forward then
    /// reverse (flat edge `2g + d`), into `flat`; every stacked node's reach (1 / the
    /// number of message types with an edge into it, 1 if none) into `reach`. Returns
    /// how many softmax groups there are. `rows`: rows per node type; `edges(r)`:
    /// relation `r`'s (source row, destination row) pairs; `hits` is scratch.
    fn flat_edges<I: IntoIterator<Item = (usize, usize)>>(
        &self,
        rows: &[usize],
        mut edges: impl FnMut(usize) -> I,
        flat: &mut Vec<FlatEdge>,
        hits: &mut Vec<bool>,
        reach: &mut Vec<f32>,
    ) -> usize {
        let types = self.ends.len();
        let mut node_offset = Vec::with_capacity(rows.len());
        let mut group_base = Vec::with_capacity(rows.len());
        let (mut nodes, mut groups) = (0, 0);
        for (&n, &q) in rows.iter().zip(&self.queries) {
            node_offset.push(nodes);
            group_base.push(groups);
            nodes += n;
            groups += n * q as usize;
        }
        flat.clear();
        hits.clear();
        hits.resize(nodes * types, false);
        for r in 0..types / 2 {
            for (edge, (src, dst)) in edges(r).into_iter().enumerate() {
                // Forward, the message goes from the edge's source row to its destination
                // row; reverse, the other way.
                for (m, from, to) in [(2 * r, src, dst), (2 * r + 1, dst, src)] {
                    let dst_t = self.ends[m].1;
                    let row = node_offset[dst_t] + to;
                    hits[row * types + m] = true;
                    flat.push(FlatEdge {
                        m,
                        from,
                        to,
                        edge,
                        group: group_base[dst_t]
                            + to * self.queries[dst_t] as usize
                            + self.query_slot[m] as usize,
                        dst: row,
                    });
                }
            }
        }
        reach.clear();
        reach.extend(
            hits.chunks_exact(types)
                .map(|h| 1.0 / h.iter().filter(|&&x| x).count().max(1) as f32),
        );
        groups
    }
}

/// The batch-dependent indices of the fused forward pass, built once per pass and shared
/// by every layer. Node embeddings are stacked, `[nodes, hidden]`, node types in order.
struct Plan {
    /// Per node type: rows `N_t`.
    rows: Vec<i64>,
    /// All rows.
    nodes: i64,
    /// Per node type: its first stacked row.
    offsets: Vec<i64>,
    /// The flat edge list; `None` when the batch has no edges at all.
    edges: Option<EdgePlan>,
    /// `[nodes, 1]`: 1 / the number of message types reaching each node (1 if none).
    reach: Tensor,
}

/// Every edge of every relation, used in both directions: flat edge `2g + d` is stacked
/// edge `g` (the relations' edges concatenated in order) in direction `d` (0 forward, 1
/// reverse), of message type `2·relation + d`.
struct EdgePlan {
    /// Stacked edges `E`; there are `2E` flat edges.
    count: i64,
    /// Per relation: its first stacked edge.
    offsets: Vec<i64>,
    /// `[2E]`: the [`Layout`] table row of each flat edge's destination query.
    query: Tensor,
    /// `[2E]`: the table row of each flat edge's source key.
    key: Tensor,
    /// `[2E]`: the table row of each flat edge's source value.
    value: Tensor,
    /// `[2E·heads]`: the softmax slot of each flat edge's score in each head,
    /// `group·heads + head`, where a flat edge's group, (message type, destination node),
    /// is numbered densely (the query slots of all nodes).
    group: Tensor,
    /// How many groups there are.
    groups: i64,
    /// `[hidden / heads]` ones: per-head sums as a matrix-vector product.
    ones: Tensor,
    /// `[2E]`: the stacked row of each flat edge's destination.
    dst: Tensor,
    /// `[2E]`: each flat edge's message type.
    message: Tensor,
}

/// The projection, attention and edge parameters of every layer, concatenated from the
/// message types' own (differentiable: training through them reaches every message
/// type's parameters). Training builds them on every pass, so a change to the parameters
/// is seen at once; [`HybridFraudNet::predict`] reuses them while no parameter has
/// changed ([`WeightsCache`]).
struct FusedWeights {
    /// Per layer, per node type: the weight `[slots·hidden, hidden]` and bias
    /// `[slots·hidden]` of its [`Layout`] slots (views of one concatenation).
    projection: Vec<Vec<(Tensor, Tensor)>>,
    /// `[layers, message types, hidden]`: the attention vectors, flattened over heads.
    att: Tensor,
    /// Per layer, per key|value term, per relation: `[edge features, direction · hidden]`,
    /// the transposed key- (or value-) term rows of the relation's forward then reverse
    /// edge projection.
    edge: Vec<Tensor>,
}

/// The [`FusedWeights`] of the last [`HybridFraudNet::predict`], with the address and
/// version counter of every parameter they were built from: libtorch bumps a tensor's
/// version on every in-place write (an optimizer step, loading weights) and changing
/// its precision or device gives it new storage, so an equal stamp means the weights
/// are still the parameters'.
struct CachedWeights {
    stamp: Vec<(usize, i64)>,
    weights: FusedWeights,
}

/// Where [`HybridFraudNet::predict`] keeps its [`CachedWeights`]. Concatenating them is
/// ~120 small libtorch ops, about a tenth of a small inference pass on the CPU.
#[derive(Default)]
struct WeightsCache(std::sync::Mutex<Option<CachedWeights>>);

impl std::fmt::Debug for WeightsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeightsCache")
    }
}

/// `t` with dropout `p` when training; `t` itself otherwise.
fn dropout(t: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        t.dropout(p, true)
    } else {
        t
    }
}

/// Exclusive prefix sums.
fn offsets(counts: impl IntoIterator<Item = i64>) -> Vec<i64> {
    counts
        .into_iter()
        .scan(0, |acc, c| {
            let start = *acc;
            *acc += c;
            Some(start)
        })
        .collect()
}

/// Hybrid-FraudNet on a [`nn::Path`]: see the module documentation for the architecture
/// and parameter names. Its device and precision are those of the path's var store.
#[derive(Debug)]
pub struct HybridFraudNet {
    config: NetConfig,
    layout: Layout,
    encoders: Vec<Encoder>,
    layers: Vec<Layer>,
    readout: nn::Linear,
    txn: Encoder,
    time_w: Tensor,
    time_b: Tensor,
    seq_in: nn::Linear,
    seq_query: nn::Linear,
    seq_key: nn::Linear,
    seq_value: nn::Linear,
    seq_out: nn::Linear,
    fusion_hidden: nn::Linear,
    fusion_out: nn::Linear,
    cache: WeightsCache,
}

impl HybridFraudNet {
    /// Creates the model's parameters under `p` (initialized from libtorch's RNG, so
    /// `tch::manual_seed` makes them reproducible).
    pub fn new(p: &nn::Path<'_>, config: &NetConfig) -> Result<HybridFraudNet, NetError> {
        config.validate()?;
        let h = config.hidden as i64;
        let heads = config.heads as i64;
        let dh = h / heads;
        let ew = EDGE_FEATURES.len() as i64;
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };

        let encoders = NodeType::ALL
            .iter()
            .map(|&t| {
                let name = format!("enc_{}", node_type_name(t));
                Encoder::new(&(p / name), features::node_width(t) as i64, h)
            })
            .collect();

        let layers = (0..config.layers)
            .map(|l| {
                let lp = p / format!("layer{l}");
                let mut messages = Vec::with_capacity(2 * Relation::ALL.len());
                for r in Relation::ALL {
                    for reverse in [false, true] {
                        let (mut src, mut dst) = r.endpoints();
                        if reverse {
                            std::mem::swap(&mut src, &mut dst);
                        }
                        let mp = &lp / message_type_name(r, reverse);
                        messages.push(MessageType {
                            relation: r.index(),
                            reverse,
                            src: src.index(),
                            dst: dst.index(),
                            query: nn::linear(&mp / "query", h, h, Default::default()),
                            key: nn::linear(&mp / "key", h, h, Default::default()),
                            value: nn::linear(&mp / "value", h, h, Default::default()),
                            edge: nn::linear(&mp / "edge", ew, 2 * h, no_bias),
                            att: mp.var(
                                "att",
                                &[heads, dh],
                                nn::Init::Randn {
                                    mean: 0.0,
                                    stdev: 1.0 / (dh as f64).sqrt(),
                                },
                            ),
                        });
                    }
                }
                let update = NodeType::ALL
                    .iter()
                    .map(|&t| {
                        let name = format!("update_{}", node_type_name(t));
                        nn::linear(&lp / name, h, h, Default::default())
                    })
                    .collect();
                let norm = NodeType::ALL
                    .iter()
                    .map(|&t| {
                        let name = format!("norm_{}", node_type_name(t));
                        nn::layer_norm(&lp / name, vec![h], Default::default())
                    })
                    .collect();
                Layer {
                    messages,
                    update,
                    norm,
                }
            })
            .collect();

        let sp = p / "seq";
        let td = config.time_dims as i64;
        Ok(HybridFraudNet {
            config: config.clone(),
            layout: Layout::new(),
            encoders,
            layers,
            readout: nn::linear(p / "readout", READOUT_SLOTS * h, h, Default::default()),
            txn: Encoder::new(&(p / "txn"), TXN_FEATURES.len() as i64, h),
            time_w: sp.var(
                "time_w",
                &[td],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            time_b: sp.var(
                "time_b",
                &[td],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            seq_in: nn::linear(
                &sp / "input",
                SEQ_FEATURES.len() as i64 + td,
                h,
                Default::default(),
            ),
            seq_query: nn::linear(&sp / "query", 2 * h, h, Default::default()),
            seq_key: nn::linear(&sp / "key", h, h, Default::default()),
            seq_value: nn::linear(&sp / "value", h, h, Default::default()),
            seq_out: nn::linear(&sp / "out", h, h, Default::default()),
            fusion_hidden: nn::linear(p / "fusion" / "hidden", 3 * h, h, Default::default()),
            fusion_out: nn::linear(p / "fusion" / "out", h, 1, Default::default()),
            cache: WeightsCache::default(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The device of the model's parameters.
    pub fn device(&self) -> Device {
        self.fusion_out.ws.device()
    }

    /// The kind (precision) of the model's parameters.
    pub fn kind(&self) -> Kind {
        self.fusion_out.ws.kind()
    }

    /// Logits `[B]`, one per subgraph, with dropout when `train`. The batch must be on
    /// the model's device and of its kind; shapes are checked first
    /// ([`NetError::Shape`]), and a libtorch failure (e.g. CUDA out of memory) is
    /// [`NetError::Torch`] rather than a panic.
    ///
    /// This runs the fused forward pass ([`HybridFraudNet::forward_fused`]), except for
    /// large batches on the CPU (more than 8,192 edges, about 30 subgraphs of the default
    /// sampler), where the reference pass ([`HybridFraudNet::forward_reference`]) is as
    /// fast or faster; the two give the same logits up to float rounding, and both are
    /// differentiable.
    pub fn forward_t(&self, batch: &BatchTensors, train: bool) -> Result<Tensor, NetError> {
        self.check(batch)?;
        guarded(|| self.forward_fast(batch, train))
    }

    /// Logits as [`HybridFraudNet::forward_t`], always through the fused pass: per layer,
    /// one projection matmul per node type with the concatenated weights of every message
    /// type touching it, one flat list of the edges of all 14 message types, one scatter
    /// softmax over (message type, destination) groups and one scatter-add; the index
    /// tensors are built once per pass. About 200 libtorch ops instead of the reference's
    /// ~1,000, so several times faster on small batches, where per-op overhead dominates.
    /// It is differentiable, its weights are concatenated from the parameters on every
    /// pass (never stale), and dropout draws from the same distribution as the
    /// reference's.
    pub fn forward_fused(&self, batch: &BatchTensors, train: bool) -> Result<Tensor, NetError> {
        self.check(batch)?;
        guarded(|| self.forward_fused_unchecked(batch, train))
    }

    /// Logits as [`HybridFraudNet::forward_t`] (the same up to float rounding), computed
    /// the straightforward way: every message type of every layer projected, scored,
    /// normalized and aggregated on its own (~20 small libtorch ops each). Several times
    /// slower on small batches; the readable definition of the model, the reference the
    /// fused pass is tested against, and what `forward_t` runs for large CPU batches.
    pub fn forward_reference(&self, batch: &BatchTensors, train: bool) -> Result<Tensor, NetError> {
        self.check(batch)?;
        guarded(|| self.forward_unchecked(batch, train))
    }

    /// Fraud probabilities `[B]` (f32), without gradients and without dropout, as
    /// [`HybridFraudNet::forward_t`] computes them. The batch's float tensors are
    /// converted to the model's precision first if needed. The fused pass's concatenated
    /// weights are kept from one call to the next while no parameter has changed (in
    /// place, in precision or in device), which saves ~120 small libtorch ops per call.
    /// Runs in libtorch's inference mode ([`crate::inference_mode`]): the returned tensor
    /// can be read and used in new computations, but not modified in place or trained on.
    pub fn predict(&self, batch: &BatchTensors) -> Result<Tensor, NetError> {
        let _no_grad = tch::no_grad_guard();
        // Skips autograd's per-op bookkeeping; what it creates never reaches training
        // (see `crate::inference_mode`).
        let _inference = InferenceMode::enter();
        let kind = self.kind();
        let converted;
        let batch = if batch.kind() == kind {
            batch
        } else {
            converted = batch.to_kind(kind);
            &converted
        };
        self.check(batch)?;
        let logits = guarded(|| {
            if self.leaves_to_reference(batch) {
                return self.forward_unchecked(batch, false);
            }
            // A panic below leaves the cache as it was, so a poisoned lock is still valid.
            let mut cache = self.cache.0.lock().unwrap_or_else(|e| e.into_inner());
            let stamp = self.stamp();
            if cache.as_ref().is_none_or(|c| c.stamp != stamp) {
                let weights = self.fused_weights();
                *cache = Some(CachedWeights { stamp, weights });
            }
            self.forward_fused_with(batch, false, cache.as_ref().map(|c| &c.weights))
        })?;
        // The sigmoid in f32: in half precision, scores near 0 or 1 would round into ties
        // (bf16 keeps 8 significant bits), and a ranking of fraud scores lives up there.
        Ok(logits.to_kind(Kind::Float).sigmoid())
    }

    /// The address and version of every parameter [`HybridFraudNet::fused_weights`]
    /// reads, in a fixed order.
    fn stamp(&self) -> Vec<(usize, i64)> {
        let mut stamp = Vec::with_capacity(self.layers.len() * self.layout.ends.len() * 8);
        for layer in &self.layers {
            for mt in &layer.messages {
                for linear in [&mt.query, &mt.key, &mt.value, &mt.edge] {
                    stamp.push(&linear.ws);
                    stamp.extend(linear.bs.as_ref());
                }
                stamp.push(&mt.att);
            }
        }
        stamp
            .into_iter()
            .map(|t| (t.data_ptr() as usize, t.internal_version()))
            .collect()
    }

    /// Checks devices, kinds and shapes of `batch` against the model.
    fn check(&self, b: &BatchTensors) -> Result<(), NetError> {
        let (model, kind) = (self.device(), self.kind());
        let expect = |what: &str, t: &Tensor, expected: &[i64]| {
            if t.device() != model {
                return Err(NetError::Device {
                    model,
                    batch: t.device(),
                });
            }
            if t.size() != expected {
                return Err(NetError::Shape {
                    what: what.to_string(),
                    expected: expected.to_vec(),
                    got: t.size(),
                });
            }
            Ok(())
        };
        let float = |t: &Tensor| {
            if t.kind() == kind {
                Ok(())
            } else {
                Err(NetError::Kind {
                    model: kind,
                    batch: t.kind(),
                })
            }
        };
        let len = |t: &Tensor| t.size().first().copied().unwrap_or(-1);
        let bs = b.size;
        for t in NodeType::ALL {
            let i = t.index();
            let rows = len(&b.node_graph[i]);
            expect(&format!("node_graph[{t:?}]"), &b.node_graph[i], &[rows])?;
            expect(
                &format!("node_features[{t:?}]"),
                &b.node_features[i],
                &[rows, features::node_width(t) as i64],
            )?;
            float(&b.node_features[i])?;
        }
        for r in Relation::ALL {
            let i = r.index();
            let e = b.edge_index[i].size().get(1).copied().unwrap_or(-1);
            expect(&format!("edge_index[{r:?}]"), &b.edge_index[i], &[2, e])?;
            expect(
                &format!("edge_features[{r:?}]"),
                &b.edge_features[i],
                &[e, EDGE_FEATURES.len() as i64],
            )?;
            float(&b.edge_features[i])?;
        }
        expect("target_account", &b.target_account, &[bs])?;
        for t in NodeType::ALL {
            expect(&format!("own_rows[{t:?}]"), &b.own_rows[t.index()], &[bs])?;
        }
        expect("counterparty_row", &b.counterparty_row, &[bs])?;
        expect(
            "txn_features",
            &b.txn_features,
            &[bs, TXN_FEATURES.len() as i64],
        )?;
        float(&b.txn_features)?;
        expect(
            "sequence",
            &b.sequence,
            &[bs, b.max_sequence, SEQ_FEATURES.len() as i64],
        )?;
        float(&b.sequence)?;
        expect("sequence_len", &b.sequence_len, &[bs])?;
        Ok(())
    }

    fn forward_unchecked(&self, b: &BatchTensors, train: bool) -> Tensor {
        let mut x: Vec<Tensor> = self
            .encoders
            .iter()
            .zip(&b.node_features)
            .map(|(enc, f)| enc.forward(f))
            .collect();
        let reach = Self::inverse_reach(b, (x[0].kind(), x[0].device()));
        // The target account's own encoded features, before any message passing: a skip
        // connection to the readout, so its own statistics are not diluted by 3 rounds of
        // neighbourhood averaging.
        let own_account = x[NodeType::Account.index()].index_select(0, &b.target_account);
        for layer in &self.layers {
            x = self.message_passing(layer, &x, &reach, b, train);
        }

        // Readout: the target account, the transaction's own other entities, and the mean
        // of each node type per subgraph.
        let opts = (x[0].kind(), x[0].device());
        let mut parts = vec![
            own_account,
            x[NodeType::Account.index()].index_select(0, &b.target_account),
        ];
        let own_rows = b.own_rows[1..].iter().map(|own| (own, own.size()[0]));
        let types = NodeType::ALL[1..].iter().chain([&NodeType::Account]);
        for (t, own) in types.zip(own_rows.chain([(&b.counterparty_row, b.size)])) {
            let xt = &x[t.index()];
            parts.push(if xt.size()[0] == 0 {
                Tensor::zeros([b.size, xt.size()[1]], opts)
            } else {
                let mask = own.0.ge(0).to_kind(opts.0).unsqueeze(1);
                xt.index_select(0, &own.0.clamp_min(0)) * mask
            });
        }
        for (xt, graph) in x.iter().zip(&b.node_graph) {
            let h = xt.size()[1];
            let sum = Tensor::zeros([b.size, h], opts).index_add(0, graph, xt);
            let count = Tensor::zeros([b.size], opts)
                .index_add(0, graph, &Tensor::ones([xt.size()[0]], opts))
                .clamp_min(1.0);
            parts.push(sum / count.unsqueeze(1));
        }
        self.head(Tensor::cat(&parts, 1), b, train)
    }

    /// From the readout's input to the logits: readout, transaction encoder, temporal
    /// attention and the fusion MLP.
    fn head(&self, readout: Tensor, b: &BatchTensors, train: bool) -> Tensor {
        let graph = readout.apply(&self.readout).relu();
        let txn = self.txn.forward(&b.txn_features);
        let temporal = self.temporal(&graph, &txn, b, train);

        Tensor::cat(&[graph, txn, temporal], 1)
            .apply(&self.fusion_hidden)
            .relu()
            .dropout(self.config.dropout, train)
            .apply(&self.fusion_out)
            .squeeze_dim(1)
    }

    /// Per node type `[N_t, 1]`: 1 / the number of message types with an edge into each
    /// node (1 for a node none reaches), so that summed messages become a mean.
    fn inverse_reach(b: &BatchTensors, opts: (Kind, Device)) -> Vec<Tensor> {
        let mut reach: Vec<Tensor> = b
            .node_graph
            .iter()
            .map(|g| Tensor::zeros([g.size()[0]], opts))
            .collect();
        for (r, reverse) in Self::message_types() {
            let index = &b.edge_index[r.index()];
            let e = index.size()[1];
            if e == 0 {
                continue;
            }
            let (src, dst) = r.endpoints();
            let (t, row) = if reverse { (src, 0) } else { (dst, 1) };
            let hit = Tensor::zeros_like(&reach[t.index()])
                .index_add(0, &index.get(row), &Tensor::ones([e], opts))
                .clamp_max(1.0);
            reach[t.index()] += hit;
        }
        reach
            .into_iter()
            .map(|n| n.clamp_min(1.0).reciprocal().unsqueeze(1))
            .collect()
    }

    /// One round of relation-aware attention message passing over all 14 message types;
    /// `reach` is [`HybridFraudNet::inverse_reach`].
    fn message_passing(
        &self,
        layer: &Layer,
        x: &[Tensor],
        reach: &[Tensor],
        b: &BatchTensors,
        train: bool,
    ) -> Vec<Tensor> {
        let h = self.config.hidden as i64;
        let heads = self.config.heads as i64;
        let dh = h / heads;
        let slope = self.config.negative_slope;
        let opts = (x[0].kind(), x[0].device());
        let mut sums: Vec<Option<Tensor>> = (0..NODE_TYPES).map(|_| None).collect();

        for m in &layer.messages {
            let index = &b.edge_index[m.relation];
            let e = index.size()[1];
            if e == 0 {
                continue;
            }
            let (src, dst) = if m.reverse {
                (index.get(1), index.get(0))
            } else {
                (index.get(0), index.get(1))
            };
            let n_dst = x[m.dst].size()[0];
            // Project nodes, then gather per edge: a node has several edges.
            let edge = b.edge_features[m.relation].apply(&m.edge).chunk(2, 1);
            let q = x[m.dst].apply(&m.query).index_select(0, &dst);
            let k = x[m.src].apply(&m.key).index_select(0, &src) + &edge[0];
            let z = (q + k).view([e, heads, dh]);
            let z = z.maximum(&(&z * slope)); // LeakyReLU with the configured slope.
            let score = (z * &m.att).sum_dim_intlist(-1, false, None::<Kind>); // [E, heads]

            let alpha = scatter_softmax(&score, &dst, n_dst).dropout(self.config.dropout, train);

            let v =
                (x[m.src].apply(&m.value).index_select(0, &src) + &edge[1]).view([e, heads, dh]);
            let msg = (v * alpha.unsqueeze(-1)).view([e, h]);
            let agg = Tensor::zeros([n_dst, h], opts).index_add(0, &dst, &msg);
            sums[m.dst] = Some(match sums[m.dst].take() {
                Some(s) => s + agg,
                None => agg,
            });
        }

        x.iter()
            .enumerate()
            .map(|(t, xt)| {
                let mean = match &sums[t] {
                    Some(s) => s * &reach[t],
                    None => xt.zeros_like(),
                };
                let update = mean
                    .apply(&layer.update[t])
                    .gelu("none")
                    .dropout(self.config.dropout, train);
                (xt + update).apply(&layer.norm[t])
            })
            .collect()
    }

    /// Attention of the graph + transaction query over the account's recent
    /// transactions: `[B, hidden]`, zeros for a subgraph with no history.
    fn temporal(&self, graph: &Tensor, txn: &Tensor, b: &BatchTensors, train: bool) -> Tensor {
        let h = self.config.hidden as i64;
        let heads = self.config.heads as i64;
        let dh = h / heads;
        let (bs, l) = (b.size, b.max_sequence);
        let opts = (graph.kind(), graph.device());
        if l == 0 {
            return Tensor::zeros([bs, h], opts);
        }

        // Time2Vec of log_seconds_before_target: one linear term, the rest periodic.
        let age = b.sequence.select(2, 1).unsqueeze(-1); // [B, L, 1]
        let t2v = age * &self.time_w + &self.time_b; // [B, L, T]
        let td = self.config.time_dims as i64;
        let time = Tensor::cat(&[t2v.narrow(2, 0, 1), t2v.narrow(2, 1, td - 1).sin()], 2);
        let elems = Tensor::cat(&[&b.sequence, &time], 2)
            .apply(&self.seq_in)
            .relu(); // [B, L, h]

        let split = |t: Tensor| t.view([bs, l, heads, dh]).transpose(1, 2); // [B, H, L, dh]
        let keys = split(elems.apply(&self.seq_key));
        let values = split(elems.apply(&self.seq_value));
        let query = Tensor::cat(&[graph, txn], 1)
            .apply(&self.seq_query)
            .view([bs, heads, 1, dh]);
        let scores = query.matmul(&keys.transpose(-1, -2)) / (dh as f64).sqrt(); // [B, H, 1, L]

        // Right-aligned: position p is real when p >= L - len.
        let len = &b.sequence_len;
        let positions = Tensor::arange(l, (Kind::Int64, len.device()));
        let padding = positions
            .unsqueeze(0)
            .lt_tensor(&(len.neg() + l).unsqueeze(1))
            .view([bs, 1, 1, l]);
        // A large finite negative (fits f16): an all-padding row gives a finite uniform
        // softmax instead of NaN, and is zeroed below.
        let attn = scores
            .masked_fill(&padding, -1e4)
            .softmax(-1, None::<Kind>)
            .dropout(self.config.dropout, train);
        let has_history = len.gt(0).to_kind(opts.0).unsqueeze(1);
        attn.matmul(&values).view([bs, h]).apply(&self.seq_out) * has_history
    }

    /// The message types of each layer as `(relation, reverse)`, in the order their
    /// parameters are created: every relation forward, then reverse.
    pub fn message_types() -> Vec<(Relation, bool)> {
        Relation::ALL
            .iter()
            .flat_map(|&r| [(r, false), (r, true)])
            .collect()
    }
}

/// The fused forward pass ([`HybridFraudNet::forward_t`]).
impl HybridFraudNet {
    /// The fused pass, or on the CPU the reference pass for large batches
    /// ([`CPU_FUSED_MAX_EDGES`]).
    fn forward_fast(&self, b: &BatchTensors, train: bool) -> Tensor {
        if self.leaves_to_reference(b) {
            return self.forward_unchecked(b, train);
        }
        self.forward_fused_unchecked(b, train)
    }

    /// Whether `b` is a large CPU batch, which the reference pass runs as fast or faster
    /// ([`CPU_FUSED_MAX_EDGES`]).
    fn leaves_to_reference(&self, b: &BatchTensors) -> bool {
        let edges: i64 = b.edge_index.iter().map(|e| e.size()[1]).sum();
        self.device() == Device::Cpu && edges > CPU_FUSED_MAX_EDGES
    }

    fn forward_fused_unchecked(&self, b: &BatchTensors, train: bool) -> Tensor {
        self.forward_fused_with(b, train, None)
    }

    /// The fused pass with `cached` as its weights, which must be the parameters' own
    /// ([`HybridFraudNet::fused_weights`]); `None` concatenates them afresh when the
    /// batch has edges.
    fn forward_fused_with(
        &self,
        b: &BatchTensors,
        train: bool,
        cached: Option<&FusedWeights>,
    ) -> Tensor {
        if self.device() == Device::Cpu {
            keep_freed_memory();
        }
        let encoded: Vec<Tensor> = self
            .encoders
            .iter()
            .zip(&b.node_features)
            .map(|(enc, f)| enc.forward(f))
            .collect();
        let mut x = Tensor::cat(&encoded, 0);
        let opts = (x.kind(), x.device());
        let plan = self.plan(b, opts);
        let account_offset = plan.offsets[NodeType::Account.index()];
        let target = if account_offset == 0 {
            b.target_account.shallow_clone()
        } else {
            &b.target_account + account_offset
        };
        // The skip connection of the target account's own encoded features.
        let own_account = x.index_select(0, &target);
        let fresh = match (&plan.edges, cached) {
            (Some(_), None) => Some(self.fused_weights()),
            _ => None,
        };
        let fused = cached.or(fresh.as_ref());
        for (l, layer) in self.layers.iter().enumerate() {
            let mean = match (&plan.edges, fused) {
                (Some(edges), Some(fused)) => {
                    self.messages_fused(fused, l, &x, &plan, edges, b, train) * &plan.reach
                }
                _ => x.zeros_like(),
            };
            x = self.update_fused(layer, &x, &mean, &plan.rows, train);
        }
        let readout = self.readout_fused(&x, own_account, &target, &plan, b);
        self.head(readout, b, train)
    }

    /// The batch's [`Plan`], worked out on the host: the edge index (copied from the device
    /// when it is not on the CPU) goes through a few integer loops, and every index the
    /// pass needs is uploaded once.
    fn plan(&self, b: &BatchTensors, opts: (Kind, Device)) -> Plan {
        let lay = &self.layout;
        let rows: Vec<i64> = b.node_graph.iter().map(|g| g.size()[0]).collect();
        let nodes: i64 = rows.iter().sum();
        let node_offsets = offsets(rows.iter().copied());
        let counts: Vec<i64> = b.edge_index.iter().map(|e| e.size()[1]).collect();
        let total: i64 = counts.iter().sum();
        if total == 0 {
            return Plan {
                rows,
                nodes,
                offsets: node_offsets,
                edges: None,
                reach: Tensor::ones([nodes, 1], opts),
            };
        }
        let slots: Vec<i64> = lay.slots.iter().map(|s| s.len() as i64).collect();
        let base = offsets(rows.iter().zip(&slots).map(|(n, c)| n * c));
        // [2, E]: the source rows of every stacked edge, then their destination rows.
        let pairs = Vec::<i64>::try_from(
            &Tensor::cat(&b.edge_index, 1)
                .view([-1])
                .to_device(Device::Cpu),
        )
        .unwrap_or_else(|e| unreachable!("edge indices are int64 ({e})"));
        let (src_rows, dst_rows) = pairs.split_at(total as usize);
        let edge_offsets = offsets(counts.iter().copied());
        let (mut flat, mut hits, mut reach) = (Vec::new(), Vec::new(), Vec::new());
        let groups = lay.flat_edges(
            &rows.iter().map(|&n| n as usize).collect::<Vec<_>>(),
            |r| {
                let span = edge_offsets[r] as usize..(edge_offsets[r] + counts[r]) as usize;
                src_rows[span.clone()]
                    .iter()
                    .zip(&dst_rows[span])
                    .map(|(&s, &d)| (s as usize, d as usize))
            },
            &mut flat,
            &mut hits,
            &mut reach,
        ) as i64;

        let heads = self.config.heads as i64;
        let mut query = Vec::with_capacity(flat.len());
        let mut key = Vec::with_capacity(flat.len());
        let mut group = Vec::with_capacity(flat.len() * heads as usize);
        let mut dst = Vec::with_capacity(flat.len());
        let mut message = Vec::with_capacity(flat.len());
        for fe in &flat {
            let (src_t, dst_t) = lay.ends[fe.m];
            query.push(fe.to as i64 * slots[dst_t] + base[dst_t] + lay.query_slot[fe.m]);
            key.push(fe.from as i64 * slots[src_t] + base[src_t] + lay.key_slot[fe.m]);
            group.extend((0..heads).map(|h| fe.group as i64 * heads + h));
            dst.push(fe.dst as i64);
            message.push(fe.m as i64);
        }
        // A source's value slot follows its key slot.
        let value: Vec<i64> = key.iter().map(|k| k + 1).collect();
        let upload = |v: &[i64]| Tensor::from_slice(v).to_device(opts.1);
        Plan {
            rows,
            nodes,
            offsets: node_offsets,
            edges: Some(EdgePlan {
                count: total,
                offsets: edge_offsets,
                query: upload(&query),
                key: upload(&key),
                value: upload(&value),
                group: upload(&group),
                groups,
                ones: Tensor::ones([self.config.hidden as i64 / heads], opts),
                dst: upload(&dst),
                message: upload(&message),
            }),
            reach: Tensor::from_slice(&reach)
                .view([nodes, 1])
                .to_kind(opts.0)
                .to_device(opts.1),
        }
    }

    /// Adds layer `l`'s edge terms of every flat edge to `t` (`[2E, hidden]`, a fresh
    /// gather of keys, `part` 0, or values, `part` 1) in place: one `addmm_` per relation
    /// with edges, into its block of flat edges, both directions at once.
    fn add_edge_terms(
        &self,
        t: &Tensor,
        fused: &FusedWeights,
        l: usize,
        part: usize,
        edges: &EdgePlan,
        b: &BatchTensors,
    ) {
        let h = self.config.hidden as i64;
        // [E, direction · hidden]: the two flat edges of a stacked edge side by side.
        let rows = t.view([-1, 2 * h]);
        for r in Relation::ALL {
            let n = b.edges(r);
            if n == 0 {
                continue;
            }
            let weight = &fused.edge[(l * 2 + part) * Relation::ALL.len() + r.index()];
            let _ = rows
                .narrow(0, edges.offsets[r.index()], n)
                .addmm_(&b.edge_features[r.index()], weight);
        }
    }

    /// Every layer's projection, attention and edge parameters concatenated as the
    /// [`Layout`] says, a few `cat`s per forward pass.
    fn fused_weights(&self) -> FusedWeights {
        let mut weights: Vec<&Tensor> = Vec::new();
        let mut biases: Vec<&Tensor> = Vec::new();
        let mut att: Vec<&Tensor> = Vec::new();
        let mut edge: Vec<&Tensor> = Vec::new();
        let h = self.config.hidden as i64;
        for layer in &self.layers {
            for slots in &self.layout.slots {
                for &(m, role) in slots {
                    let linear = layer.messages[m].projection(role);
                    weights.push(&linear.ws);
                    biases.push(
                        linear
                            .bs
                            .as_ref()
                            .unwrap_or_else(|| unreachable!("projections have a bias")),
                    );
                }
            }
            for (m, mt) in layer.messages.iter().enumerate() {
                debug_assert_eq!(m, 2 * mt.relation + usize::from(mt.reverse));
                att.push(&mt.att);
            }
            edge.extend(layer.messages.iter().map(|mt| &mt.edge.ws));
        }
        let layers = self.layers.len() as i64;
        let types = self.layout.ends.len() as i64;
        let ew = EDGE_FEATURES.len() as i64;
        let widths: Vec<i64> = self
            .layout
            .slots
            .iter()
            .map(|s| s.len() as i64 * h)
            .collect();
        let sizes: Vec<i64> = (0..layers).flat_map(|_| widths.iter().copied()).collect();
        let weight = Tensor::cat(&weights, 0).split_with_sizes(&sizes, 0);
        let bias = Tensor::cat(&biases, 0).split_with_sizes(&sizes, 0);
        let mut pairs = weight.into_iter().zip(bias);
        FusedWeights {
            projection: (0..layers)
                .map(|_| pairs.by_ref().take(widths.len()).collect())
                .collect(),
            att: Tensor::stack(&att, 0).view([layers, types, h]),
            // [layer, relation, direction, key|value, h, ew]
            //   → [layer, key|value, relation, ew, direction · h]
            edge: Tensor::cat(&edge, 0)
                .view([layers, types / 2, 2, 2, h, ew])
                .permute([0, 3, 1, 5, 2, 4])
                .reshape([-1, ew, 2 * h])
                .unbind(0),
        }
    }

    /// One layer's attention messages over all message types at once: `[nodes, hidden]`,
    /// per node the sum over message types of each type's attention-weighted messages
    /// (the sum [`HybridFraudNet::message_passing`] builds one message type at a time).
    #[allow(clippy::too_many_arguments)]
    fn messages_fused(
        &self,
        fused: &FusedWeights,
        l: usize,
        x: &Tensor,
        plan: &Plan,
        edges: &EdgePlan,
        b: &BatchTensors,
        train: bool,
    ) -> Tensor {
        let h = self.config.hidden as i64;
        let heads = self.config.heads as i64;
        let dh = h / heads;
        let e = edges.count;
        let projected: Vec<Tensor> = x
            .split_with_sizes(&plan.rows, 0)
            .iter()
            .zip(&fused.projection[l])
            .map(|(xt, (w, b))| xt.linear(w, Some(b)).view([-1, h]))
            .collect();
        let table = Tensor::cat(&projected, 0);
        drop(projected);
        // Sums in place on fresh gathers (safe for autograd: a gather's backward needs only
        // its index), in the reference's order, q + (k + edge term); temporaries dropped as
        // soon as they are used.
        let score = {
            let k = table.index_select(0, &edges.key);
            self.add_edge_terms(&k, fused, l, 0, edges, b);
            let mut z = table.index_select(0, &edges.query);
            z += k;
            let z = z.maximum(&(&z * self.config.negative_slope)); // LeakyReLU
            let att = fused.att.get(l as i64).index_select(0, &edges.message);
            // Per head, the dot product with the attention vector: `[2E·heads]`.
            (z * att).view([-1, dh]).matmul(&edges.ones)
        };
        let alpha = flat_softmax(&score, &edges.group, edges.groups * heads);
        let alpha = dropout(alpha, self.config.dropout, train).view([2 * e, heads, 1]);
        let msg = {
            let v = table.index_select(0, &edges.value);
            drop(table);
            self.add_edge_terms(&v, fused, l, 1, edges, b);
            (v.view([2 * e, heads, dh]) * alpha).view([2 * e, h])
        };
        Tensor::zeros([plan.nodes, h], (x.kind(), x.device())).index_add(0, &edges.dst, &msg)
    }

    /// `x ← LayerNorm(x + Dropout(GELU(Linear(mean))))` per node type, on the stacked
    /// embeddings.
    fn update_fused(
        &self,
        layer: &Layer,
        x: &Tensor,
        mean: &Tensor,
        rows: &[i64],
        train: bool,
    ) -> Tensor {
        let update: Vec<Tensor> = mean
            .split_with_sizes(rows, 0)
            .iter()
            .zip(&layer.update)
            .map(|(m, linear)| m.apply(linear))
            .collect();
        let update = dropout(
            Tensor::cat(&update, 0).gelu("none"),
            self.config.dropout,
            train,
        );
        let normed: Vec<Tensor> = (x + update)
            .split_with_sizes(rows, 0)
            .iter()
            .zip(&layer.norm)
            .map(|(y, norm)| y.apply(norm))
            .collect();
        Tensor::cat(&normed, 0)
    }

    /// The readout's input `[B, (2·node types + 1)·hidden]` from the stacked embeddings,
    /// in the order [`HybridFraudNet::forward_reference`] concatenates it.
    fn readout_fused(
        &self,
        x: &Tensor,
        own_account: Tensor,
        target: &Tensor,
        plan: &Plan,
        b: &BatchTensors,
    ) -> Tensor {
        let (bs, h) = (b.size, x.size()[1]);
        let opts = (x.kind(), x.device());
        let types = NODE_TYPES as i64;
        let others = NodeType::ALL.len() - 1;
        let dev = x.device();

        // The transaction's own entity of every other type, then a transfer's receiver (an
        // account), zeros where it has none.
        let mut own_rows: Vec<&Tensor> = b.own_rows[1..].iter().collect();
        own_rows.push(&b.counterparty_row);
        let own = Tensor::cat(&own_rows, 0); // [(types - 1 + 1)·B]
        let shift: Vec<i64> = NodeType::ALL[1..]
            .iter()
            .chain([&NodeType::Account])
            .flat_map(|t| std::iter::repeat_n(plan.offsets[t.index()], bs as usize))
            .collect();
        let rows = (&own + Tensor::from_slice(&shift).to_device(dev)).clamp(0, plan.nodes - 1);
        let mask = own.ge(0).to_kind(opts.0).unsqueeze(1);
        let own = (x.index_select(0, &rows) * mask)
            .view([others as i64 + 1, bs, h])
            .transpose(0, 1);

        // The mean of every node type's embeddings per subgraph: bucket (subgraph, type).
        let row_type: Vec<i64> = plan
            .rows
            .iter()
            .enumerate()
            .flat_map(|(t, &n)| std::iter::repeat_n(t as i64, n as usize))
            .collect();
        let bucket =
            Tensor::cat(&b.node_graph, 0) * types + Tensor::from_slice(&row_type).to_device(dev);
        let sums = Tensor::zeros([bs * types, h], opts).index_add(0, &bucket, x);
        let count = Tensor::zeros([bs * types], opts)
            .index_add(0, &bucket, &Tensor::ones([plan.nodes], opts))
            .clamp_min(1.0);
        let means = (sums / count.unsqueeze(1)).view([bs, types, h]);

        let parts = [
            own_account.unsqueeze(1),
            x.index_select(0, target).unsqueeze(1),
            own,
            means,
        ];
        Tensor::cat(&parts, 1).view([bs, -1])
    }
}

/// On the CPU, batches with more stacked edges than this run the reference pass instead
/// of the fused one: past ten thousand edges or so (about 30 subgraphs of the default
/// sampler) the fused pass's `[2E, hidden]` tensors outgrow the caches and its per-edge
/// cost passes the reference's, while its saving in per-op overhead no longer matters.
const CPU_FUSED_MAX_EDGES: i64 = 8_192;

/// Makes glibc's malloc keep the fused pass's short-lived, megabyte-sized tensors for
/// reuse instead of handing them back to the kernel after every pass and page-faulting
/// them in again on the next. glibc serves blocks below its mmap threshold from the heap
/// and trims the heap once its free top exceeds the trim threshold; freeing an mmapped
/// block of up to 32 MiB raises the first to that size and the second to twice it. So one
/// 16 MiB block, allocated (never touched) and freed once, sets them to 16 and 32 MiB for
/// the process, as any large temporary tensor would. Measured on a 2-core VM, a fused
/// batch of 8 subgraphs went from ~2,000 page faults and 9 ms to none and 5 ms. Other
/// allocators ignore it; it costs nothing after the first call.
fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| drop(Tensor::empty([4 << 20], (Kind::Float, Device::Cpu))));
}

/// Runs `f`, turning a libtorch panic into [`NetError::Torch`].
fn guarded(f: impl FnOnce() -> Tensor) -> Result<Tensor, NetError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "forward pass panicked".to_string());
        NetError::Torch(message)
    })
}

/// Softmax of `score` (`[E, heads]`) over the edges that share a destination in `dst`
/// (`[E]`, rows `0..n_dst`), with each destination's maximum subtracted first so large
/// scores do not overflow. Every destination with edges has a denominator of at least 1.
fn scatter_softmax(score: &Tensor, dst: &Tensor, n_dst: i64) -> Tensor {
    let size = score.size();
    let opts = (score.kind(), score.device());
    // `scatter_reduce.two`; `index_reduce` would do but logs a "beta" warning.
    let max = Tensor::zeros([n_dst, size[1]], opts).internal_scatter_reduce(
        0,
        &dst.unsqueeze(1).expand(&size, false),
        &score.detach(),
        "amax",
        false,
    );
    let exp = (score - max.index_select(0, dst)).exp();
    let denom = Tensor::zeros([n_dst, size[1]], opts).index_add(0, dst, &exp);
    exp / denom.index_select(0, dst)
}

/// [`scatter_softmax`] on flat tensors: `score` `[n]` normalized over the entries that
/// share a slot of `index` (`[n]`, slots `0..slots`). One-dimensional scatters are
/// several times faster on the CPU than row scatters of a few values each; starting the
/// maximum from -inf, start included, gives the same maximum as leaving the start out,
/// faster.
fn flat_softmax(score: &Tensor, index: &Tensor, slots: i64) -> Tensor {
    let opts = (score.kind(), score.device());
    let max = Tensor::full([slots], f64::NEG_INFINITY, opts).internal_scatter_reduce(
        0,
        index,
        &score.detach(),
        "amax",
        true,
    );
    let mut exp = score - max.index_select(0, index);
    let exp = exp.exp_();
    let denom = Tensor::zeros([slots], opts).index_add(0, index, &exp);
    exp / denom.index_select(0, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_validates() {
        let c = NetConfig::default();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NetConfig>(&json).unwrap(), c);
        assert!(
            NetConfig {
                heads: 3,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(serde_json::from_str::<NetConfig>(r#"{"hiden": 3}"#).is_err());
    }

    #[test]
    fn message_type_names_cover_both_directions() {
        let names: Vec<String> = HybridFraudNet::message_types()
            .into_iter()
            .map(|(r, rev)| message_type_name(r, rev))
            .collect();
        assert_eq!(names.len(), 2 * Relation::ALL.len());
        assert_eq!(names[0], "rel_used_device_fwd");
        assert_eq!(names[1], "rel_used_device_rev");
    }

    #[test]
    fn flat_softmax_equals_the_row_scatter_softmax() {
        let score =
            Tensor::from_slice(&[1000.0f32, -5.0, 1001.0, 999.0, 1.0, 2.0, 3.0, 4.0]).view([4, 2]);
        let dst = Tensor::from_slice(&[1i64, 0, 1, 1]);
        let rows = scatter_softmax(&score, &dst, 3);
        let index =
            ((&dst * 2).unsqueeze(1) + Tensor::arange(2, (Kind::Int64, Device::Cpu))).view([-1]);
        let flat = flat_softmax(&score.view([-1]), &index, 6);
        let gap = f64::try_from((flat - rows.view([-1])).abs().max()).unwrap();
        assert!(gap < 1e-7, "{gap}");
    }

    #[test]
    fn the_layout_gives_every_message_type_its_slots() {
        let lay = Layout::new();
        for (m, &(src, dst)) in lay.ends.iter().enumerate() {
            assert_eq!(lay.slots[dst][lay.query_slot[m] as usize], (m, Role::Query));
            assert!(lay.query_slot[m] < lay.queries[dst]);
            assert_eq!(lay.slots[src][lay.key_slot[m] as usize], (m, Role::Key));
            assert_eq!(
                lay.slots[src][lay.key_slot[m] as usize + 1],
                (m, Role::Value)
            );
        }
        let total: usize = lay.slots.iter().map(Vec::len).sum();
        assert_eq!(total, 3 * lay.ends.len());
    }

    #[test]
    fn scatter_softmax_normalizes_per_destination_and_is_stable() {
        // Destinations: edges 0, 2 and 3 go to row 1, edge 1 to row 0; row 2 has none.
        let score =
            Tensor::from_slice(&[1000.0f32, -5.0, 1001.0, 999.0, 1.0, 2.0, 3.0, 4.0]).view([4, 2]);
        let dst = Tensor::from_slice(&[1i64, 0, 1, 1]);
        let alpha = scatter_softmax(&score, &dst, 3);
        let expected = |xs: [f64; 3]| {
            let m = xs.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = xs.iter().map(|x| (x - m).exp()).sum();
            xs.map(|x| (x - m).exp() / z)
        };
        // Without the max subtracted, exp(1000) overflows f32.
        let head0 = expected([1000.0, 1.0, 3.0]);
        let head1 = expected([-5.0, 2.0, 4.0]);
        let got = Vec::<f32>::try_from(alpha.flatten(0, -1)).unwrap();
        let want = [
            head0[0], head1[0], 1.0, 1.0, head0[1], head1[1], head0[2], head1[2],
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
