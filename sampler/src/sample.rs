//! The causal 3-hop sampler: the neighbourhood of one transaction, as the
//! graph stood just before it, turned into flat arrays ready to become
//! tensors.
//!
//! Hop 0 is the transaction's own entities (account, device, IP, merchant,
//! card, transfer receiver), included even when the graph has never seen them
//! — gateways score a payment before it reaches Kafka. Each later hop takes up
//! to `fanouts[h]` neighbours of every node first reached at the hop before,
//! most recent first or weighted by edge count (seeded by the txn_id, so the
//! same request samples the same subgraph). Only what the graph knew strictly
//! before the transaction's time is visible: edges first seen at or after it
//! are skipped, edge statistics have later updates taken out, node aggregates
//! come from a state that predates it (see [`crate::graph`]).

use std::cell::RefCell;
use std::collections::hash_map::Entry;

use rustc_hash::{FxHashMap, FxHashSet};

use fraudgraph_proto::v1::Transaction;

use crate::features::{self, ln1p};
use crate::graph::{
    EdgeView, Graph, MAX_PORTS, NodeRef, SeqItem, Side, epoch_secs, ports, txn_hash,
};
use crate::prefetch::Intent;
use crate::schema::{NodeType, Relation, edges_of};

/// How neighbours are chosen when a node has more than the fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The most recently seen edges first.
    MostRecent,
    /// Drawn without replacement, weighted by edge count, seeded.
    Weighted,
}

/// Tunables of the sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Neighbours per node at hops 1, 2 and 3.
    pub fanouts: [usize; 3],
    /// Neighbour choice.
    pub strategy: Strategy,
    /// Mixed with the txn_id to seed weighted sampling.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            fanouts: [20, 10, 5],
            strategy: Strategy::MostRecent,
            seed: 0,
        }
    }
}

/// A node of a subgraph. Known nodes are held by address, not by id:
/// copying every sampled node's id would cost an allocation per node on the
/// scoring path, and only explanations need ids ([`Subgraph::key`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledNode {
    /// Its address in the graph; `None` for an entity the graph has not seen.
    pub node: Option<NodeRef>,
    /// The id of an entity the graph has not seen (the transaction names
    /// it); `None` for known nodes.
    pub new_key: Option<Box<str>>,
    /// Hops from the transaction's account (its own other entities are at
    /// hop 1).
    pub hop: u8,
}

/// The sampled neighbourhood of one transaction.
///
/// Per node type `t`: `nodes[t]` and the row-major `node_features[t]`
/// (`features::node_width(t)` columns). Per relation `r`: `edge_index[r]`
/// pairs (source row in `nodes[src type]`, destination row in
/// `nodes[dst type]`) and `edge_features[r]` (`features::EDGE_FEATURES`
/// columns).
#[derive(Debug, Clone, PartialEq)]
pub struct Subgraph {
    /// The transaction's txn_id.
    pub txn_id: String,
    /// Its event time, Unix ms.
    pub t_ms: i64,
    /// Nodes per type, in [`NodeType::index`] order.
    pub nodes: [Vec<SampledNode>; NodeType::ALL.len()],
    /// Node features per type, row-major.
    pub node_features: [Vec<f32>; NodeType::ALL.len()],
    /// Edges per relation, in [`Relation::index`] order, as (src row, dst row).
    pub edge_index: [Vec<(u32, u32)>; Relation::ALL.len()],
    /// Edge features per relation, row-major.
    pub edge_features: [Vec<f32>; Relation::ALL.len()],
    /// The row of the transaction's account in `nodes[Account]` (always 0).
    pub target_account: u32,
    /// Per node type, the row of the transaction's own entity of that type
    /// (the payer for accounts; the receiver of a transfer is reached through
    /// the target's `transferred_to` edge), `None` when the transaction has
    /// none.
    pub own_rows: [Option<u32>; NodeType::ALL.len()],
    /// The row in `nodes[Account]` of a transfer's receiver (the counterparty), `None`
    /// when the transaction is not a transfer.
    pub counterparty_row: Option<u32>,
    /// [`features::TXN_FEATURES`] of the transaction.
    pub txn_features: Vec<f32>,
    /// The account's transactions before this one, oldest first, each
    /// [`features::SEQ_FEATURES`] wide.
    pub sequence: Vec<f32>,
    /// Elements in `sequence`.
    pub sequence_len: usize,
    /// Hops actually reached.
    pub hops: u8,
}

impl Subgraph {
    /// An empty subgraph with its arrays sized for a typical 20/10/5 sample at the head of
    /// a stream of `graph`, so that sampling does not grow them row by row.
    pub fn sized_for(graph: &Graph) -> Subgraph {
        Subgraph {
            txn_id: String::new(),
            t_ms: 0,
            nodes: std::array::from_fn(|_| Vec::with_capacity(EXPECTED_ROWS)),
            node_features: NodeType::ALL
                .map(|t| Vec::with_capacity(EXPECTED_ROWS * features::node_width(t))),
            edge_index: std::array::from_fn(|_| Vec::with_capacity(EXPECTED_EDGES)),
            edge_features: std::array::from_fn(|_| {
                Vec::with_capacity(EXPECTED_EDGES * features::EDGE_FEATURES.len())
            }),
            target_account: 0,
            own_rows: [None; NodeType::ALL.len()],
            counterparty_row: None,
            txn_features: Vec::with_capacity(features::TXN_FEATURES.len()),
            sequence: Vec::with_capacity(
                graph.config().sequence_len * features::SEQ_FEATURES.len(),
            ),
            sequence_len: 0,
            hops: 0,
        }
    }

