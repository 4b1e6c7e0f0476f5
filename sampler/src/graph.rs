//! The live graph: nodes of every type with their rolling state, typed edges
//! with their statistics, and the account's recent transactions.
//!
//! # Concurrency
//! One writer (the Kafka applier, or a Score call that applies its
//! transaction) and many concurrent samplers. Nodes of each type live in
//! [`SHARDS`] shards, each behind its own `parking_lot::RwLock`; a node is in
//! the shard its id hashes to. Nobody ever holds two shard locks at once: the
//! writer updates one endpoint of an edge, releases, then the other, and a
//! sampler reads one node at a time. So a reader waits at most for one node
//! update (a few hundred nanoseconds), never for a whole batch, and there is
//! no lock ordering to get wrong. The price: a reader may see a transaction
//! half-applied (one endpoint updated, the other not yet). Sampling is causal
//! by time (see below), so a half-applied transaction at time `t` is
//! invisible to any target before `t` anyway.
//!
//! # Time and causality
//! Everything the graph stores carries event times, so the sampler can show
//! the graph exactly as of an instant `t`: edges whose first sighting is
//! before `t`, edge statistics with the updates at or after `t` taken out, and
//! node aggregates from a checkpoint taken before `t` (see [`Node`]).
//!
//! # Bounds
//! Each node keeps at most `adjacency_cap` edges per relation side; when a new
//! neighbour arrives at a full list, the least recently seen edge is dropped
//! from both of its endpoints, so no edge is ever half-stored. Each list is
//! kept ordered by last sighting (oldest first): the oldest edge is the one
//! to drop, the edges a target at `t` may see only partly are at the end, and
//! the most recent neighbours are a slice, not a scan.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use fraudgraph_proto::v1::Transaction;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashSet;

use crate::adjacency::Adjacency;
use crate::hot::{HotTable, HotView};
use crate::id_index::{IdHash, IdIndex};
use crate::node_key::NodeKey;
use crate::prefetch::{Intent, prefetch, prefetch_tail};
use crate::schema::{NodeType, Relation, edges_of};

/// Shards per node type.
pub const SHARDS: usize = 64;
pub(crate) const SHARD_BITS: u32 = 6;

/// Event times are stored on edges as seconds since this instant
/// (2020-01-01T00:00:00Z), in a `u32`: good until 2156.
pub const EPOCH_MS: i64 = 1_577_836_800_000;

/// Seconds since [`EPOCH_MS`], saturating.
pub fn epoch_secs(ms: i64) -> u32 {
    ((ms - EPOCH_MS).div_euclid(1000)).clamp(0, i64::from(u32::MAX)) as u32
}

/// [`Graph::apply_evicting`] runs an idle-eviction pass each time the newest applied event
/// time enters a new period of the retention divided by this (22.5 h of event time for the
/// default 30 days, so nothing outlives its retention by more than that).
pub const EVICTION_PERIODS_PER_RETENTION: i64 = 32;

/// Time constants of the node aggregates: 1 hour, 24 hours, 7 days.
pub const WINDOWS_MS: [i64; 3] = [3_600_000, 86_400_000, 604_800_000];

/// Tunables of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    /// Most edges one node keeps per relation side (most recent kept).
    pub adjacency_cap: usize,
    /// Transactions older than the newest applied event time minus this are
    /// refused as too late.
    pub late_window_ms: i64,
    /// How long applied txn_ids are remembered, by event time, to make apply
    /// idempotent. At least `late_window_ms`.
    pub dedupe_window_ms: i64,
    /// Recent transactions each account keeps for temporal attention.
    pub sequence_len: usize,
    /// Aggregate checkpoints a node keeps for targets slightly in the past.
    pub checkpoints: usize,
    /// [`Graph::evict_idle`] drops edges and nodes idle longer than this,
    /// by event time. Longer than `late_window_ms`.
    pub retention_ms: i64,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            adjacency_cap: 64,
            late_window_ms: 3_600_000,
            dedupe_window_ms: 86_400_000,
            sequence_len: 32,
            checkpoints: 4,
            retention_ms: 30 * 86_400_000,
        }
    }
}

/// A node's address: its type is known from context, this is (slot, shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef(pub u32);

impl NodeRef {
    fn new(shard: usize, slot: usize) -> Self {
        NodeRef(((slot as u32) << SHARD_BITS) | shard as u32)
    }
    pub(crate) fn shard(self) -> usize {
        (self.0 & ((1 << SHARD_BITS) - 1)) as usize
    }
    pub(crate) fn slot(self) -> usize {
        (self.0 >> SHARD_BITS) as usize
    }
}

/// Which end of a relation a node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node is the relation's source.
    Out,
    /// The node is the relation's destination.
    In,
}

impl Side {
    /// The other end's side.
    pub fn flip(self) -> Side {
        match self {
            Side::Out => Side::In,
            Side::In => Side::Out,
        }
    }
}

/// The relation sides each node type has, in the order of `Node::ports`.
pub fn ports(t: NodeType) -> &'static [(Relation, Side)] {
    use Relation::*;
    use Side::*;
    match t {
        NodeType::Account => &[
            (AccountDevice, Out),
            (AccountIp, Out),
            (AccountMerchant, Out),
            (AccountCard, Out),
            (AccountAccount, Out),
            (AccountAccount, In),
        ],
        NodeType::Device => &[(AccountDevice, In), (DeviceIp, Out)],
        NodeType::Ip => &[(AccountIp, In), (DeviceIp, In)],
        NodeType::Merchant => &[(AccountMerchant, In), (CardMerchant, In)],
        NodeType::Card => &[(AccountCard, In), (CardMerchant, Out)],
    }
}

fn port_of(t: NodeType, relation: Relation, side: Side) -> usize {
    ports(t)
        .iter()
        .position(|p| *p == (relation, side))
        .expect("every relation side belongs to its endpoint type")
}

/// One edge as stored at one endpoint: the other endpoint and the edge's
/// statistics (28 bytes). Both endpoints hold the same statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    /// The other endpoint.
    pub nbr: NodeRef,
    /// First sighting, [`epoch_secs`].
    pub first_s: u32,
    /// Latest sighting, [`epoch_secs`].
    pub last_s: u32,
    /// The latest sighting before `last_s` (equal to `first_s` at count 1).
    pub prev_last_s: u32,
    /// Transactions over this edge.
    pub count: u32,
    /// Their total amount, minor units.
    pub amount: f32,
    /// The amount of the latest one.
    pub last_amount: f32,
}

