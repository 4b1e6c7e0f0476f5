//! A collated [`Batch`] as libtorch tensors on one device.
//!
//! This module owns the conversion from the sampler's flat arrays to tensors: one host
//! copy and one transfer per array, shapes checked first so a malformed batch is a
//! [`NetError`] instead of a libtorch panic. Nothing here knows about the model; the
//! layout (node types, relations, feature widths) is the sampler's, see
//! `fraudgraph_sampler::features`.

use fraudgraph_sampler::batch::{Batch, NO_ROW};
use fraudgraph_sampler::features::{self, EDGE_FEATURES, SEQ_FEATURES, TXN_FEATURES};
use fraudgraph_sampler::{NodeType, Relation};
use tch::{Device, Kind, Tensor};

use crate::net::NetError;

/// Node types in a batch.
pub const NODE_TYPES: usize = NodeType::ALL.len();
/// Relations in a batch.
pub const RELATIONS: usize = Relation::ALL.len();

/// A [`Batch`] as tensors on [`BatchTensors::device`]. Float tensors are `f32` (see
/// [`BatchTensors::to_kind`] for half precision); indices are `i64`. Every tensor exists
/// even when empty: a node type or relation with no rows has 0 rows, not a missing tensor.
#[derive(Debug)]
pub struct BatchTensors {
    /// Subgraphs in the batch (`B`).
    pub size: i64,
    /// Per node type: `[N_t, node_width(t)]` features, rows stacked over subgraphs.
    pub node_features: [Tensor; NODE_TYPES],
    /// Per node type: `[N_t]` index of each row's subgraph.
    pub node_graph: [Tensor; NODE_TYPES],
    /// Per relation: `[2, E_r]` (source row in the source type, destination row in the
    /// destination type), rows as in [`BatchTensors::node_features`].
    pub edge_index: [Tensor; RELATIONS],
    /// Per relation: `[E_r, EDGE_FEATURES.len()]` edge features.
    pub edge_features: [Tensor; RELATIONS],
    /// `[B]` the stacked account row of each subgraph's transaction.
    pub target_account: Tensor,
    /// Per node type: `[B]` the stacked row of each transaction's own entity of that
    /// type, `-1` when it has none.
    pub own_rows: [Tensor; NODE_TYPES],
    /// `[B]` the stacked account row of each transfer's receiver, `-1` for a transaction
    /// that is not a transfer.
    pub counterparty_row: Tensor,
    /// `[B, TXN_FEATURES.len()]` features of the scored transactions.
    pub txn_features: Tensor,
    /// `[B, L, SEQ_FEATURES.len()]` recent transactions of each target account,
    /// right-aligned (newest last), zero-padded at the front.
    pub sequence: Tensor,
    /// `[B]` how many of the `L` sequence elements are real (the last ones).
    pub sequence_len: Tensor,
    /// The padded sequence length `L`.
    pub max_sequence: i64,
    /// Where every tensor lives.
    pub device: Device,
}

fn shape(what: impl Into<String>, expected: usize, got: usize) -> Result<(), NetError> {
    if expected == got {
        Ok(())
    } else {
        Err(NetError::Length {
            what: what.into(),
            expected,
            got,
        })
    }
}

fn index_range(what: impl Into<String>, max: Option<u32>, rows: usize) -> Result<(), NetError> {
    match max {
        Some(m) if m as usize >= rows => Err(NetError::IndexOutOfRange {
            what: what.into(),
            index: m as usize,
            rows,
        }),
        _ => Ok(()),
    }
}

/// Checks one optional row per subgraph (`b` of them), each below `rows` or [`NO_ROW`].
fn optional_rows(
    what: impl Into<String>,
    batch_rows: &[u32],
    b: usize,
    rows: usize,
) -> Result<(), NetError> {
    let what = what.into();
    shape(what.clone(), b, batch_rows.len())?;
    index_range(
        what,
        batch_rows.iter().copied().filter(|r| *r != NO_ROW).max(),
        rows,
    )
}

/// `[rows, width]` f32 tensor on `device` from a row-major slice (one copy, one transfer).
fn matrix(data: &[f32], rows: usize, width: usize, device: Device) -> Tensor {
    Tensor::from_slice(data)
        .view([rows as i64, width as i64])
        .to_device(device)
}

/// `[n]` i64 tensor on `device` from u32 indices.
fn indices(data: &[u32], device: Device) -> Tensor {
    let wide: Vec<i64> = data.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_slice(&wide).to_device(device)
}