    /// Empties it for the sample of `txn_id` at `t_ms`, keeping its arrays' memory. Every
    /// field is named, so a field added later cannot be left holding the last sample's.
    fn reset(&mut self, txn_id: &str, t_ms: i64) {
        let Subgraph {
            txn_id: id,
            t_ms: time,
            nodes,
            node_features,
            edge_index,
            edge_features,
            target_account,
            own_rows,
            counterparty_row,
            txn_features,
            sequence,
            sequence_len,
            hops,
        } = self;
        id.clear();
        id.push_str(txn_id);
        *time = t_ms;
        nodes.iter_mut().for_each(Vec::clear);
        node_features.iter_mut().for_each(Vec::clear);
        edge_index.iter_mut().for_each(Vec::clear);
        edge_features.iter_mut().for_each(Vec::clear);
        *target_account = 0;
        *own_rows = [None; NodeType::ALL.len()];
        *counterparty_row = None;
        txn_features.clear();
        sequence.clear();
        *sequence_len = 0;
        *hops = 0;
    }

    /// Nodes of every type.
    pub fn node_count(&self) -> usize {
        self.nodes.iter().map(Vec::len).sum()
    }

    /// Edges of every relation.
    pub fn edge_count(&self) -> usize {
        self.edge_index.iter().map(Vec::len).sum()
    }

    /// The id of the node at `row` of type `t`: the transaction's spelling for
    /// an entity the graph had not seen, the graph's for a known one (`None`
    /// if it has been evicted since, or the row does not exist).
    pub fn key(&self, graph: &Graph, t: NodeType, row: usize) -> Option<String> {
        let n = self.nodes[t.index()].get(row)?;
        match (&n.new_key, n.node) {
            (Some(k), _) => Some(k.to_string()),
            (None, Some(node)) => graph.key_of(t, node),
            (None, None) => None,
        }
    }
}

/// A known node's key in the sampler's row map: its type and address in one word, hashed in
/// one step.
fn ref_key(t: NodeType, node: NodeRef) -> u64 {
    ((t.index() as u64) << 32) | u64::from(node.0)
}

/// Where the rows and edges of the subgraph being built are, by node and by edge.
struct Rows {
    /// Rows of entities the graph knows, by [`ref_key`] (no string hashing).
    by_ref: FxHashMap<u64, u32>,
    /// Rows of the target's entities the graph has not seen, by id.
    by_key: FxHashMap<(NodeType, Box<str>), u32>,
    edges: FxHashSet<(Relation, u32, u32)>,
}

/// A frontier entry: a known node, its type and its row.
type Reached = (NodeType, NodeRef, u32);

/// The sampler's working memory, kept by each thread from one sample to the next
/// ([`SCRATCH`]) and emptied at the start of each.
///
/// Why: created afresh for every sample, these maps and buffers (and the subgraph's own
/// arrays, see [`sample_into`]) were new allocations each time; on a thread that also
/// applies the stream (training's replay, `bench sampler`) the graph's growth takes the
/// memory they freed between two samples, so the next sample's came from pages the
/// process had not touched yet, and the page faults on them were as long as the rest of
/// the sample (docs/BENCHMARKS.md, "The sampler's own page faults").
struct Scratch {
    rows: Rows,
    /// The transaction's own known entities, expanded at hop 2.
    own: Vec<Reached>,
    /// The nodes a hop expands, and those first reached by it (they take turns).
    frontier: Vec<Reached>,
    next: Vec<Reached>,
    /// One node's candidate neighbours.
    candidates: Vec<Candidate>,
    choose: ChooseScratch,
    /// The neighbours every frontier node chose, one after the other, and where each
    /// node's end.
    chosen: Vec<Candidate>,
    chosen_ends: Vec<usize>,
    /// The account's sequence elements before the target, and the UTC offsets among them.
    sequence: Vec<SeqItem>,
    offsets: Vec<i16>,
}

impl Scratch {
    /// Sized for a typical 20/10/5 subgraph at the head of a stream (~300 nodes, ~600
    /// edges), so that growing them does not rehash or reallocate during a sample.
    fn new() -> Self {
        Scratch {
            rows: Rows {
                by_ref: FxHashMap::with_capacity_and_hasher(EXPECTED_NODES, Default::default()),
                by_key: FxHashMap::default(),
                edges: FxHashSet::with_capacity_and_hasher(2 * EXPECTED_NODES, Default::default()),
            },
            own: Vec::new(),
            frontier: Vec::with_capacity(EXPECTED_NODES),
            next: Vec::with_capacity(EXPECTED_NODES),
            candidates: Vec::new(),
            choose: ChooseScratch::default(),
            chosen: Vec::with_capacity(EXPECTED_NODES),
            chosen_ends: Vec::with_capacity(EXPECTED_NODES),
            sequence: Vec::new(),
            offsets: Vec::new(),
        }
    }