/// An edge's statistics as of an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeView {
    /// The other endpoint.
    pub nbr: NodeRef,
    /// First sighting, [`epoch_secs`].
    pub first_s: u32,
    /// Latest sighting before the instant.
    pub last_s: u32,
    /// Transactions before the instant.
    pub count: u32,
    /// Their total amount.
    pub amount: f32,
}

impl Edge {
    /// A first sighting at `time_s`.
    pub fn new(nbr: NodeRef, time_s: u32, amount: f32) -> Self {
        Edge {
            nbr,
            first_s: time_s,
            last_s: time_s,
            prev_last_s: time_s,
            count: 1,
            amount,
            last_amount: amount,
        }
    }

    /// The full statistics, for an edge last seen before the instant asked.
    pub fn view(&self) -> EdgeView {
        EdgeView {
            nbr: self.nbr,
            first_s: self.first_s,
            last_s: self.last_s,
            count: self.count,
            amount: self.amount,
        }
    }

    /// This edge as of `t_s` (seconds): `None` when it was first seen at or
    /// after `t_s`, or when two or more of its updates are at or after `t_s`
    /// (their contribution cannot be taken out exactly, so the edge is hidden
    /// rather than shown with future information).
    pub fn as_of(&self, t_s: u32) -> Option<EdgeView> {
        if self.first_s >= t_s {
            return None;
        }
        if self.last_s < t_s {
            return Some(self.view());
        }
        (self.prev_last_s < t_s && self.count >= 2).then(|| EdgeView {
            nbr: self.nbr,
            first_s: self.first_s,
            last_s: self.prev_last_s,
            count: self.count - 1,
            amount: (self.amount - self.last_amount).max(0.0),
        })
    }
}

/// Decayed aggregates of a node's transactions up to `l_ms`: for each window
/// in [`WINDOWS_MS`] a decayed count and amount, and the decayed sum of the
/// transactions' hour-of-day on the unit circle (cos, sin) over 7 days.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregates {
    /// The newest event time included, Unix ms.
    pub l_ms: i64,
    /// `[count_1h, count_24h, count_7d, amount_1h, amount_24h, amount_7d, hour_cos, hour_sin]`.
    pub v: [f32; 8],
}

impl Aggregates {
    fn new() -> Self {
        Aggregates {
            l_ms: i64::MIN,
            v: [0.0; 8],
        }
    }

    /// The decay over `dt_ms` of each of the 8 values (one `exp` per window).
    fn decay(dt_ms: i64) -> [f32; 8] {
        let [h, d, w] = WINDOWS_MS.map(|window| (-(dt_ms as f64) / window as f64).exp() as f32);
        [h, d, w, h, d, w, w, w]
    }

    fn add(&mut self, t_ms: i64, amount: f32) {
        let hour =
            ((t_ms.rem_euclid(86_400_000)) as f32 / 3_600_000.0) * std::f32::consts::TAU / 24.0;
        let values = [
            1.0,
            1.0,
            1.0,
            amount,
            amount,
            amount,
            hour.cos(),
            hour.sin(),
        ];
        if self.l_ms == i64::MIN || t_ms >= self.l_ms {
            let dt = if self.l_ms == i64::MIN {
                0
            } else {
                t_ms - self.l_ms
            };
            let decay = Self::decay(dt);
            for i in 0..8 {
                self.v[i] = self.v[i] * decay[i] + values[i];
            }
            self.l_ms = t_ms;
        } else {
            // A late event: its contribution, decayed to l_ms.
            let decay = Self::decay(self.l_ms - t_ms);
            for i in 0..8 {
                self.v[i] += values[i] * decay[i];
            }
        }
    }

    /// The aggregates decayed forward to `t_ms` (which must not be before
    /// `l_ms`); all zeros when nothing has been added yet.
    pub fn at(&self, t_ms: i64) -> [f32; 8] {
        if self.l_ms == i64::MIN {
            // Empty: `t_ms - l_ms` would overflow (a panic in debug builds, a sampler
            // thread lost with it).
            return self.v;
        }
        let decay = Self::decay((t_ms - self.l_ms).max(0));
        let mut out = self.v;
        for i in 0..8 {
            out[i] *= decay[i];
        }
        out
    }
}

/// One of an account's recent transactions, for temporal attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqItem {
    /// Event time, Unix ms.
    pub time_ms: i64,
    /// Amount, minor units.
    pub amount: f32,
    /// Merchant category code.
    pub mcc: u16,
    /// `Channel` value.
    pub channel: u8,
    /// Client UTC offset in minutes, or `i16::MIN` when unknown.
    pub utc_offset_min: i16,
    /// The merchant.
    pub merchant: NodeRef,
    /// Hash of the txn_id, so a target can leave itself out.
    pub txn_hash: u64,
}

/// Most relation sides a node type has (accounts have six).
pub const MAX_PORTS: usize = 6;

/// A node's state. Samplers read the first sighting, aggregates and list lengths of most
/// nodes from their lock-free mirror ([`crate::hot`]) instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The entity id as the caller spells it.
    pub key: NodeKey,
    /// First event time, Unix ms.
    pub first_ms: i64,
    /// Aggregates of every transaction applied.
    pub agg: Aggregates,
    /// `agg` before the latest update: exact for a target whose own
    /// transaction was applied last (score, then apply).
    pub prev: Aggregates,
    /// Older copies of `agg`, oldest first, for targets before `agg.l_ms`.
    pub history: Vec<Aggregates>,
    /// Adjacency per relation side, in [`ports`] order.
    pub ports: Adjacency,
    /// Accounts only: recent transactions in time order.
    pub sequence: VecDeque<SeqItem>,
}

impl Node {
    pub(crate) fn new(key: &str, t: NodeType, first_ms: i64) -> Self {
        Node {
            key: key.into(),
            first_ms,
            agg: Aggregates::new(),
            prev: Aggregates::new(),
            history: Vec::new(),
            ports: Adjacency::new(ports(t).len()),
            sequence: VecDeque::new(),
        }
    }

    /// True when nothing about this node happened at or after second `t_s`:
    /// then every stored edge is visible as of `t_s` with its full
    /// statistics (see the order of updates in [`Graph::apply`]).
    pub fn quiet_since(&self, t_s: u32) -> bool {
        self.agg.l_ms != i64::MIN && epoch_secs(self.agg.l_ms) < t_s
    }