/// Checks `batch`'s array lengths against its row counts and feature widths, and every
/// index (subgraph of a row, edge endpoint, target, own row, sequence length) against the
/// rows it points into: what [`BatchTensors::from_batch`] and the native CPU pass
/// ([`crate::net::NativeNet`]) check before reading a batch.
///
/// Errors with [`NetError::Length`] naming the array whose length is wrong, and
/// [`NetError::IndexOutOfRange`] naming the array with an index past its rows.
pub fn check_batch(batch: &Batch) -> Result<(), NetError> {
    let b = batch.size;
    let rows: [usize; NODE_TYPES] = std::array::from_fn(|i| batch.node_graph[i].len());
    for t in NodeType::ALL {
        let i = t.index();
        shape(
            format!("node_features[{t:?}]"),
            rows[i] * features::node_width(t),
            batch.node_features[i].len(),
        )?;
        index_range(
            format!("node_graph[{t:?}]"),
            batch.node_graph[i].iter().copied().max(),
            b,
        )?;
    }
    let ew = EDGE_FEATURES.len();
    for r in Relation::ALL {
        let i = r.index();
        let edges = &batch.edge_index[i];
        shape(
            format!("edge_features[{r:?}]"),
            edges.len() * ew,
            batch.edge_features[i].len(),
        )?;
        let max_s = edges.iter().map(|&(s, _)| s).max();
        let max_d = edges.iter().map(|&(_, d)| d).max();
        let (st, dt) = r.endpoints();
        index_range(format!("edge_index[{r:?}] source"), max_s, rows[st.index()])?;
        index_range(
            format!("edge_index[{r:?}] destination"),
            max_d,
            rows[dt.index()],
        )?;
    }
    shape("target_account", b, batch.target_account.len())?;
    index_range(
        "target_account",
        batch.target_account.iter().copied().max(),
        rows[NodeType::Account.index()],
    )?;
    for t in NodeType::ALL {
        optional_rows(
            format!("own_rows[{t:?}]"),
            &batch.own_rows[t.index()],
            b,
            rows[t.index()],
        )?;
    }
    optional_rows(
        "counterparty_row",
        &batch.counterparty_row,
        b,
        rows[NodeType::Account.index()],
    )?;
    shape(
        "txn_features",
        b * TXN_FEATURES.len(),
        batch.txn_features.len(),
    )?;
    let l = batch.max_sequence;
    shape("sequence", b * l * SEQ_FEATURES.len(), batch.sequence.len())?;
    shape("sequence_len", b, batch.sequence_len.len())?;
    index_range(
        "sequence_len",
        batch.sequence_len.iter().copied().max(),
        l + 1,
    )
}

/// [`BatchTensors::from_batch`]: `batch` checked and copied to `device`.
pub fn from_batch(batch: &Batch, device: Device) -> Result<BatchTensors, NetError> {
    BatchTensors::from_batch(batch, device)
}

impl BatchTensors {
    /// Checks `batch`'s shapes and index ranges, then copies it to `device`.
    ///
    /// Errors with [`NetError::Length`] when an array's length does not match the feature
    /// widths and row counts, and [`NetError::IndexOutOfRange`] when an edge, target or
    /// sequence length points outside its rows.
    pub fn from_batch(batch: &Batch, device: Device) -> Result<BatchTensors, NetError> {
        check_batch(batch)?;
        let b = batch.size;
        let rows: [usize; NODE_TYPES] = std::array::from_fn(|i| batch.node_graph[i].len());
        let ew = EDGE_FEATURES.len();
        let edge_index: Vec<Vec<i64>> = batch
            .edge_index
            .iter()
            .map(|edges| {
                // Sources first, then destinations: one [2, E] buffer, one copy.
                let e = edges.len();
                let mut flat = vec![0i64; 2 * e];
                for (k, &(s, d)) in edges.iter().enumerate() {
                    flat[k] = i64::from(s);
                    flat[e + k] = i64::from(d);
                }
                flat
            })
            .collect();
        let optional = |rows: &[u32]| -> Vec<i64> {
            rows.iter()
                .map(|&r| if r == NO_ROW { -1 } else { i64::from(r) })
                .collect()
        };
        let own_rows: Vec<Vec<i64>> = batch.own_rows.iter().map(|r| optional(r)).collect();
        let counterparty_row = optional(&batch.counterparty_row);
        let l = batch.max_sequence;
        let sw = SEQ_FEATURES.len();

        Ok(BatchTensors {
            size: b as i64,
            node_features: std::array::from_fn(|i| {
                matrix(
                    &batch.node_features[i],
                    rows[i],
                    features::node_width(NodeType::ALL[i]),
                    device,
                )
            }),
            node_graph: std::array::from_fn(|i| indices(&batch.node_graph[i], device)),
            edge_index: std::array::from_fn(|i| {
                Tensor::from_slice(&edge_index[i])
                    .view([2, batch.edge_index[i].len() as i64])
                    .to_device(device)
            }),
            edge_features: std::array::from_fn(|i| {
                matrix(
                    &batch.edge_features[i],
                    batch.edge_index[i].len(),
                    ew,
                    device,
                )
            }),
            target_account: indices(&batch.target_account, device),
            own_rows: std::array::from_fn(|i| Tensor::from_slice(&own_rows[i]).to_device(device)),
            counterparty_row: Tensor::from_slice(&counterparty_row).to_device(device),
            txn_features: matrix(&batch.txn_features, b, TXN_FEATURES.len(), device),
            sequence: Tensor::from_slice(&batch.sequence)
                .view([b as i64, l as i64, sw as i64])
                .to_device(device),
            sequence_len: indices(&batch.sequence_len, device),
            max_sequence: l as i64,
            device,
        })
    }