    /// Empties it for the next sample; after an unusually large one (a fan-out of
    /// thousands), starts over at the typical size so that a thread does not keep the
    /// largest sample's memory.
    fn reset(&mut self) {
        if self.rows.by_ref.capacity() > SCRATCH_KEEP * EXPECTED_NODES
            || self.rows.edges.capacity() > 2 * SCRATCH_KEEP * EXPECTED_NODES
            || self.chosen.capacity() > SCRATCH_KEEP * EXPECTED_NODES
            || self.candidates.capacity() > SCRATCH_KEEP * EXPECTED_NODES
        {
            *self = Scratch::new();
            return;
        }
        // Every field named, so a field added later cannot carry one sample into the next.
        let Scratch {
            rows:
                Rows {
                    by_ref,
                    by_key,
                    edges,
                },
            own,
            frontier,
            next,
            candidates,
            choose: _, // `choose` clears its own buffers before each use.
            chosen,
            chosen_ends,
            sequence,
            offsets,
        } = self;
        by_ref.clear();
        by_key.clear();
        edges.clear();
        own.clear();
        frontier.clear();
        next.clear();
        candidates.clear();
        chosen.clear();
        chosen_ends.clear();
        sequence.clear();
        offsets.clear();
    }
}

/// How many times the typical size a thread's [`Scratch`] may grow to and be kept.
const SCRATCH_KEEP: usize = 16;

thread_local! {
    /// Each sampling thread's [`Scratch`].
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

struct Builder<'g, 's> {
    graph: &'g Graph,
    t_ms: i64,
    t_s: u32,
    sub: &'s mut Subgraph,
    rows: &'s mut Rows,
}

impl Builder<'_, '_> {
    /// The row of an entity, adding it (with its features) when new.
    fn row(&mut self, t: NodeType, key: &str, node: Option<NodeRef>, hop: u8) -> (u32, bool) {
        let known = match node {
            Some(n) => self.rows.by_ref.get(&ref_key(t, n)),
            None => self.rows.by_key.get(&(t, key.into())),
        };
        if let Some(&r) = known {
            return (r, false);
        }
        let r = self.add(t, node, hop, Some(key));
        if let Some(n) = node {
            self.rows.by_ref.insert(ref_key(t, n), r);
        }
        (r, true)
    }

    /// The row of a known node reached by sampling, adding it when new.
    fn row_of(&mut self, t: NodeType, node: NodeRef, hop: u8) -> (u32, bool) {
        // One hash and one probe: the row is claimed before the node is added.
        let row = self.sub.nodes[t.index()].len() as u32;
        match self.rows.by_ref.entry(ref_key(t, node)) {
            Entry::Occupied(known) => return (*known.get(), false),
            Entry::Vacant(slot) => slot.insert(row),
        };
        (self.add(t, Some(node), hop, None), true)
    }

    /// Adds a node with its features as of t, read under one lock, its logarithm columns
    /// left for [`take_logs`]. The caller records a known node's row in `by_ref`.
    fn add(&mut self, t: NodeType, node: Option<NodeRef>, hop: u8, key: Option<&str>) -> u32 {
        let r = self.sub.nodes[t.index()].len() as u32;
        let out = &mut self.sub.node_features[t.index()];
        let new_key = match node {
            Some(n) => {
                let (t_ms, t_s) = (self.t_ms, self.t_s);
                let mut degrees = [0usize; MAX_PORTS];
                let ports = ports(t).len();
                // A node quiet since t (nothing at or after t's second) is read from its
                // lock-free first line: every stored edge is visible, so its degrees are
                // its list lengths, and its current aggregates predate t.
                let hot = self.graph.hot_view(t, n).filter(|h| {
                    h.agg.l_ms != i64::MIN
                        && epoch_secs(h.agg.l_ms) < t_s
                        && h.degrees[..ports].iter().all(|&d| d != u16::MAX)
                });
                if let Some(h) = hot {
                    for (d, &stored) in degrees.iter_mut().zip(&h.degrees[..ports]) {
                        *d = usize::from(stored);
                    }
                    let agg = Some(h.agg.at(t_ms));
                    features::node_features_before_logs(
                        agg,
                        h.first_ms,
                        t_ms,
                        &degrees[..ports],
                        out,
                    );
                } else {
                    self.graph.with_node(t, n, |node| {
                        let quiet = node.quiet_since(t_s);
                        for (d, list) in degrees.iter_mut().zip(node.ports.iter()) {
                            // Lists are ordered by last sighting: only the tail seen at
                            // or after t needs a closer look.
                            let settled = settled_len(list, quiet, t_s);
                            *d = settled
                                + list[settled..]
                                    .iter()
                                    .filter(|e| e.as_of(t_s).is_some())
                                    .count();
                        }
                        features::node_features_before_logs(
                            node.aggregates_at(t_ms),
                            node.first_ms,
                            t_ms,
                            &degrees[..ports],
                            out,
                        );
                    });
                }
                None
            }
            None => {
                features::new_node_features(t, out);
                let key: Box<str> = key.expect("an unseen node is named by the caller").into();
                self.rows.by_key.insert((t, key.clone()), r);
                Some(key)
            }
        };
        self.sub.nodes[t.index()].push(SampledNode { node, new_key, hop });
        r
    }

    /// Adds an edge between two rows unless it is there already. `found_once` says that
    /// it cannot be found again (its far end was first reached at the last hop, so never
    /// expands, and the node expanded finds each neighbour once): it is then not looked up
    /// or recorded, which most of a subgraph's edges need not be.
    fn edge(
        &mut self,
        relation: Relation,
        src: u32,
        dst: u32,
        view: Option<&EdgeView>,
        target: bool,
        found_once: bool,
    ) {
        if !found_once && !self.rows.edges.insert((relation, src, dst)) {
            return;
        }
        self.sub.edge_index[relation.index()].push((src, dst));
        // Its logarithm columns are left for [`take_logs`].
        let out = &mut self.sub.edge_features[relation.index()];
        match view {
            Some(v) => features::edge_features_before_logs(v, self.t_s, target, out),
            None => features::new_edge_features(out),
        }
    }
}

/// A small seeded generator for weighted neighbour choice.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How many frontier nodes ahead of the one being expanded have their edges on the way
/// (and twice as many, the nodes themselves).
const AHEAD: usize = 8;

/// Nodes of a typical subgraph, to size the sampler's scratch maps.
const EXPECTED_NODES: usize = 512;
/// Rows per node type and edges per relation of a typical 20/10/5 subgraph at the head of
/// a stream (~50–70 and ~50–120 on the simulated world), to size its arrays so that they
/// are not grown row by row.
const EXPECTED_ROWS: usize = 96;
const EXPECTED_EDGES: usize = 128;

/// Samples the neighbourhood of `txn` as of its event time. The caller
/// validates the transaction first.
pub fn sample(graph: &Graph, txn: &Transaction, config: &SamplerConfig) -> Subgraph {
    let mut out = Subgraph::sized_for(graph);
    sample_into(graph, txn, config, &mut out);
    out
}

/// [`sample`] into `out`, replacing what it held and reusing its memory: for a caller
/// that samples one transaction after another and is done with each subgraph before the
/// next (`fraudgraph bench sampler`), so that sampling allocates nothing once the arrays
/// have grown to the largest subgraph seen.
pub fn sample_into(graph: &Graph, txn: &Transaction, config: &SamplerConfig, out: &mut Subgraph) {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => sample_with(graph, txn, config, &mut scratch, out),
        // Only if a sample were ever taken inside another on one thread.
        Err(_) => sample_with(graph, txn, config, &mut Scratch::new(), out),
    })
}