    /// False for the tombstone of an evicted node.
    pub fn is_live(&self) -> bool {
        !self.key.is_empty()
    }

    /// The aggregates as of `t_ms`, from the newest state that includes only
    /// events before `t_ms`; `None` when every kept state includes later ones.
    pub fn aggregates_at(&self, t_ms: i64) -> Option<[f32; 8]> {
        if self.agg.l_ms < t_ms {
            return Some(self.agg.at(t_ms));
        }
        if self.prev.l_ms < t_ms && self.prev.l_ms != i64::MIN {
            return Some(self.prev.at(t_ms));
        }
        self.history
            .iter()
            .rev()
            .find(|a| a.l_ms < t_ms)
            .map(|a| a.at(t_ms))
    }

    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Node>()
            + self.key.heap_bytes()
            + self.history.capacity() * std::mem::size_of::<Aggregates>()
            + self.sequence.capacity() * std::mem::size_of::<SeqItem>()
    }
}

#[derive(Default)]
pub(crate) struct Shard {
    /// The slot of every live node, by id ([`IdIndex`]).
    pub(crate) index: IdIndex,
    /// Slot-addressed nodes; an evicted slot holds a tombstone (empty key).
    pub(crate) nodes: Vec<Node>,
    /// Evicted slots, reused by new nodes.
    pub(crate) free: Vec<u32>,
}

impl Shard {
    /// The slot of the node `(t, key)` (whose id hashes to `h`), created with first
    /// sighting `time_ms` in a free slot or a new one when absent; an existing node's first
    /// sighting moves back to `time_ms` if that is earlier (a late event).
    fn find_or_create(&mut self, h: IdHash, t: NodeType, key: &str, time_ms: i64) -> usize {
        if let Some(slot) = self.index.find(&self.nodes, h, key) {
            let node = &mut self.nodes[slot as usize];
            node.first_ms = node.first_ms.min(time_ms);
            return slot as usize;
        }
        let node = Node::new(key, t, time_ms);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot as usize
            }
            None => {
                assert!(
                    self.nodes.len() < (1 << (32 - SHARD_BITS)),
                    "node shard full"
                );
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.index.insert(h, slot as u32);
        slot
    }
}

/// What [`Graph::apply`] did with a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied.
    Applied,
    /// This txn_id was applied before; nothing changed.
    Duplicate,
    /// Older than the late window allows; nothing changed.
    TooLate,
}

/// Remembered txn_ids, for idempotent apply.
#[derive(Default)]
pub(crate) struct Dedupe {
    pub(crate) seen: FxHashSet<u128>,
    /// (event time, id) in arrival order, for expiry.
    pub(crate) order: VecDeque<(i64, u128)>,
    pub(crate) watermark_ms: i64,
    /// Transactions applied since the graph was created (snapshots keep it).
    pub(crate) applied: u64,
}

/// What one [`Graph::evict_idle`] pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Nodes removed.
    pub nodes: u64,
    /// Edge copies removed (two per edge).
    pub half_edges: u64,
}

/// One distinct entity of a transaction: its type, id, the ports (relation sides, a bit
/// each) the transaction touches at it, and its address once interned.
#[derive(Clone, Copy)]
struct Entity<'a> {
    t: NodeType,
    key: &'a str,
    ports: u8,
    at: NodeRef,
}

/// The distinct entities of one transaction (at most six: account, device, IP, merchant,
/// card, receiver), in order of first mention, without allocating.
#[derive(Default)]
struct Entities<'a> {
    found: [Option<Entity<'a>>; 8],
    len: usize,
}

impl<'a> Entities<'a> {
    /// The index of `(t, key)`, added the first time it is mentioned, noting that the
    /// transaction touches `port` at it.
    fn mention(&mut self, t: NodeType, key: &'a str, port: usize) -> usize {
        let i = (0..self.len)
            .find(|&i| self.found[i].is_some_and(|e| e.t == t && e.key == key))
            .unwrap_or_else(|| {
                self.found[self.len] = Some(Entity {
                    t,
                    key,
                    ports: 0,
                    at: NodeRef(0),
                });
                self.len += 1;
                self.len - 1
            });
        if let Some(e) = &mut self.found[i] {
            e.ports |= 1 << port;
        }
        i
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entity<'a>> + '_ {
        self.found[..self.len].iter_mut().flatten()
    }

    fn iter(&self) -> impl Iterator<Item = &Entity<'a>> + '_ {
        self.found[..self.len].iter().flatten()
    }

    fn get(&self, i: usize) -> Entity<'a> {
        self.found[i].expect("mentioned")
    }
}

/// How many transactions ahead of the one being applied [`Graph::prefetch_upcoming`]
/// reads: whoever applies a stream passes it the next `LOOKAHEAD`.
pub const LOOKAHEAD: usize = 3;

/// Edges of a cold node's list (and the lists after it) the writer asks for before
/// removing an edge a full list dropped: 32 edges of 28 bytes, 14-15 cache lines.
const COLD_LIST_PREFETCH_EDGES: usize = 32;

/// The edges of a transaction, each as (relation, source, destination), the endpoints
/// indices into its [`Entities`].
type TxnEdges = [Option<(Relation, usize, usize)>; Relation::ALL.len()];

/// A transaction's distinct entities, each with the ports it touches there, and its edges.
fn entities_of(txn: &Transaction) -> (Entities<'_>, TxnEdges) {
    let mut entities = Entities::default();
    let mut edges = [None; Relation::ALL.len()];
    for (slot, (relation, src_key, dst_key)) in edges.iter_mut().zip(edges_of(txn)) {
        let (src_t, dst_t) = relation.endpoints();
        let src = entities.mention(src_t, src_key, port_of(src_t, relation, Side::Out));
        let dst = entities.mention(dst_t, dst_key, port_of(dst_t, relation, Side::In));
        *slot = Some((relation, src, dst));
    }
    (entities, edges)
}

/// An edge a full list dropped, still to be removed at its other end: `node` (of type `t`)
/// holds it at `port`, to `nbr`, last seen at `last_s`.
#[derive(Clone, Copy)]
struct DroppedEdge {
    t: NodeType,
    node: NodeRef,
    port: usize,
    nbr: NodeRef,
    last_s: u32,
}