    /// Rows of node type `t`.
    pub fn rows(&self, t: NodeType) -> i64 {
        self.node_graph[t.index()].size()[0]
    }

    /// Edges of relation `r`.
    pub fn edges(&self, r: Relation) -> i64 {
        self.edge_index[r.index()].size()[1]
    }

    /// The same batch with its float tensors (features, sequence) converted to `kind`
    /// (e.g. [`Kind::Half`] or [`Kind::BFloat16`] for half-precision inference); index
    /// tensors are shared, not copied.
    pub fn to_kind(&self, kind: Kind) -> BatchTensors {
        BatchTensors {
            size: self.size,
            node_features: std::array::from_fn(|i| self.node_features[i].to_kind(kind)),
            node_graph: std::array::from_fn(|i| self.node_graph[i].shallow_clone()),
            edge_index: std::array::from_fn(|i| self.edge_index[i].shallow_clone()),
            edge_features: std::array::from_fn(|i| self.edge_features[i].to_kind(kind)),
            target_account: self.target_account.shallow_clone(),
            own_rows: std::array::from_fn(|i| self.own_rows[i].shallow_clone()),
            counterparty_row: self.counterparty_row.shallow_clone(),
            txn_features: self.txn_features.to_kind(kind),
            sequence: self.sequence.to_kind(kind),
            sequence_len: self.sequence_len.shallow_clone(),
            max_sequence: self.max_sequence,
            device: self.device,
        }
    }

    /// This (host) batch on `device`, for the serving pipeline's staging buffers. On CUDA
    /// every tensor is first copied into pinned (page-locked) host memory and then sent with
    /// a non-blocking copy, so the calling thread returns while the transfer runs and the
    /// copies queue on the device ahead of the next forward pass. On the CPU it is the
    /// batch itself (tensors shared, nothing copied).
    pub fn to_device_staged(&self, device: Device) -> Result<BatchTensors, NetError> {
        let err = |e: tch::TchError| NetError::Torch(format!("staging a batch on {device:?}: {e}"));
        let stage = |t: &Tensor| -> Result<Tensor, NetError> {
            if !device.is_cuda() {
                return Ok(t.shallow_clone());
            }
            let pinned = t.f_pin_memory(device).map_err(err)?;
            pinned
                .f_to_device_(device, pinned.kind(), true, false)
                .map_err(err)
        };
        let each =
            |ts: &[Tensor]| -> Result<Vec<Tensor>, NetError> { ts.iter().map(stage).collect() };
        let arr = |v: Vec<Tensor>| -> [Tensor; NODE_TYPES] {
            v.try_into()
                .unwrap_or_else(|_| unreachable!("one tensor per node type"))
        };
        let rel = |v: Vec<Tensor>| -> [Tensor; RELATIONS] {
            v.try_into()
                .unwrap_or_else(|_| unreachable!("one tensor per relation"))
        };
        Ok(BatchTensors {
            size: self.size,
            node_features: arr(each(&self.node_features)?),
            node_graph: arr(each(&self.node_graph)?),
            edge_index: rel(each(&self.edge_index)?),
            edge_features: rel(each(&self.edge_features)?),
            target_account: stage(&self.target_account)?,
            own_rows: arr(each(&self.own_rows)?),
            counterparty_row: stage(&self.counterparty_row)?,
            txn_features: stage(&self.txn_features)?,
            sequence: stage(&self.sequence)?,
            sequence_len: stage(&self.sequence_len)?,
            max_sequence: self.max_sequence,
            device,
        })
    }

    /// The kind of the float tensors.
    pub fn kind(&self) -> Kind {
        self.txn_features.kind()
    }
}