/// [`sample`] with the given working memory.
fn sample_with(
    graph: &Graph,
    txn: &Transaction,
    config: &SamplerConfig,
    scratch: &mut Scratch,
    out: &mut Subgraph,
) {
    scratch.reset();
    out.reset(&txn.txn_id, txn.event_time_ms);
    let Scratch {
        rows,
        own,
        frontier,
        next,
        candidates,
        choose: choose_scratch,
        chosen,
        chosen_ends,
        sequence,
        offsets,
    } = scratch;
    let t_ms = txn.event_time_ms;
    let t_s = epoch_secs(t_ms);
    let mut b = Builder {
        graph,
        t_ms,
        t_s,
        sub: out,
        rows,
    };
    // Hop 0 is the account; the transaction's other entities (seen before t
    // or new) are at hop 1 with the account's own sampled neighbours. The
    // subgraph is centred on the payer, as the reference system's is.
    let visible = |t: NodeType, key: &str| {
        graph
            .lookup(t, key)
            .filter(|&n| graph.with_node(t, n, |node| node.first_ms < t_ms))
    };
    let account = visible(NodeType::Account, &txn.account_id);
    let (account_row, _) = b.row(NodeType::Account, &txn.account_id, account, 0);
    b.sub.own_rows[NodeType::Account.index()] = Some(account_row);
    // Known own entities (`own`) are expanded at hop 2 like the account's neighbours.
    for (relation, src_key, dst_key) in edges_of(txn) {
        let (st, dt) = relation.endpoints();
        let (sn, dn) = (visible(st, src_key), visible(dt, dst_key));
        let (sr, s_new) = b.row(st, src_key, sn, 1);
        let (dr, d_new) = b.row(dt, dst_key, dn, 1);
        if relation == Relation::AccountAccount {
            b.sub.counterparty_row = Some(dr);
        }
        for (is_new, t, n, row) in [(s_new, st, sn, sr), (d_new, dt, dn, dr)] {
            if is_new {
                if relation != Relation::AccountAccount && b.sub.own_rows[t.index()].is_none() {
                    b.sub.own_rows[t.index()] = Some(row);
                }
                b.sub.hops = 1;
                if let Some(n) = n {
                    own.push((t, n, row));
                }
            }
        }
        // The transaction's own edge, with what the graph knew of it before.
        let view = sn.zip(dn).and_then(|(s, d)| {
            let port = ports(st)
                .iter()
                .position(|p| *p == (relation, Side::Out))
                .expect("out port");
            graph.with_node(st, s, |node| {
                node.ports[port]
                    .iter()
                    .find(|e| e.nbr == d)
                    .and_then(|e| e.as_of(t_s))
            })
        });
        b.edge(relation, sr, dr, view.as_ref(), true, false);
    }

    // Hops 1..=3: every node first reached at the hop before adds up to
    // `fanouts[hop - 1]` neighbours.
    let mut rng = SplitMix(config.seed ^ (txn_hash(&txn.txn_id) as u64));
    frontier.extend(account.map(|a| (NodeType::Account, a, account_row)));
    let most_recent = config.strategy == Strategy::MostRecent;
    for (hop, &fanout) in config.fanouts.iter().enumerate() {
        let last_hop = hop + 1 == config.fanouts.len();
        let hop = hop as u8 + 1;
        next.clear();
        if hop == 1 {
            next.append(own);
        }
        chosen.clear();
        chosen_ends.clear();
        // Keep the frontier nodes `2 * AHEAD` ahead of the one being expanded on their
        // way, and the newest edges of those `AHEAD` ahead (by then their nodes, which say
        // where the edges are, have arrived): their misses overlap instead of queueing one
        // after the other, and a large frontier does not flood the caches.
        for &(t, n, _) in frontier.iter().take(2 * AHEAD) {
            graph.prefetch_node(t, n, Intent::Read);
        }
        for &(t, n, _) in frontier.iter().take(AHEAD) {
            graph.prefetch_newest_edges(t, n, fanout + 2);
        }
        for (i, &(t, n, _)) in frontier.iter().enumerate() {
            if let Some(&(t, n, _)) = frontier.get(i + 2 * AHEAD) {
                graph.prefetch_node(t, n, Intent::Read);
            }
            if let Some(&(t, n, _)) = frontier.get(i + AHEAD) {
                graph.prefetch_newest_edges(t, n, fanout + 2);
            }
            candidates.clear();
            let merged = graph.with_node(t, n, |node| {
                // A node quiet since t (most of them, at the head of a stream) has its
                // newest edges merged straight from its lists; otherwise, or on a tie only
                // the neighbour ids order, the visible edges that can be chosen are listed
                // and chosen among.
                let merged = most_recent
                    && node.quiet_since(t_s)
                    && newest_of_quiet(node, t, fanout, candidates);
                if !merged {
                    visible_edges(node, t, t_s, most_recent.then_some(fanout), candidates);
                }
                merged
            });
            if !merged {
                choose(
                    candidates,
                    fanout,
                    config.strategy,
                    &mut rng,
                    choose_scratch,
                );
            }
            // Start loading every chosen neighbour's first line now, and read none of them
            // before the whole frontier has chosen: the misses of all its neighbours
            // overlap instead of a node's few at a time.
            for &(relation, side, view) in candidates.iter() {
                let (st, dt) = relation.endpoints();
                graph.touch(if side == Side::Out { dt } else { st }, view.nbr);
            }
            chosen.extend_from_slice(candidates);
            chosen_ends.push(chosen.len());
        }
        // Then the rows and edges, frontier node by frontier node, in the order chosen.
        let mut from = 0;
        for (&(_, _, src_row), &to) in frontier.iter().zip(chosen_ends.iter()) {
            for &(relation, side, view) in &chosen[from..to] {
                let (st, dt) = relation.endpoints();
                let nbr_t = if side == Side::Out { dt } else { st };
                let (nbr_row, is_new) = b.row_of(nbr_t, view.nbr, hop);
                if is_new {
                    next.push((nbr_t, view.nbr, nbr_row));
                    b.sub.hops = hop;
                }
                let (sr, dr) = if side == Side::Out {
                    (src_row, nbr_row)
                } else {
                    (nbr_row, src_row)
                };
                b.edge(relation, sr, dr, Some(&view), false, is_new && last_hop);
            }
            from = to;
        }
        std::mem::swap(frontier, next);
    }

    transaction_features(&mut b, txn, account, sequence, offsets);
    take_logs(b.sub);
}