/// Counters a graph exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Nodes of each type, in [`NodeType::index`] order.
    pub nodes: [u64; NodeType::ALL.len()],
    /// Distinct edges (each stored at both endpoints, counted once).
    pub edges: u64,
    /// Bytes held by edges (both copies, with vector slack).
    pub edge_bytes: u64,
    /// Bytes held by nodes (state, ids, index entries, the lock-free first-line mirror),
    /// without edges.
    pub node_bytes: u64,
    /// Newest applied event time, Unix ms.
    pub watermark_ms: i64,
    /// Transactions applied since the graph was created, across snapshot restores (each
    /// txn_id once: duplicates and too-late events are not counted).
    pub transactions: u64,
}

/// The live graph. Share it behind an `Arc`; see the module docs for who
/// may call what concurrently.
pub struct Graph {
    pub(crate) config: GraphConfig,
    pub(crate) shards: [Box<[RwLock<Shard>]>; NodeType::ALL.len()],
    /// Per node type, the lock-free mirror of each node's first line; every writer
    /// publishes to it under the node's shard write lock.
    pub(crate) hot: [HotTable; NodeType::ALL.len()],
    pub(crate) dedupe: Mutex<Dedupe>,
}

fn hash_str(s: &str, salt: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    s.hash(&mut h);
    h.finish()
}

/// The position of the edge to `nbr`, last seen at `last_s`, in a list ordered by last
/// sighting (oldest first): an edge another list dropped as its oldest is usually among the
/// oldest here too, so the walk starts there and stops past `last_s`; should the two ends
/// of an edge ever disagree, the whole list is scanned.
fn find_edge(list: &[Edge], nbr: NodeRef, last_s: u32) -> Option<usize> {
    list.iter()
        .take_while(|e| e.last_s <= last_s)
        .position(|e| e.nbr == nbr && e.last_s == last_s)
        .or_else(|| list.iter().position(|e| e.nbr == nbr))
}

/// Whether moving the newest applied event time from `before` to `after` opens a new
/// eviction period of `retention_ms / EVICTION_PERIODS_PER_RETENTION` (at least 1 ms).
/// The first transaction of an empty graph opens none: there is nothing to evict.
fn eviction_due(before: i64, after: i64, retention_ms: i64) -> bool {
    let period = (retention_ms / EVICTION_PERIODS_PER_RETENTION).max(1);
    before != i64::MIN && after.div_euclid(period) > before.div_euclid(period)
}

/// The 128-bit hash of a txn_id used for de-duplication.
pub fn txn_hash(txn_id: &str) -> u128 {
    (u128::from(hash_str(txn_id, 1)) << 64) | u128::from(hash_str(txn_id, 2))
}