/// Takes the logarithms the node and edge rows were left with ([`Builder::add`],
/// [`Builder::edge`]), every row of the subgraph in one pass per array: the rows are then
/// exactly what [`features::node_features`] and [`features::edge_features`] give.
fn take_logs(sub: &mut Subgraph) {
    for t in NodeType::ALL {
        features::ln1p_columns(
            &mut sub.node_features[t.index()],
            features::node_width(t),
            &features::NODE_LOG_COLUMNS,
        );
    }
    for rows in &mut sub.edge_features {
        features::ln1p_columns(
            rows,
            features::EDGE_FEATURES.len(),
            &features::EDGE_LOG_COLUMNS,
        );
    }
}

/// How many edges at the front of `list` (ordered by last sighting) were last
/// seen before `t_s`, so are visible with their full statistics: all of them
/// when the node has been `quiet` since `t_s`.
fn settled_len(list: &[crate::graph::Edge], quiet: bool, t_s: u32) -> usize {
    if quiet {
        list.len()
    } else {
        list.partition_point(|e| e.last_s < t_s)
    }
}

/// Appends the edges of `node` (of type `t`) visible as of `t_s` to `out`.
/// With `keep = Some(k)` (most-recent sampling) only edges that can be among
/// the `k` most recent of the node: per relation side, the last `k` settled
/// edges (and any tied with the k-th) plus the visible ones of the tail seen
/// at or after `t_s`, whose views move back in time.
fn visible_edges(
    node: &crate::graph::Node,
    t: NodeType,
    t_s: u32,
    keep: Option<usize>,
    out: &mut Vec<Candidate>,
) {
    let quiet = node.quiet_since(t_s);
    for (&(relation, side), list) in ports(t).iter().zip(node.ports.iter()) {
        let settled = settled_len(list, quiet, t_s);
        out.extend(
            list[settled..]
                .iter()
                .filter_map(|e| e.as_of(t_s).map(|v| (relation, side, v))),
        );
        let settled = &list[..settled];
        let from = match keep {
            Some(0) => settled.len(),
            Some(k) if settled.len() > k => {
                let mut from = settled.len() - k;
                let boundary = settled[from].last_s;
                while from > 0 && settled[from - 1].last_s == boundary {
                    from -= 1;
                }
                from
            }
            _ => 0,
        };
        out.extend(settled[from..].iter().map(|e| (relation, side, e.view())));
    }
}

/// Appends the `k` most recent edges of `node` (of type `t`), which must be quiet since the
/// target's time (every stored edge visible with its full statistics), in [`newest_first`]
/// order, by merging its lists from their newest ends: what [`visible_edges`] and
/// [`choose`] give, without a candidate list or a sort. The lists are each ordered by last
/// sighting and [`ports`] lists a type's relation sides in canonical order, so the merge
/// breaks ties between lists as the canonical order does; two edges of one list seen in the
/// same second are ordered by neighbour, which the merge does not do, so on such a tie it
/// returns `false` and leaves `out` as it was.
fn newest_of_quiet(
    node: &crate::graph::Node,
    t: NodeType,
    k: usize,
    out: &mut Vec<Candidate>,
) -> bool {
    let sides = ports(t);
    let mut lists: [&[crate::graph::Edge]; MAX_PORTS] = [&[]; MAX_PORTS];
    for (list, port) in lists.iter_mut().zip(node.ports.iter()) {
        *list = port;
    }
    let lists = &mut lists[..sides.len()];
    let start = out.len();
    while out.len() - start < k {
        // The list whose newest remaining edge is the newest; the first such list on a tie.
        let mut best: Option<(usize, u32)> = None;
        for (p, list) in lists.iter().enumerate() {
            if let Some(e) = list.last()
                && best.is_none_or(|(_, newest)| e.last_s > newest)
            {
                best = Some((p, e.last_s));
            }
        }
        let Some((p, last_s)) = best else { break };
        let (&edge, rest) = lists[p].split_last().expect("chosen list is not empty");
        if rest.last().is_some_and(|e| e.last_s == last_s) {
            out.truncate(start);
            return false;
        }
        let (relation, side) = sides[p];
        out.push((relation, side, edge.view()));
        lists[p] = rest;
    }
    true
}

/// A candidate neighbour: the relation, which side of it the expanded node is on, and the
/// edge as of the target's time.
type Candidate = (Relation, Side, EdgeView);

/// The canonical order of candidates for most-recent sampling: newest last sighting first,
/// then relation, side (out first) and neighbour.
fn newest_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.2.last_s
        .cmp(&a.2.last_s)
        .then(a.0.cmp(&b.0))
        .then((a.1 == Side::In).cmp(&(b.1 == Side::In)))
        .then(a.2.nbr.cmp(&b.2.nbr))
}

/// Bits of a [`SortKey`] below the candidate's order (its index among the candidates).
const KEY_INDEX_BITS: u32 = 27;

/// A candidate's place in [`newest_first`] order except for the neighbour, packed in the
/// high bits of a `u64` (newest first, then relation, then side), with its index in the low
/// [`KEY_INDEX_BITS`]: sorting these 8-byte keys moves far less than sorting 32-byte
/// candidates, and one integer comparison replaces four chained ones.
type SortKey = u64;

fn sort_key(x: &Candidate, index: usize) -> SortKey {
    (u64::from(u32::MAX - x.2.last_s) << 32)
        | ((x.0.index() as u64) << 28)
        | (u64::from(x.1 == Side::In) << KEY_INDEX_BITS)
        | index as u64
}

/// The key without the index: equal for candidates that only their neighbour orders.
fn key_order(key: SortKey) -> u64 {
    key >> KEY_INDEX_BITS
}

/// Scratch space of [`choose`], reused from one expanded node to the next.
#[derive(Default)]
struct ChooseScratch {
    keys: Vec<SortKey>,
    sorted: Vec<Candidate>,
}

/// The `k` first of `c` in [`newest_first`] order, by a plain sort of the candidates.
fn sort_newest_first(c: &mut Vec<Candidate>, k: usize) {
    c.sort_unstable_by(newest_first);
    c.truncate(k);
}

/// Keeps at most `k` candidates, the most recent or a weighted draw, in a canonical order
/// that does not depend on how they are stored: the stored order changes when the target
/// itself is applied (its edge moves to the end of the list), and sampling before and after
/// that, or a retry, must give the same subgraph row for row.
fn choose(
    c: &mut Vec<Candidate>,
    k: usize,
    strategy: Strategy,
    rng: &mut SplitMix,
    scratch: &mut ChooseScratch,
) {
    if k == 0 {
        c.clear();
        return;
    }
    match strategy {
        Strategy::MostRecent => {
            if c.len() >= 1 << KEY_INDEX_BITS {
                // More candidates than a key can index (a cap of millions): the plain way.
                sort_newest_first(c, k);
                return;
            }
            let keys = &mut scratch.keys;
            keys.clear();
            keys.extend(c.iter().enumerate().map(|(i, x)| sort_key(x, i)));
            if keys.len() > k {
                keys.select_nth_unstable(k);
                let first_out = keys[k];
                let last_in = keys[..k].iter().copied().max().expect("k > 0");
                if key_order(last_in) == key_order(first_out) {
                    // The k-th and the (k+1)-th differ only by neighbour, which the keys do
                    // not hold (rare: two edges of one relation side seen in one second).
                    sort_newest_first(c, k);
                    return;
                }
                keys.truncate(k);
            }
            keys.sort_unstable();
            let sorted = &mut scratch.sorted;
            sorted.clear();
            sorted.extend(
                keys.iter()
                    .map(|&key| c[(key & ((1 << KEY_INDEX_BITS) - 1)) as usize]),
            );
            // Runs that only the neighbour orders, in neighbour order.
            for run in sorted.chunk_by_mut(|a, b| (a.0, a.1, a.2.last_s) == (b.0, b.1, b.2.last_s))
            {
                run.sort_unstable_by_key(|x| x.2.nbr);
            }
            std::mem::swap(c, sorted);
        }
        Strategy::Weighted => {
            // Draws in the canonical order too.
            c.sort_unstable_by_key(|(r, side, v)| (*r, *side == Side::In, v.nbr));
            if c.len() <= k {
                return;
            }
            // Efraimidis–Spirakis: keep the k largest u^(1/w).
            let mut keyed: Vec<(f64, (Relation, Side, EdgeView))> = c
                .drain(..)
                .map(|x| {
                    (
                        rng.next_f64()
                            .max(1e-300)
                            .powf(1.0 / f64::from(x.2.count.max(1))),
                        x,
                    )
                })
                .collect();
            keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
            c.extend(keyed.into_iter().take(k).map(|(_, x)| x));
        }
    }
}