impl Graph {
    /// An empty graph.
    pub fn new(config: GraphConfig) -> Self {
        let shards =
            std::array::from_fn(|_| (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect());
        Graph {
            config,
            shards,
            hot: Default::default(),
            dedupe: Mutex::new(Dedupe {
                watermark_ms: i64::MIN,
                ..Dedupe::default()
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GraphConfig {
        &self.config
    }

    /// Event time of the newest applied transaction (`i64::MIN` while none is): what
    /// lateness and [`Graph::evict_idle`]'s cut-off are measured from.
    pub fn watermark_ms(&self) -> i64 {
        self.dedupe.lock().watermark_ms
    }

    /// The node with this id, if the graph has it.
    pub fn lookup(&self, t: NodeType, key: &str) -> Option<NodeRef> {
        let h = IdHash::of(key);
        let shard = h.shard();
        let guard = self.shards[t.index()][shard].read();
        guard
            .index
            .find(&guard.nodes, h, key)
            .map(|slot| NodeRef::new(shard, slot as usize))
    }

    /// The id of a node, `None` once it has been evicted.
    pub fn key_of(&self, t: NodeType, node: NodeRef) -> Option<String> {
        self.with_node(t, node, |n| n.is_live().then(|| n.key.to_string()))
    }

    /// A node's first sighting, aggregates and degrees, read without its shard lock (see
    /// [`crate::hot`]); `None` for an address never written.
    pub fn hot_view(&self, t: NodeType, node: NodeRef) -> Option<HotView> {
        self.hot[t.index()].read(node)
    }

    /// Starts loading a node's [`Graph::hot_view`] into the caches (a prefetch hint, which
    /// nothing waits for), so that reading it a moment later does not wait; a sampler
    /// touches the neighbours a whole frontier has chosen before it reads any, and their
    /// cache misses overlap.
    pub fn touch(&self, t: NodeType, node: NodeRef) {
        self.hot[t.index()].prefetch(node, Intent::Read);
    }

    /// Publishes every node's first line to the lock-free mirror (after a restore).
    pub(crate) fn publish_all(&self) {
        for t in NodeType::ALL {
            for (shard, lock) in self.shards[t.index()].iter().enumerate() {
                let g = lock.write();
                for (slot, n) in g.nodes.iter().enumerate() {
                    self.hot[t.index()].publish(NodeRef::new(shard, slot), n);
                }
            }
        }
    }

    /// Runs `f` on a node under its shard's read lock.
    pub fn with_node<R>(&self, t: NodeType, node: NodeRef, f: impl FnOnce(&Node) -> R) -> R {
        let guard = self.shards[t.index()][node.shard()].read();
        f(&guard.nodes[node.slot()])
    }

    /// Finds or creates the node `(t, key)` without applying anything to it (tests build
    /// graphs node by node with it).
    #[cfg(test)]
    pub(crate) fn intern(&self, t: NodeType, key: &str, time_ms: i64) -> NodeRef {
        let h = IdHash::of(key);
        let mut guard = self.shards[t.index()][h.shard()].write();
        let slot = guard.find_or_create(h, t, key, time_ms);
        let at = NodeRef::new(h.shard(), slot);
        self.hot[t.index()].publish(at, &guard.nodes[slot]);
        at
    }

    /// Drops what has been idle longer than `retention_ms` before the newest
    /// applied event: edges last seen before the cut-off (at both ends, which
    /// hold the same statistics), sequence elements before it, then nodes
    /// idle since before it that have no edge left. Call it from the writer.
    pub fn evict_idle(&self) -> Evicted {
        let watermark = self.dedupe.lock().watermark_ms;
        let mut evicted = Evicted::default();
        if watermark == i64::MIN {
            return evicted;
        }
        let cutoff_ms = watermark - self.config.retention_ms;
        let cutoff_s = epoch_secs(cutoff_ms);
        for t in NodeType::ALL {
            for (shard_index, shard) in self.shards[t.index()].iter().enumerate() {
                let mut g = shard.write();
                let Shard { index, nodes, free } = &mut *g;
                for (slot, n) in nodes.iter_mut().enumerate() {
                    if !n.is_live() {
                        continue;
                    }
                    // Most nodes have nothing to drop: look at each list's
                    // oldest edge before rewriting any.
                    let removed = if n.ports.any_last_seen_before(cutoff_s) {
                        n.ports.retain(|e| e.last_s >= cutoff_s) as u64
                    } else {
                        0
                    };
                    evicted.half_edges += removed;
                    let left = n.ports.edge_count();
                    while n.sequence.front().is_some_and(|s| s.time_ms < cutoff_ms) {
                        n.sequence.pop_front();
                    }
                    let tombstone = left == 0 && n.agg.l_ms < cutoff_ms;
                    if tombstone {
                        index.remove(IdHash::of(n.key.as_str()), slot as u32);
                        // A tombstone keeps its (empty) ports, so a sampler
                        // still holding this address reads nothing, safely.
                        *n = Node::new("", t, i64::MAX);
                        free.push(slot as u32);
                        evicted.nodes += 1;
                    }
                    // The mirror holds the adjacency lengths, not the sequence:
                    // an unchanged node's line stays as it is (a republish costs
                    // a store per word and makes concurrent readers retry).
                    if removed > 0 || tombstone {
                        self.hot[t.index()].publish(NodeRef::new(shard_index, slot), n);
                    }
                }
            }
        }
        evicted
    }

    /// Finds or creates the node `(t, key)` and adds the transaction at `time_ms` to its
    /// aggregates, under one hold of its shard's write lock. The node's mirror line is
    /// published later, once its edges are in too ([`Graph::apply`]): until then it shows
    /// the node as it stood before this transaction, a consistent older state. Starts
    /// loading what adding the edges of the `ports` (a bit each) will read
    /// ([`Graph::prefetch_for_apply`]), so that those misses overlap with interning the
    /// other entities.
    fn intern_and_add(
        &self,
        t: NodeType,
        key: &str,
        time_ms: i64,
        amount: f32,
        ports: u8,
        payer: bool,
    ) -> NodeRef {
        let h = IdHash::of(key);
        let shard = h.shard();
        let mut guard = self.shards[t.index()][shard].write();
        let slot = guard.find_or_create(h, t, key, time_ms);
        let node = &mut guard.nodes[slot];
        let at = NodeRef::new(shard, slot);
        self.prefetch_for_apply(t, at, node, time_ms, ports, payer);
        self.add_to_aggregates(node, time_ms, amount);
        at
    }

    /// Starts loading what applying a transaction at `time_ms` reads of `node` (at `at`)
    /// beyond the node itself: the newest edges of each of the `ports` it touches (a full
    /// list's new neighbour rotates the whole side, up to `adjacency_cap`), its mirror
    /// line, for the `payer` the ends of its sequence, and its aggregate checkpoints when
    /// the transaction will add one. A hint: it changes nothing.
    fn prefetch_for_apply(
        &self,
        t: NodeType,
        at: NodeRef,
        node: &Node,
        time_ms: i64,
        ports: u8,
        payer: bool,
    ) {
        node.ports
            .prefetch(ports, self.config.adjacency_cap, Intent::Write);
        self.hot[t.index()].prefetch(at, Intent::Write);
        if self.checkpoint_due(node, time_ms) {
            // Dropping the oldest checkpoint moves the others; the new one goes after them.
            prefetch_tail(&node.history, self.config.checkpoints, Intent::Write);
        }
        if payer {
            // The newest element (compared, then followed by the new one) and the oldest
            // (dropped once the sequence is full).
            let (older, newer) = node.sequence.as_slices();
            for item in [newer.last().or(older.last()), older.first()]
                .into_iter()
                .flatten()
            {
                prefetch_tail(std::slice::from_ref(item), 1, Intent::Write);
            }
        }
    }

    /// Whether adding a transaction at `time_ms` to `n`'s aggregates first keeps a
    /// checkpoint: the first transaction of a new checkpoint interval.
    fn checkpoint_due(&self, n: &Node, time_ms: i64) -> bool {
        let interval = (self.config.late_window_ms / self.config.checkpoints.max(1) as i64).max(1);
        self.config.checkpoints > 0
            && n.agg.l_ms != i64::MIN
            && time_ms.div_euclid(interval) > n.agg.l_ms.div_euclid(interval)
    }

    /// Adds a transaction to a node's aggregates, keeping the state before it (`prev`) and,
    /// once per checkpoint interval, a checkpoint.
    fn add_to_aggregates(&self, n: &mut Node, time_ms: i64, amount: f32) {
        if self.checkpoint_due(n, time_ms) {
            if n.history.len() == self.config.checkpoints {
                n.history.remove(0);
            }
            n.history.push(n.agg);
        }
        n.prev = n.agg;
        n.agg.add(time_ms, amount);
    }

    /// Adds or reinforces the edge to `nbr` at `node`'s `port`. Returns the neighbour whose
    /// edge was dropped to respect the cap, and that edge's last sighting, if any.
    fn touch_edge(
        &self,
        node: &mut Node,
        port: usize,
        nbr: NodeRef,
        time_s: u32,
        amount: f32,
    ) -> Option<(NodeRef, u32)> {
        // Most sightings are of recent neighbours: search from the newest end.
        let found = node.ports[port].iter().rposition(|e| e.nbr == nbr);
        if let Some(i) = found {
            let list = node.ports.port_mut(port);
            let e = &mut list[i];
            e.count += 1;
            e.amount += amount;
            if time_s >= e.last_s {
                e.prev_last_s = e.last_s;
                e.last_s = time_s;
                e.last_amount = amount;
                // Keep the list ordered by last sighting.
                let to = i + 1 + list[i + 1..].partition_point(|x| x.last_s <= time_s);
                list[i..to].rotate_left(1);
            } else {
                // A late sighting: it is history, not the latest update.
                e.prev_last_s = if e.count >= 3 {
                    e.prev_last_s.max(time_s)
                } else {
                    time_s
                };
                e.first_s = e.first_s.min(time_s);
            }
            return None;
        }
        let edge = Edge::new(nbr, time_s, amount);
        let len = node.ports[port].len();
        if len > 0 && len >= self.config.adjacency_cap {
            // A full list: the least recently seen edge (the first) makes room.
            let oldest = node.ports.replace_oldest(port, edge);
            return Some((oldest.nbr, oldest.last_s));
        }
        let at = node.ports[port].partition_point(|x| x.last_s <= time_s);
        node.ports.insert(port, at, edge);
        None
    }

    /// Starts loading the part of a node that removing one of its edges (the writer,
    /// `Intent::Write`, which also loads its mirror line) or choosing its neighbours (a
    /// sampler, `Intent::Read`) reads first: its aggregates' newest time and its lists'
    /// bounds.
    pub(crate) fn prefetch_node(&self, t: NodeType, at: NodeRef, intent: Intent) {
        let guard = self.shards[t.index()][at.shard()].read();
        if let Some(node) = guard.nodes.get(at.slot()) {
            prefetch(&node.agg, intent);
            prefetch(&node.ports, intent);
        }
        drop(guard);
        if intent == Intent::Write {
            self.hot[t.index()].prefetch(at, Intent::Write);
        }
    }

    /// Starts loading the newest `count` edges of each of a node's lists, for a sampler
    /// about to choose among them. Call it a moment after [`Graph::prefetch_node`], which
    /// loads where the lists are.
    pub(crate) fn prefetch_newest_edges(&self, t: NodeType, at: NodeRef, count: usize) {
        let guard = self.shards[t.index()][at.shard()].read();
        if let Some(node) = guard.nodes.get(at.slot()) {
            node.ports.prefetch(u8::MAX, count, Intent::Read);
        }
    }

    /// Removes the edge to `nbr`, last seen at `last_s` (both ends hold the
    /// same statistics, so it is found near the oldest end), from `node`'s `port`.
    fn remove_edge(&self, t: NodeType, node: NodeRef, port: usize, nbr: NodeRef, last_s: u32) {
        let at = node;
        let mut guard = self.shards[t.index()][node.shard()].write();
        let node = &mut guard.nodes[node.slot()];
        if let Some(i) = find_edge(&node.ports[port], nbr, last_s) {
            node.ports.remove(port, i);
            node.ports.shrink_if_slack();
            self.hot[t.index()].publish(at, node);
        }
    }

    /// Starts loading what applying the next [`LOOKAHEAD`] transactions of a stream will
    /// read, so that those misses overlap with applying the current one: call it just
    /// before applying a transaction, with the transactions that will be applied after it,
    /// in order (only the first [`LOOKAHEAD`] are read; fewer are fine).
    ///
    /// Applying a transaction on a graph beyond the caches is otherwise a chain of misses
    /// per entity: the index's line, then the node the id is confirmed against, then what
    /// the node points to (its edges, its aggregate checkpoints, its sequence); and each
    /// entity's come after the previous one's, as each is interned under its own shard
    /// lock (whose atomic is a fence). So each call moves every upcoming transaction one
    /// link down its chain: for the third it asks for the index lines where its entities'
    /// ids will be searched; for the second (whose index lines the previous call asked
    /// for) it finds the entities' likely slots, by tag alone, and asks for their nodes;
    /// for the next one (whose nodes the previous call asked for) it asks for what those
    /// nodes point to, as `apply` itself does when it interns them. A hint: it changes
    /// nothing in the graph, and a wrong guess costs a wasted load.
    pub fn prefetch_upcoming<'t>(&self, upcoming: impl IntoIterator<Item = &'t Transaction>) {
        let mut upcoming = upcoming.into_iter();
        if let Some(next) = upcoming.next() {
            for (i, e) in entities_of(next).0.iter().enumerate() {
                let h = IdHash::of(e.key);
                let guard = self.shards[e.t.index()][h.shard()].read();
                if let Some((slot, node)) = guard
                    .index
                    .likely(h)
                    .and_then(|s| Some((s as usize, guard.nodes.get(s as usize)?)))
                {
                    let at = NodeRef::new(h.shard(), slot);
                    let payer = i == 0;
                    self.prefetch_for_apply(e.t, at, node, next.event_time_ms, e.ports, payer);
                }
            }
        }
        if let Some(second) = upcoming.next() {
            for e in entities_of(second).0.iter() {
                let h = IdHash::of(e.key);
                let guard = self.shards[e.t.index()][h.shard()].read();
                if let Some(node) = guard
                    .index
                    .likely(h)
                    .and_then(|s| guard.nodes.get(s as usize))
                {
                    prefetch_tail(std::slice::from_ref(node), 1, Intent::Write);
                }
            }
        }
        if let Some(third) = upcoming.next() {
            for e in entities_of(third).0.iter() {
                let h = IdHash::of(e.key);
                let guard = self.shards[e.t.index()][h.shard()].read();
                guard.index.prefetch(h, Intent::Read);
            }
        }
    }

    /// [`Graph::apply`], then an idle-eviction pass ([`Graph::evict_idle`]) when the
    /// transaction moved the watermark into a new eviction period
    /// ([`EVICTION_PERIODS_PER_RETENTION`]); returns what the pass removed, if one ran.
    ///
    /// This is how every consumer of a stream applies it: the service's live graph and the
    /// training and evaluation replays. Driven by event time and not by a clock, the passes
    /// fall at the same places in a stream however fast it is applied, so a model is
    /// trained on the graph it is served from (an entity idle past the retention comes back
    /// as new in both), and a run restored from a snapshot (which records the watermark)
    /// builds the same graph as an uninterrupted one. A pass scans the whole graph (tens of
    /// milliseconds at a million edges), about once a day of event time. Call it from the
    /// writer.
    pub fn apply_evicting(&self, txn: &Transaction) -> (ApplyOutcome, Option<Evicted>) {
        let before = self.watermark_ms();
        let outcome = self.apply(txn);
        let due = eviction_due(before, self.watermark_ms(), self.config.retention_ms);
        (outcome, due.then(|| self.evict_idle()))
    }

    /// Applies a transaction: its nodes, edges, aggregates and, for the
    /// account, its sequence. Idempotent by txn_id; a transaction older than
    /// the late window is refused. The caller validates first. Streams are applied with
    /// [`Graph::apply_evicting`], which also evicts what has been idle too long.
    pub fn apply(&self, txn: &Transaction) -> ApplyOutcome {
        let id = txn_hash(&txn.txn_id);
        {
            let mut d = self.dedupe.lock();
            if d.seen.contains(&id) {
                return ApplyOutcome::Duplicate;
            }
            if d.watermark_ms != i64::MIN
                && txn.event_time_ms < d.watermark_ms - self.config.late_window_ms
            {
                return ApplyOutcome::TooLate;
            }
            d.seen.insert(id);
            d.applied += 1;
            d.order.push_back((txn.event_time_ms, id));
            d.watermark_ms = d.watermark_ms.max(txn.event_time_ms);
            let horizon =
                d.watermark_ms - self.config.dedupe_window_ms.max(self.config.late_window_ms);
            while d.order.front().is_some_and(|(t, _)| *t < horizon) {
                let (_, old) = d.order.pop_front().expect("checked non-empty");
                d.seen.remove(&old);
            }
        }

        let t = txn.event_time_ms;
        let t_s = epoch_secs(t);
        let amount = txn.amount_minor as f32;
        // Two passes over the transaction's distinct entities (at most six), each entity
        // under its own shard lock, one at a time:
        // 1. intern it and add the transaction to its aggregates, and start loading the
        //    edge lists this transaction touches and its mirror line, so that those misses
        //    overlap with the next entities' interning;
        // 2. add or reinforce its edges (and, for the payer, its sequence), then publish its
        //    mirror line once.
        // Aggregates before edges: an edge sighting at time e is only ever stored at a node
        // whose `agg.l_ms` is already at least e, which lets samplers skip per-edge checks
        // on nodes that have not changed since the target's time. Edges that full lists
        // drop are removed at their other (cold) end last, after a prefetch.
        // New mirror segments are allocated here, under no lock (see `hot`).
        for table in &self.hot {
            table.grow_ahead();
        }
        let (mut entities, edges) = entities_of(txn);
        for (i, e) in entities.iter_mut().enumerate() {
            // The payer (the first entity mentioned) keeps the sequence.
            e.at = self.intern_and_add(e.t, e.key, t, amount, e.ports, i == 0);
        }
        let edges = edges.into_iter().flatten();
        let merchant = (0..entities.len)
            .map(|i| entities.get(i))
            .find(|e| e.t == NodeType::Merchant)
            .expect("every transaction has a merchant")
            .at;
        // Edges dropped from full lists, to be removed at their other end once this
        // transaction's own edges are in.
        let mut dropped: [Option<DroppedEdge>; 2 * Relation::ALL.len()] =
            [None; 2 * Relation::ALL.len()];
        let (mut n_dropped, mut prefetched) = (0, 0);
        for i in 0..entities.len {
            let Entity { t: ty, at, .. } = entities.get(i);
            let mut guard = self.shards[ty.index()][at.shard()].write();
            let node = &mut guard.nodes[at.slot()];
            for (relation, src, dst) in edges.clone() {
                // A transfer to oneself ends both sides of one edge at the same node.
                for (end, side, other) in [(src, Side::Out, dst), (dst, Side::In, src)] {
                    if end != i {
                        continue;
                    }
                    let other = entities.get(other);
                    let port = port_of(ty, relation, side);
                    let gone = self.touch_edge(node, port, other.at, t_s, amount);
                    if let Some((gone, last_s)) = gone {
                        let their_port = port_of(other.t, relation, side.flip());
                        dropped[n_dropped] = Some(DroppedEdge {
                            t: other.t,
                            node: gone,
                            port: their_port,
                            nbr: at,
                            last_s,
                        });
                        n_dropped += 1;
                    }
                }
            }
            // The payer (the first entity mentioned) keeps the sequence.
            if i == 0 {
                self.push_sequence(node, txn, id, merchant);
            }
            self.hot[ty.index()].publish(at, node);
            drop(guard);
            // The other ends of dropped edges are cold: start loading them now.
            for d in dropped[prefetched..n_dropped].iter().flatten() {
                self.prefetch_node(d.t, d.node, Intent::Write);
            }
            prefetched = n_dropped;
        }
        // Their lists, from the dropped edge's side on, now that where they are has had
        // time to arrive: removing an edge walks its side from the oldest end, then moves
        // every later edge of the node's allocation.
        for d in dropped.iter().flatten() {
            let guard = self.shards[d.t.index()][d.node.shard()].read();
            if let Some(node) = guard.nodes.get(d.node.slot()) {
                node.ports
                    .prefetch_from(d.port, COLD_LIST_PREFETCH_EDGES, Intent::Write);
            }
        }
        for d in dropped.into_iter().flatten() {
            self.remove_edge(d.t, d.node, d.port, d.nbr, d.last_s);
        }
        ApplyOutcome::Applied
    }

    /// Adds the transaction to its payer's sequence of recent transactions, in time order,
    /// keeping the newest `sequence_len`.
    fn push_sequence(&self, payer: &mut Node, txn: &Transaction, id: u128, merchant: NodeRef) {
        let t = txn.event_time_ms;
        let item = SeqItem {
            time_ms: t,
            amount: txn.amount_minor as f32,
            mcc: txn.mcc.min(u32::from(u16::MAX)) as u16,
            channel: txn.channel.clamp(0, 255) as u8,
            utc_offset_min: txn
                .client_utc_offset_minutes
                .map_or(i16::MIN, |o| o.clamp(-720, 840) as i16),
            merchant,
            txn_hash: id as u64,
        };
        let seq = &mut payer.sequence;
        if seq.len() == seq.capacity() && seq.len() < self.config.sequence_len {
            seq.reserve_exact((seq.len() / 4 + 1).min(self.config.sequence_len - seq.len()));
        }
        if seq.back().is_none_or(|s| s.time_ms <= t) {
            seq.push_back(item);
        } else {
            let at = seq.partition_point(|s| s.time_ms <= t);
            seq.insert(at, item);
        }
        while seq.len() > self.config.sequence_len {
            seq.pop_front();
        }
    }

    /// Node and edge counts and memory, walking every shard (one read lock at
    /// a time).
    pub fn stats(&self) -> GraphStats {
        let mut s = {
            let d = self.dedupe.lock();
            GraphStats {
                watermark_ms: d.watermark_ms,
                transactions: d.applied,
                ..GraphStats::default()
            }
        };
        let mut half_edges = 0u64;
        for t in NodeType::ALL {
            s.node_bytes += self.hot[t.index()].bytes() as u64;
            for shard in self.shards[t.index()].iter() {
                let g = shard.read();
                s.nodes[t.index()] += (g.nodes.len() - g.free.len()) as u64;
                // An entry and a control byte per bucket.
                s.node_bytes += g.index.bytes() as u64;
                for n in g.nodes.iter().filter(|n| n.is_live()) {
                    s.node_bytes += n.approx_bytes() as u64;
                    half_edges += n.ports.edge_count() as u64;
                    s.edge_bytes += (n.ports.capacity() * std::mem::size_of::<Edge>()) as u64;
                }
            }
        }
        s.edges = half_edges / 2;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_aggregates_read_as_zeros_at_any_time() {
        let empty = Aggregates::new();
        assert_eq!(empty.at(1_767_225_600_000), [0.0; 8]);
        assert_eq!(empty.at(0), [0.0; 8]);
        let mut one = Aggregates::new();
        one.add(1_000, 5.0);
        assert_eq!(one.at(1_000)[0], 1.0, "a count of one, not yet decayed");
    }

    fn edge(nbr: u32, last_s: u32) -> Edge {
        Edge::new(NodeRef(nbr), last_s, 1.0)
    }

    #[test]
    fn find_edge_walks_from_the_oldest_end_and_falls_back_to_a_scan() {
        // Ordered by last sighting, with three edges seen in the same second.
        let list = [
            edge(1, 10),
            edge(2, 20),
            edge(3, 20),
            edge(4, 20),
            edge(5, 30),
        ];
        assert_eq!(find_edge(&list, NodeRef(1), 10), Some(0));
        assert_eq!(find_edge(&list, NodeRef(3), 20), Some(2));
        assert_eq!(find_edge(&list, NodeRef(4), 20), Some(3));
        assert_eq!(find_edge(&list, NodeRef(5), 30), Some(4));
        // A wrong last sighting still finds the edge, by the fallback scan.
        assert_eq!(find_edge(&list, NodeRef(2), 30), Some(1));
        assert_eq!(find_edge(&list, NodeRef(5), 10), Some(4));
        assert_eq!(find_edge(&list, NodeRef(9), 20), None);
        assert_eq!(find_edge(&[], NodeRef(1), 10), None);
    }

    #[test]
    fn a_pass_is_due_when_the_watermark_enters_a_new_period() {
        let retention = 32 * 1_000; // periods of 1 s
        assert!(
            !eviction_due(i64::MIN, 5_000, retention),
            "first transaction"
        );
        assert!(!eviction_due(5_000, 5_999, retention), "same period");
        assert!(eviction_due(5_999, 6_000, retention), "next period");
        assert!(
            eviction_due(5_000, 9_500, retention),
            "several periods at once: one pass"
        );
        assert!(
            !eviction_due(6_000, 6_000, retention),
            "late or duplicate: no move"
        );
        assert!(eviction_due(-1, 0, retention), "before 1970 too");
        assert!(
            eviction_due(0, 1, 1),
            "a retention under 32 ms still has periods"
        );
    }

    #[test]
    fn applying_a_stream_evicts_what_stayed_idle_past_the_retention() {
        const HOUR_MS: i64 = 3_600_000;
        let config = GraphConfig {
            retention_ms: 32 * HOUR_MS, // eviction periods of one hour
            ..GraphConfig::default()
        };
        let txn = |i: i64, device: &str| Transaction {
            txn_id: format!("t{i}"),
            account_id: "busy".into(),
            merchant_id: "m".into(),
            device_id: Some(device.into()),
            event_time_ms: EPOCH_MS + i * HOUR_MS / 4,
            amount_minor: 100,
            ..Default::default()
        };
        let evicting = Graph::new(config.clone());
        let plain = Graph::new(config);
        let mut passes = Vec::new();
        // The account pays every quarter of an hour for 40 hours; its first device is
        // seen once, at the start.
        for i in 0..160 {
            let t = txn(i, if i == 0 { "once" } else { "daily" });
            let (outcome, pass) = evicting.apply_evicting(&t);
            assert_eq!(outcome, ApplyOutcome::Applied);
            assert_eq!(plain.apply(&t), ApplyOutcome::Applied);
            passes.extend(pass.map(|p| (i, p)));
        }
        // A pass at every new hour of event time (quarter 4, 8, ...), not on other applies.
        assert_eq!(passes.len(), 39);
        assert!(passes.iter().all(|(i, _)| i % 4 == 0));
        // The first device, idle for more than 32 hours, is gone with its edge; the rest
        // stays. Without passes it would all still be there.
        let removed = passes.iter().map(|(_, p)| p.nodes).sum::<u64>();
        assert_eq!(removed, 1);
        assert_eq!(evicting.lookup(NodeType::Device, "once"), None);
        assert!(evicting.lookup(NodeType::Device, "daily").is_some());
        assert!(plain.lookup(NodeType::Device, "once").is_some());
        assert_eq!(plain.stats().edges, evicting.stats().edges + 1);
    }

    #[test]
    fn a_transfer_to_oneself_stores_both_sides_at_the_one_node() {
        let g = Graph::new(GraphConfig::default());
        let txn = |id: &str, t_ms: i64| Transaction {
            txn_id: id.into(),
            account_id: "a".into(),
            merchant_id: "m".into(),
            counterparty_account_id: Some("a".into()),
            event_time_ms: t_ms,
            amount_minor: 100,
            ..Default::default()
        };
        let t0 = EPOCH_MS + 1_000_000;
        assert_eq!(g.apply(&txn("t1", t0)), ApplyOutcome::Applied);
        assert_eq!(g.apply(&txn("t2", t0 + 5_000)), ApplyOutcome::Applied);
        let a = g.lookup(NodeType::Account, "a").expect("interned");
        let port = |side| port_of(NodeType::Account, Relation::AccountAccount, side);
        let (out, inn, seq) = g.with_node(NodeType::Account, a, |n| {
            (
                n.ports[port(Side::Out)].to_vec(),
                n.ports[port(Side::In)].to_vec(),
                n.sequence.len(),
            )
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out, inn, "both sides of the one edge agree");
        assert_eq!((out[0].nbr, out[0].count), (a, 2));
        assert_eq!(seq, 2, "the payer's sequence holds each transaction once");
    }
}