/// The transaction's features and the account's sequence before it; `seq` and `offsets` are
/// the caller's reused buffers (empty).
fn transaction_features(
    b: &mut Builder<'_, '_>,
    txn: &Transaction,
    account: Option<NodeRef>,
    seq: &mut Vec<SeqItem>,
    offsets: &mut Vec<i16>,
) {
    let t_ms = b.t_ms;
    let offset = txn.client_utc_offset_minutes;
    let local_ms = t_ms + i64::from(offset.unwrap_or(0)) * 60_000;
    let hour =
        (local_ms.rem_euclid(86_400_000)) as f32 / 3_600_000.0 * std::f32::consts::TAU / 24.0;
    let channel = txn.channel;
    // The account's history before t.
    // Entities looked up first: one lock at a time.
    let lookup = |t: NodeType, key: Option<&str>| key.and_then(|k| b.graph.lookup(t, k));
    let entities = [
        (
            Relation::AccountDevice,
            lookup(NodeType::Device, txn.device_id.as_deref()),
        ),
        (Relation::AccountIp, lookup(NodeType::Ip, txn.ip.as_deref())),
        (
            Relation::AccountMerchant,
            lookup(NodeType::Merchant, Some(&txn.merchant_id)),
        ),
    ];
    let merchant = entities[2].1;
    let known = match account {
        Some(a) => b.graph.with_node(NodeType::Account, a, |node| {
            let own = txn_hash(&txn.txn_id) as u64;
            seq.extend(
                node.sequence
                    .iter()
                    .filter(|s| s.time_ms < t_ms && s.txn_hash != own),
            );
            entities.map(|(relation, nbr)| {
                nbr.is_some_and(|nbr| {
                    let port = ports(NodeType::Account)
                        .iter()
                        .position(|p| *p == (relation, Side::Out))
                        .expect("account out port");
                    node.ports[port]
                        .iter()
                        .any(|e| e.nbr == nbr && e.as_of(b.t_s).is_some())
                })
            })
        }),
        None => [false; 3],
    };
    let seq = &*seq;
    // The account's usual UTC offset: the most frequent among its sequence, the largest on
    // a tie (counted by sorting a copy: a sequence holds a few dozen elements).
    let usual_offset = {
        offsets.extend(
            seq.iter()
                .map(|s| s.utc_offset_min)
                .filter(|&o| o != i16::MIN),
        );
        offsets.sort_unstable();
        offsets
            .chunk_by(|a, b| a == b)
            .map(|run| (run.len(), run[0]))
            .max()
            .map(|(_, o)| o)
    };
    let mean_amount = if seq.is_empty() {
        0.0
    } else {
        seq.iter().map(|s| s.amount).sum::<f32>() / seq.len() as f32
    };
    let amount = txn.amount_minor as f32;
    let since_last = seq
        .last()
        .map_or(0.0, |s| ln1p((t_ms - s.time_ms) as f32 / 1000.0));
    let f = &mut b.sub.txn_features;
    f.extend_from_slice(&[
        ln1p(amount),
        hour.sin(),
        hour.cos(),
        f32::from(u8::from(channel == 1)),
        f32::from(u8::from(channel == 2)),
        f32::from(u8::from(channel == 3)),
        f32::from(u8::from(channel == 4)),
        f32::from(u8::from(txn.device_id.is_some())),
        f32::from(u8::from(txn.ip.is_some())),
        f32::from(u8::from(txn.card_id.is_some())),
        txn.mcc as f32 / 10_000.0,
        f32::from(u8::from(offset.is_some())),
        f32::from(u8::from(
            matches!((offset, usual_offset), (Some(o), Some(u)) if o != i32::from(u)),
        )),
        f32::from(u8::from(txn.device_id.is_some() && !known[0])),
        f32::from(u8::from(txn.ip.is_some() && !known[1])),
        f32::from(u8::from(!known[2])),
        since_last,
        if mean_amount > 0.0 {
            ln1p(amount / mean_amount)
        } else {
            0.0
        },
    ]);
    for s in seq {
        let h =
            (s.time_ms.rem_euclid(86_400_000)) as f32 / 3_600_000.0 * std::f32::consts::TAU / 24.0;
        b.sub.sequence.extend_from_slice(&[
            ln1p(s.amount),
            ln1p((t_ms - s.time_ms) as f32 / 1000.0),
            h.sin(),
            h.cos(),
            f32::from(s.channel) / 4.0,
            f32::from(s.mcc) / 10_000.0,
            f32::from(u8::from(Some(s.merchant) == merchant)),
        ]);
    }
    b.sub.sequence_len = seq.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_scratch_gives_back_what_an_unusually_large_sample_grew() {
        let mut scratch = Scratch::new();
        scratch.chosen.reserve(2 * SCRATCH_KEEP * EXPECTED_NODES);
        scratch.rows.by_ref.insert(1, 1);
        scratch.reset();
        assert!(scratch.chosen.capacity() <= SCRATCH_KEEP * EXPECTED_NODES);
        assert!(scratch.rows.by_ref.is_empty());
        // A typical one keeps its memory for the next sample.
        scratch.chosen.reserve(EXPECTED_NODES);
        let kept = scratch.chosen.capacity();
        let view = EdgeView {
            nbr: NodeRef(0),
            first_s: 0,
            last_s: 0,
            count: 1,
            amount: 1.0,
        };
        scratch
            .chosen
            .push((Relation::AccountDevice, Side::Out, view));
        scratch.reset();
        assert!(scratch.chosen.is_empty());
        assert_eq!(scratch.chosen.capacity(), kept);
    }

    #[test]
    fn most_recent_keeps_the_newest_in_their_canonical_order() {
        // Candidates in a scrambled storage order, with times from a handful of distinct
        // seconds (ties on last sighting everywhere, broken by relation, side, then
        // neighbour, also at the k-th place) to nearly all distinct; one scratch space
        // reused throughout, as the sampler does.
        let mut scratch = ChooseScratch::default();
        for (seed, spread) in [(42, 6), (7, 2), (3, 50), (11, 100_000)] {
            let mut rng = SplitMix(seed);
            let mut draw = |n: u64| (rng.next_f64() * n as f64) as u32;
            let all: Vec<Candidate> = (0..60)
                .map(|_| {
                    let relation = Relation::ALL[draw(Relation::ALL.len() as u64) as usize];
                    let side = if draw(2) == 0 { Side::Out } else { Side::In };
                    let view = EdgeView {
                        nbr: NodeRef(draw(8)),
                        first_s: 0,
                        last_s: 1_000 + draw(spread) * 1_000,
                        count: 1,
                        amount: 1.0,
                    };
                    (relation, side, view)
                })
                .collect();
            // Written out again here, so that a change to the order in `choose` fails.
            let explicit = |a: &Candidate, b: &Candidate| {
                b.2.last_s
                    .cmp(&a.2.last_s)
                    .then(a.0.cmp(&b.0))
                    .then((a.1 == Side::In).cmp(&(b.1 == Side::In)))
                    .then(a.2.nbr.cmp(&b.2.nbr))
            };
            for k in [1, 2, 3, 5, 10, 20, 59, 60, 61, 100] {
                let mut chosen = all.clone();
                choose(
                    &mut chosen,
                    k,
                    Strategy::MostRecent,
                    &mut SplitMix(0),
                    &mut scratch,
                );
                let mut want = all.clone();
                want.sort_by(explicit);
                want.truncate(k);
                assert_eq!(chosen, want, "seed {seed}, spread {spread}, k = {k}");
            }
        }
    }

    #[test]
    fn merging_a_quiet_nodes_lists_chooses_what_the_general_path_chooses() {
        use crate::adjacency::Adjacency;
        use crate::graph::{Edge, Node};
        // Relation sides are listed in canonical order, which the merge relies on.
        for t in NodeType::ALL {
            let order: Vec<_> = ports(t).iter().map(|&(r, s)| (r, s == Side::In)).collect();
            assert!(order.is_sorted(), "{t:?} ports out of canonical order");
        }
        let t_s = 10_000_000;
        let mut rng = SplitMix(5);
        let mut draw = |n: u64| (rng.next_f64() * n as f64) as u32;
        let (mut merged_count, mut tie_count) = (0, 0);
        let mut scratch = ChooseScratch::default();
        for round in 0..400 {
            let t = NodeType::ALL[round % NodeType::ALL.len()];
            // Few distinct seconds in some rounds (ties within and across lists), many in
            // others; every edge seen before t, as in a quiet node.
            let spread = [3, 40, 5_000][round % 3];
            let lists: Vec<Vec<Edge>> = ports(t)
                .iter()
                .map(|_| {
                    let mut list: Vec<Edge> = (0..draw(30))
                        .map(|i| Edge::new(NodeRef(i * 7 + draw(7)), t_s - 1 - draw(spread), 1.0))
                        .collect();
                    list.sort_by_key(|e| e.last_s);
                    list
                })
                .collect();
            let mut node = Node::new("n", t, 0);
            node.agg.l_ms = i64::from(t_s - 1) * 1000;
            node.ports = Adjacency::from_lists(lists).expect("at most six lists");
            assert!(node.quiet_since(t_s));
            for k in [0, 1, 5, 10, 20, 200] {
                let mut want = Vec::new();
                visible_edges(&node, t, t_s, Some(k), &mut want);
                choose(
                    &mut want,
                    k,
                    Strategy::MostRecent,
                    &mut SplitMix(0),
                    &mut scratch,
                );
                let mut got = Vec::new();
                if newest_of_quiet(&node, t, k, &mut got) {
                    merged_count += 1;
                    assert_eq!(got, want, "round {round}, {t:?}, k = {k}");
                } else {
                    tie_count += 1;
                    assert!(got.is_empty(), "a refused merge leaves the list as it was");
                }
            }
        }
        // Both outcomes happened, so both were checked.
        assert!(
            merged_count > 1_000 && tie_count > 100,
            "{merged_count} merged, {tie_count} ties"
        );
    }
}
