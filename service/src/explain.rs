//! The evidence behind a score, for the Explain RPC: the shape of the sampled
//! neighbourhood, the riskiest paths from the transaction's account through
//! it, and how far the transaction's entities' recent activity is from their
//! own history.
//!
//! Everything here is read from the subgraph the score was computed on
//! (sampled causally at the transaction's time), the graph it was sampled
//! from (entity ids, node aggregates as of that time) and the label book
//! (fraud rates). It runs on a blocking thread: a few thousand candidate paths
//! and a few hundred label look-ups, well under a millisecond for a default
//! 3-hop sample.
//!
//! Entity ids end up in the response (they go back to the authorised caller)
//! but are never logged.

use fraudgraph_proto::v1::{EvidenceNode, EvidencePath, NodeAnomaly, SubgraphSummary};
use fraudgraph_sampler::features::{NODE_BASE_FEATURES, node_width};
use fraudgraph_sampler::graph::{Graph, Side, WINDOWS_MS, ports};
use fraudgraph_sampler::sample::Subgraph;
use fraudgraph_sampler::schema::{NodeType, Relation};

use crate::labels::LabelBook;

/// What Explain adds to a score.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The shape of the sampled neighbourhood.
    pub subgraph: SubgraphSummary,
    /// The riskiest paths from the transaction's account, riskiest first
    /// (see [`explain`] for the risk).
    pub paths: Vec<EvidencePath>,
    /// The entities whose recent activity is furthest from their own
    /// history, largest |z| first (see [`explain`]).
    pub anomalies: Vec<NodeAnomaly>,
    /// The sampled subgraph in Graphviz DOT when asked for, else empty.
    pub dot: String,
}

/// Longest evidence path, in edges.
const MAX_PATH_EDGES: usize = 3;
/// Weight of the shared-infrastructure signal in a node's evidence.
const SHARING_WEIGHT: f64 = 0.5;
/// How much less a node's evidence counts per edge further along a path.
const HOP_ATTENUATION: f64 = 0.7;
/// Most anomalies returned.
const MAX_ANOMALIES: usize = 5;
/// Besides the transaction's own entities, this many of the most connected
/// other nodes of the subgraph are checked for anomalies.
const ANOMALY_NEIGHBOURS: usize = 3;
/// An entity first seen less than this before the transaction has no
/// baseline (its 1-to-7-day history is too short to say what is usual).
const MIN_HISTORY_MS: i64 = 2 * 86_400_000;
/// The smallest standard deviation of a count baseline: one transaction, so
/// a single payment by a quiet entity is never an anomaly on its own.
const COUNT_STD_FLOOR: f64 = 1.0;

/// Builds the evidence for the transaction whose sampled neighbourhood is
/// `sub` (sampled causally at the transaction's time `sub.t_ms`) from
/// `graph`, with fraud rates from `labels`; at most `max_paths` paths, and
/// the subgraph in DOT when `include_dot`.
///
/// **Summary.** Nodes per type, edges, hops reached, and the structure
/// entropy: the Shannon entropy in bits of the edges' distribution over
/// (source type, destination type) pairs, between 0 (one kind of link) and
/// log2 of the number of kinds present.
///
/// **Paths.** Every simple path (no repeated node) of 1 to 3 edges from the
/// transaction's account, edges taken in either direction, that ends at a
/// node carrying evidence. A node's evidence is
/// `e = 1 − (1 − ℓ)(1 − 0.5·σ)`, where `ℓ = fraud / (labelled + 1)` is its
/// labelled fraud rate shrunk towards 0 when few of its transactions are
/// labelled (one fraud label counts 0.5, nine count 0.9), and `σ = 1 − 1/n`
/// is the shared-infrastructure signal of a device, IP or card linked to `n`
/// accounts as of the transaction (the larger of its visible degree in the
/// sampled node features and the accounts linked to it in the subgraph; 0
/// for accounts and merchants). A path's risk is the noisy-OR of the
/// evidence of its nodes after the account, attenuated by 0.7 per edge:
/// `risk = 1 − Π_i (1 − 0.7^(i−1)·e_i)`, in [0, 1). Riskiest first; ties go
/// to the shorter path, then to the path whose nodes come first in the
/// subgraph's node order (type, then row), so the same subgraph always
/// explains the same way. `EvidenceNode.hop` is the node's distance in the
/// subgraph from the nearest of the transaction's own entities (0 for them);
/// `fraud_rate` is the unshrunk labelled rate, 0 when none is labelled.
///
/// **Anomalies.** For the transaction's own entities, a transfer's receiver, and the
/// three most connected other nodes of the subgraph, each with at least two
/// days of history, features `txn_count_1h` and `txn_count_24h`: the node's
/// exponentially decayed transaction count (time constant 1 h or 24 h, the
/// graph's aggregates as of `sub.t_ms`, so the transaction itself is not
/// counted). The baseline rate per hour is `λ = (c_7d − c_24h) / L`: the
/// difference of the 7-day and 24-hour decayed counts weighs events mostly 1
/// to 7 days old (one an hour old counts 0.03), so a recent burst barely
/// inflates its own baseline, and `L` is what that difference would be for
/// one transaction an hour since the entity's first sighting. Then
/// `baseline_mean = λ·τ·(1 − e^(−age/τ))`, `baseline_std =
/// max(sqrt(mean / 2), 1)` (the standard deviation of a Poisson process's
/// decayed count, floored at one transaction) and `z = (value − mean) / std`.
/// Largest |z| first, at most five.
///
/// **DOT.** `sub.to_dot(graph)` when `include_dot`, else empty.
pub fn explain(
    graph: &Graph,
    sub: &Subgraph,
    labels: &LabelBook,
    max_paths: usize,
    include_dot: bool,
) -> Evidence {
    let view = View::new(sub);
    let subgraph = summary(sub);

    // Per node: id, label counts, evidence.
    let n = view.len();
    let mut keys: Vec<Option<String>> = Vec::with_capacity(n);
    let mut fraud_rate = vec![0.0f32; n];
    let mut evidence = vec![0.0f64; n];
    for g in 0..n {
        let (t, row) = view.node(g);
        let key = sub.key(graph, t, row);
        let (rate, shrunk) = key
            .as_deref()
            .and_then(|k| labels.counts(t, k))
            .filter(|c| c.labelled > 0)
            .map_or((0.0, 0.0), |c| {
                (
                    c.fraud as f32 / c.labelled as f32,
                    f64::from(c.fraud) / (f64::from(c.labelled) + 1.0),
                )
            });
        fraud_rate[g] = rate;
        let accounts = shared_by(sub, &view, g);
        let sharing = if accounts > 1 {
            1.0 - 1.0 / accounts as f64
        } else {
            0.0
        };
        evidence[g] = 1.0 - (1.0 - shrunk) * (1.0 - SHARING_WEIGHT * sharing);
        keys.push(key);
    }
    let hops = view.hops_from_own(sub);

    let paths = riskiest_paths(&view, &evidence, max_paths)
        .into_iter()
        .map(|c| {
            let nodes = c.nodes[..=c.len]
                .iter()
                .map(|&g| {
                    let g = g as usize;
                    let (t, _) = view.node(g);
                    EvidenceNode {
                        node_type: t.to_proto() as i32,
                        entity_id: entity_id(&keys[g]),
                        hop: hops[g],
                        fraud_rate: fraud_rate[g],
                    }
                })
                .collect();
            EvidencePath {
                nodes,
                relations: c.relations[..c.len]
                    .iter()
                    .map(|r| r.name().to_string())
                    .collect(),
                risk: c.risk as f32,
            }
        })
        .collect();

    let anomalies = anomalies(graph, sub, &view, &keys);
    let dot = if include_dot {
        sub.to_dot(graph)
    } else {
        String::new()
    };
    Evidence {
        subgraph,
        paths,
        anomalies,
        dot,
    }
}

/// The id shown for a node: `"?"` when the graph has evicted it since
/// sampling (as in the DOT view).
fn entity_id(key: &Option<String>) -> String {
    key.clone().unwrap_or_else(|| "?".into())
}

/// Nodes per type, edges, hops and structure entropy of a subgraph.
fn summary(sub: &Subgraph) -> SubgraphSummary {
    let count = |t: NodeType| sub.nodes[t.index()].len() as u32;
    let per_relation: Vec<usize> = sub.edge_index.iter().map(Vec::len).collect();
    SubgraphSummary {
        accounts: count(NodeType::Account),
        devices: count(NodeType::Device),
        ips: count(NodeType::Ip),
        merchants: count(NodeType::Merchant),
        cards: count(NodeType::Card),
        edges: sub.edge_count() as u32,
        hops: u32::from(sub.hops),
        structure_entropy: structure_entropy(&per_relation),
    }
}

/// Shannon entropy in bits of the distribution of edges over kinds of link,
/// given the edge count of each kind. Every relation joins its own pair of
/// node types, so per-relation counts are per-type-pair counts.
fn structure_entropy(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum();
    // -0.0 and rounding below zero read as exactly 0.
    h.max(0.0)
}

/// The subgraph as one undirected adjacency: node `g` is row `g - base[t]`
/// of type `t`, types in [`NodeType::index`] order (as in
/// `Subgraph::to_petgraph`). Each neighbour appears once per node, with the
/// first relation (in [`Relation::index`] order) joining them.
struct View {
    base: [usize; NodeType::ALL.len()],
    types: Vec<NodeType>,
    adj: Vec<Vec<(u32, Relation)>>,
}

impl View {
    fn new(sub: &Subgraph) -> View {
        let mut base = [0usize; NodeType::ALL.len()];
        let mut types = Vec::with_capacity(sub.node_count());
        for t in NodeType::ALL {
            base[t.index()] = types.len();
            types.extend(std::iter::repeat_n(t, sub.nodes[t.index()].len()));
        }
        let mut adj: Vec<Vec<(u32, Relation)>> = vec![Vec::new(); types.len()];
        for r in Relation::ALL {
            let (st, dt) = r.endpoints();
            for &(s, d) in &sub.edge_index[r.index()] {
                let s = base[st.index()] + s as usize;
                let d = base[dt.index()] + d as usize;
                if s == d || s >= types.len() || d >= types.len() {
                    continue;
                }
                adj[s].push((d as u32, r));
                adj[d].push((s as u32, r));
            }
        }
        for list in &mut adj {
            // Stable: the first relation seen (Relation order) stays.
            list.sort_by_key(|&(nbr, _)| nbr);
            list.dedup_by_key(|&mut (nbr, _)| nbr);
        }
        View { base, types, adj }
    }

    fn len(&self) -> usize {
        self.types.len()
    }

    /// The type and row of node `g`.
    fn node(&self, g: usize) -> (NodeType, usize) {
        let t = self.types[g];
        (t, g - self.base[t.index()])
    }

    /// The node index of row `row` of type `t`.
    fn index(&self, t: NodeType, row: u32) -> usize {
        self.base[t.index()] + row as usize
    }

    /// Hops from the nearest of the transaction's own entities, by
    /// breadth-first search over the subgraph; a node not reached (none
    /// should be) keeps the sampler's hop from the account.
    fn hops_from_own(&self, sub: &Subgraph) -> Vec<u32> {
        let mut hops = vec![u32::MAX; self.len()];
        let mut queue = std::collections::VecDeque::new();
        for t in NodeType::ALL {
            if let Some(row) = sub.own_rows[t.index()] {
                let g = self.index(t, row);
                if g < hops.len() && hops[g] == u32::MAX {
                    hops[g] = 0;
                    queue.push_back(g);
                }
            }
        }
        while let Some(g) = queue.pop_front() {
            for &(nbr, _) in &self.adj[g] {
                let nbr = nbr as usize;
                if hops[nbr] == u32::MAX {
                    hops[nbr] = hops[g] + 1;
                    queue.push_back(nbr);
                }
            }
        }
        for (g, h) in hops.iter_mut().enumerate() {
            if *h == u32::MAX {
                let (t, row) = self.node(g);
                *h = u32::from(sub.nodes[t.index()][row].hop);
            }
        }
        hops
    }
}

/// The accounts a device, IP or card is linked to as of the transaction:
/// the larger of its visible account degree (from its sampled node features)
/// and its account neighbours in the subgraph (which include the
/// transaction's own account). 0 for accounts and merchants.
fn shared_by(sub: &Subgraph, view: &View, g: usize) -> usize {
    let (t, row) = view.node(g);
    if !matches!(t, NodeType::Device | NodeType::Ip | NodeType::Card) {
        return 0;
    }
    let in_subgraph = view.adj[g]
        .iter()
        .filter(|&&(nbr, _)| view.types[nbr as usize] == NodeType::Account)
        .count();
    let degree = ports(t)
        .iter()
        .position(|&(r, side)| side == Side::In && r.endpoints().0 == NodeType::Account)
        .and_then(|port| {
            sub.node_features[t.index()].get(row * node_width(t) + NODE_BASE_FEATURES.len() + port)
        })
        // The feature is ln(1 + degree).
        .map_or(0, |&x| f64::from(x).exp_m1().round().max(0.0) as usize);
    in_subgraph.max(degree)
}

/// A path found by [`riskiest_paths`]: `len` edges, `nodes[..=len]`,
/// `relations[..len]`; unused slots are zero / the first relation.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    risk: f64,
    len: usize,
    nodes: [u32; MAX_PATH_EDGES + 1],
    relations: [Relation; MAX_PATH_EDGES],
}

/// Riskiest first, then shorter, then by node order.
fn riskier(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.risk
        .total_cmp(&a.risk)
        .then(a.len.cmp(&b.len))
        .then_with(|| a.nodes.cmp(&b.nodes))
}

/// The `max_paths` riskiest simple paths of 1 to [`MAX_PATH_EDGES`] edges from
/// the transaction's account that end at a node with evidence, riskiest
/// first (risk as documented on [`explain`]).
fn riskiest_paths(view: &View, evidence: &[f64], max_paths: usize) -> Vec<Candidate> {
    if max_paths == 0 || view.len() == 0 {
        return Vec::new();
    }
    let root = view.base[NodeType::Account.index()] as u32;
    let mut out = Vec::new();
    let mut path = Candidate {
        risk: 0.0,
        len: 0,
        nodes: [0; MAX_PATH_EDGES + 1],
        relations: [Relation::AccountDevice; MAX_PATH_EDGES],
    };
    path.nodes[0] = root;
    walk(view, evidence, &mut path, 1.0, &mut out);
    if out.len() > max_paths {
        out.select_nth_unstable_by(max_paths - 1, riskier);
        out.truncate(max_paths);
    }
    out.sort_unstable_by(riskier);
    out
}

/// Extends `path` (whose nodes after the account leave `survive` =
/// Π (1 − attenuated evidence)) by every neighbour not on it, recording each
/// extension that ends at a node with evidence.
fn walk(
    view: &View,
    evidence: &[f64],
    path: &mut Candidate,
    survive: f64,
    out: &mut Vec<Candidate>,
) {
    let depth = path.len;
    let last = path.nodes[depth] as usize;
    let weight = HOP_ATTENUATION.powi(depth as i32);
    for &(nbr, relation) in &view.adj[last] {
        if path.nodes[..=depth].contains(&nbr) {
            continue;
        }
        let e = evidence[nbr as usize];
        let survive = survive * (1.0 - weight * e);
        path.len = depth + 1;
        path.nodes[depth + 1] = nbr;
        path.relations[depth] = relation;
        if e > 0.0 {
            let mut found = *path;
            found.risk = 1.0 - survive;
            // Clear the slots beyond this path so node order compares cleanly.
            found.nodes[depth + 2..].fill(0);
            found.relations[depth + 1..].fill(Relation::AccountDevice);
            out.push(found);
        }
        if depth + 1 < MAX_PATH_EDGES {
            walk(view, evidence, path, survive, out);
        }
    }
    path.len = depth;
}

/// The anomalies of the transaction's own entities and the most connected
/// other nodes (definitions on [`explain`]), largest |z| first.
fn anomalies(
    graph: &Graph,
    sub: &Subgraph,
    view: &View,
    keys: &[Option<String>],
) -> Vec<NodeAnomaly> {
    // The transaction's own entities, then a transfer's receiver.
    let receiver = sub
        .counterparty_row
        .map(|row| view.index(NodeType::Account, row));
    let mut chosen: Vec<usize> = NodeType::ALL
        .iter()
        .filter_map(|&t| sub.own_rows[t.index()].map(|row| view.index(t, row)))
        .chain(receiver)
        .filter(|&g| g < view.len())
        .collect();
    chosen.dedup();
    let mut others: Vec<usize> = (0..view.len()).filter(|g| !chosen.contains(g)).collect();
    others.sort_by_key(|&g| (std::cmp::Reverse(view.adj[g].len()), g));
    chosen.extend(others.into_iter().take(ANOMALY_NEIGHBOURS));

    let mut out = Vec::new();
    for g in chosen {
        let (t, row) = view.node(g);
        let Some(node) = sub.nodes[t.index()][row].node else {
            continue; // new to the graph: no history at all
        };
        let Some(key) = &keys[g] else {
            continue; // evicted since sampling
        };
        let state = graph.with_node(t, node, |n| {
            n.is_live()
                .then(|| n.aggregates_at(sub.t_ms).map(|a| (a, n.first_ms)))
                .flatten()
        });
        let Some((agg, first_ms)) = state else {
            continue;
        };
        let age_ms = sub.t_ms - first_ms;
        if age_ms < MIN_HISTORY_MS {
            continue;
        }
        for (feature, window) in [("txn_count_1h", 0), ("txn_count_24h", 1)] {
            let b = count_baseline(&agg, age_ms, window);
            out.push(NodeAnomaly {
                node_type: t.to_proto() as i32,
                entity_id: key.clone(),
                feature: feature.to_string(),
                value: b.value,
                baseline_mean: b.mean,
                baseline_std: b.std,
                z_score: b.z,
            });
        }
    }
    out.retain(|a| a.z_score.is_finite());
    // Largest |z| first; stable, so ties keep the own-entities-first order.
    out.sort_by(|a, b| b.z_score.abs().total_cmp(&a.z_score.abs()));
    out.truncate(MAX_ANOMALIES);
    out
}

/// A count feature against its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Baseline {
    value: f64,
    mean: f64,
    std: f64,
    z: f64,
}

/// The decayed count over window `window` (0: 1 h, 1: 24 h) of an entity
/// first seen `age_ms` before the transaction, against its baseline from its
/// 1-to-7-day history (definitions on [`explain`]). `agg` is the graph's
/// aggregate vector as of the transaction.
fn count_baseline(agg: &[f32; 8], age_ms: i64, window: usize) -> Baseline {
    let hours = |ms: i64| ms as f64 / 3_600_000.0;
    let age = hours(age_ms.max(0));
    let [tau_1h, tau_24h, tau_7d] = WINDOWS_MS.map(hours);
    // Expected decayed count since the first sighting at one event an hour.
    let filled = |tau: f64| tau * (1.0 - (-age / tau).exp());
    let history = (f64::from(agg[2]) - f64::from(agg[1])).max(0.0);
    let span = filled(tau_7d) - filled(tau_24h);
    let rate = if span > 0.0 { history / span } else { 0.0 };
    let tau = [tau_1h, tau_24h][window];
    let value = f64::from(agg[window]).max(0.0);
    let mean = rate * filled(tau);
    let std = (mean / 2.0).sqrt().max(COUNT_STD_FLOOR);
    Baseline {
        value,
        mean,
        std,
        z: (value - mean) / std,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fraudgraph_proto::v1::{self, Channel, Label, Transaction};
    use fraudgraph_sampler::graph::GraphConfig;
    use fraudgraph_sampler::sample::{SamplerConfig, sample};

    const T0: i64 = 1_767_225_600_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    const RING: [&str; 4] = ["ring-0", "ring-1", "ring-2", "ring-3"];
    const RING_DEVICE: &str = "dev-ring";
    const RING_IP: &str = "10.6.6.6";
    const CASHOUT: &str = "m-cashout";
    const NOW: i64 = T0 + 6 * DAY;

    fn txn(id: &str, t: i64, account: &str, device: &str, ip: &str, merchant: &str) -> Transaction {
        Transaction {
            txn_id: id.into(),
            event_time_ms: t,
            account_id: account.into(),
            device_id: Some(device.into()),
            ip: Some(ip.into()),
            merchant_id: merchant.into(),
            card_id: None,
            amount_minor: 5_000,
            currency: "EUR".into(),
            mcc: 5411,
            channel: Channel::Ecommerce as i32,
            country: "DE".into(),
            counterparty_account_id: None,
            client_utc_offset_minutes: Some(60),
        }
    }

    fn label(id: &str, fraud: bool) -> Label {
        Label {
            txn_id: id.into(),
            is_fraud: fraud,
            ..Label::default()
        }
    }

    /// A ring of four accounts sharing one device and IP and paying one
    /// cash-out merchant daily for six days (all labelled fraud), ring-0
    /// bursting eight payments in the last 40 minutes (not labelled yet), and a legit
    /// account with its own device and IP paying a grocer daily and the
    /// cash-out merchant once (all labelled legit).
    fn world() -> (Graph, LabelBook) {
        let graph = Graph::new(GraphConfig::default());
        let book = LabelBook::new(1000, 1000);
        let mut history = Vec::new();
        for day in 0..6 {
            for (i, account) in RING.iter().enumerate() {
                let t = T0 + day * DAY + i as i64 * 600_000;
                let id = format!("ring-{day}-{i}");
                history.push((txn(&id, t, account, RING_DEVICE, RING_IP, CASHOUT), true));
            }
            let merchant = if day == 3 { CASHOUT } else { "m-grocer" };
            let id = format!("legit-{day}");
            let t = T0 + day * DAY + 5 * HOUR;
            history.push((
                txn(&id, t, "legit", "dev-legit", "192.168.1.7", merchant),
                false,
            ));
        }
        history.sort_by_key(|(t, _)| t.event_time_ms);
        for (t, _) in &history {
            graph.apply(t);
            book.remember(t);
        }
        for (t, fraud) in &history {
            assert!(book.record(&label(&t.txn_id, *fraud)));
        }
        for k in 0..8 {
            let t = NOW - 40 * 60_000 + k * 5 * 60_000;
            let burst = txn(
                &format!("burst-{k}"),
                t,
                RING[0],
                RING_DEVICE,
                RING_IP,
                CASHOUT,
            );
            graph.apply(&burst);
            book.remember(&burst);
        }
        (graph, book)
    }

    fn ring_target() -> Transaction {
        txn("target-ring", NOW, RING[0], RING_DEVICE, RING_IP, CASHOUT)
    }

    fn legit_target() -> Transaction {
        txn(
            "target-legit",
            NOW,
            "legit",
            "dev-legit",
            "192.168.1.7",
            "m-grocer",
        )
    }

    fn node_is(n: &EvidenceNode, t: NodeType, id: &str) -> bool {
        n.node_type == t.to_proto() as i32 && n.entity_id == id
    }

    fn check_paths(ev: &Evidence, account: &str) {
        let names: Vec<&str> = Relation::ALL.iter().map(|r| r.name()).collect();
        for p in &ev.paths {
            assert!(!p.nodes.is_empty() && p.nodes.len() <= MAX_PATH_EDGES + 1);
            assert!(node_is(&p.nodes[0], NodeType::Account, account), "{p:?}");
            assert_eq!(p.nodes[0].hop, 0);
            assert_eq!(p.relations.len(), p.nodes.len() - 1);
            assert!(p.relations.iter().all(|r| names.contains(&r.as_str())));
            for (i, a) in p.nodes.iter().enumerate() {
                for b in &p.nodes[i + 1..] {
                    assert!(
                        (a.node_type, &a.entity_id) != (b.node_type, &b.entity_id),
                        "a path repeats a node: {p:?}"
                    );
                }
            }
            assert!((0.0..1.0).contains(&p.risk), "{p:?}");
        }
        for w in ev.paths.windows(2) {
            assert!(w[0].risk >= w[1].risk, "riskiest first");
        }
    }

    #[test]
    fn explain_summary_counts_match_the_subgraph() {
        let (graph, book) = world();
        let sub = sample(&graph, &ring_target(), &SamplerConfig::default());
        let ev = explain(&graph, &sub, &book, 5, false);
        let s = &ev.subgraph;
        for (count, t) in [
            (s.accounts, NodeType::Account),
            (s.devices, NodeType::Device),
            (s.ips, NodeType::Ip),
            (s.merchants, NodeType::Merchant),
            (s.cards, NodeType::Card),
        ] {
            assert_eq!(count as usize, sub.nodes[t.index()].len(), "{t:?}");
        }
        assert_eq!(
            s.accounts, 5,
            "the ring and the legit account via the merchant"
        );
        assert_eq!(s.edges as usize, sub.edge_count());
        assert_eq!(s.hops, u32::from(sub.hops));
        let kinds = sub.edge_index.iter().filter(|e| !e.is_empty()).count();
        assert!(kinds >= 3);
        assert!(s.structure_entropy > 0.0);
        assert!(s.structure_entropy <= (kinds as f64).log2() + 1e-9);
    }

    #[test]
    fn explain_structure_entropy_is_zero_for_one_kind_of_link() {
        assert_eq!(structure_entropy(&[0, 0, 7, 0, 0, 0, 0]), 0.0);
        assert_eq!(structure_entropy(&[0; 7]), 0.0);
        assert!((structure_entropy(&[3, 3, 0, 0, 0, 0, 0]) - 1.0).abs() < 1e-12);
        assert!((structure_entropy(&[1, 1, 1, 1, 0, 0, 0]) - 2.0).abs() < 1e-12);

        // A world of accounts paying merchants, nothing else: every sampled
        // edge is account→merchant.
        let graph = Graph::new(GraphConfig::default());
        for i in 0..12i64 {
            let mut t = txn(&format!("p{i}"), T0 + i * HOUR, "", "", "", "");
            t.account_id = format!("a{}", i % 4);
            t.merchant_id = format!("m{}", i % 3);
            (t.device_id, t.ip) = (None, None);
            graph.apply(&t);
        }
        let mut t = txn("p-target", T0 + DAY, "a0", "", "", "m1");
        (t.device_id, t.ip) = (None, None);
        let sub = sample(&graph, &t, &SamplerConfig::default());
        assert!(sub.edge_count() > 3 && sub.hops >= 2);
        let ev = explain(&graph, &sub, &LabelBook::new(10, 10), 5, false);
        assert_eq!(ev.subgraph.structure_entropy, 0.0);
        assert_eq!(ev.subgraph.edges as usize, sub.edge_count());
    }

    #[test]
    fn explain_riskiest_path_goes_through_the_shared_infrastructure() {
        let (graph, book) = world();
        let sub = sample(&graph, &ring_target(), &SamplerConfig::default());
        let ev = explain(&graph, &sub, &book, 50, false);
        check_paths(&ev, RING[0]);
        assert!(ev.paths.len() > 5, "{}", ev.paths.len());
        let top = &ev.paths[0];
        assert!(
            top.nodes
                .iter()
                .any(|n| node_is(n, NodeType::Device, RING_DEVICE)
                    || node_is(n, NodeType::Ip, RING_IP)),
            "{top:?}"
        );
        let device = ev
            .paths
            .iter()
            .flat_map(|p| &p.nodes)
            .find(|n| node_is(n, NodeType::Device, RING_DEVICE))
            .expect("the shared device is on a path");
        assert_eq!(device.fraud_rate, 1.0);
        assert_eq!(device.hop, 0, "the transaction's own device");
        // Another ring account reached through the device or IP.
        assert!(ev.paths.iter().any(|p| p.nodes.len() == 3
            && p.nodes[2].node_type == v1::NodeType::Account as i32
            && RING[1..].contains(&p.nodes[2].entity_id.as_str())
            && p.nodes[2].hop == 1));

        let legit_sub = sample(&graph, &legit_target(), &SamplerConfig::default());
        let legit = explain(&graph, &legit_sub, &book, 50, false);
        check_paths(&legit, "legit");
        assert!(
            !legit.paths.is_empty(),
            "the legit account reaches the ring through the cash-out merchant"
        );
        assert!(
            top.risk > legit.paths[0].risk,
            "{top:?} vs {:?}",
            legit.paths[0]
        );

        // Deterministic, and max_paths is a prefix of the full ranking.
        assert_eq!(explain(&graph, &sub, &book, 50, false), ev);
        let few = explain(&graph, &sub, &book, 2, false);
        assert_eq!(few.paths.len(), 2);
        assert_eq!(few.paths[..], ev.paths[..2]);
        assert!(explain(&graph, &sub, &book, 0, false).paths.is_empty());
    }

    #[test]
    fn explain_a_burst_in_the_last_hour_is_a_positive_anomaly() {
        let (graph, book) = world();
        let sub = sample(&graph, &ring_target(), &SamplerConfig::default());
        let ev = explain(&graph, &sub, &book, 5, false);
        assert!(!ev.anomalies.is_empty() && ev.anomalies.len() <= MAX_ANOMALIES);
        for w in ev.anomalies.windows(2) {
            assert!(w[0].z_score.abs() >= w[1].z_score.abs());
        }
        let burst = ev
            .anomalies
            .iter()
            .find(|a| {
                a.node_type == v1::NodeType::Account as i32
                    && a.entity_id == RING[0]
                    && a.feature == "txn_count_1h"
            })
            .expect("the bursting account's hourly count is anomalous");
        assert!(burst.value > 4.0, "{burst:?}");
        assert!(burst.baseline_mean < 0.5, "{burst:?}");
        assert!(burst.baseline_std >= COUNT_STD_FLOOR);
        assert!(burst.z_score > 3.0, "{burst:?}");
        let z = (burst.value - burst.baseline_mean) / burst.baseline_std;
        assert!((burst.z_score - z).abs() < 1e-9);

        // The legit account's day-to-day activity is not anomalous.
        let legit_sub = sample(&graph, &legit_target(), &SamplerConfig::default());
        let legit = explain(&graph, &legit_sub, &book, 5, false);
        assert!(
            legit
                .anomalies
                .iter()
                .filter(|a| a.entity_id == "legit")
                .all(|a| a.z_score < 2.0),
            "{:?}",
            legit.anomalies
        );
    }

    #[test]
    fn explain_count_baseline_needs_history_and_is_floored() {
        // One transaction an hour for weeks: c ≈ rate·τ in every window.
        let steady = [1.0, 24.0, 168.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let b = count_baseline(&steady, 60 * DAY, 0);
        assert!((b.mean - 1.0).abs() < 0.01 && b.z.abs() < 0.05, "{b:?}");
        let b = count_baseline(&steady, 60 * DAY, 1);
        assert!((b.mean - 24.0).abs() < 0.2 && b.z.abs() < 0.1, "{b:?}");
        // Quiet entity, one payment just now: not an anomaly on its own.
        let one = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let b = count_baseline(&one, 30 * DAY, 0);
        assert_eq!(b.std, COUNT_STD_FLOOR);
        assert!(b.z <= 1.0, "{b:?}");
    }

    #[test]
    fn explain_dot_only_when_asked() {
        let (graph, book) = world();
        let sub = sample(&graph, &ring_target(), &SamplerConfig::default());
        let with = explain(&graph, &sub, &book, 5, true);
        assert!(with.dot.starts_with("digraph"), "{}", with.dot);
        assert!(with.dot.contains(RING_DEVICE));
        assert!(explain(&graph, &sub, &book, 5, false).dot.is_empty());
    }

    #[test]
    fn explain_a_brand_new_account_without_panicking() {
        let (graph, book) = world();
        // Everything unknown to the graph.
        let t = txn("new-1", NOW, "newcomer", "dev-new", "172.16.0.1", "m-new");
        let sub = sample(&graph, &t, &SamplerConfig::default());
        let ev = explain(&graph, &sub, &book, 5, true);
        assert_eq!(ev.subgraph.accounts, 1);
        assert_eq!(ev.subgraph.edges as usize, sub.edge_count());
        assert!(ev.paths.is_empty(), "no evidence anywhere: {:?}", ev.paths);
        assert!(ev.anomalies.is_empty(), "no history: {:?}", ev.anomalies);
        assert!(!ev.dot.is_empty());

        // A new account on the ring's IP: the IP and the ring behind it.
        let t = txn("new-2", NOW, "newcomer", "dev-new", RING_IP, "m-new");
        let sub = sample(&graph, &t, &SamplerConfig::default());
        let ev = explain(&graph, &sub, &book, 5, false);
        check_paths(&ev, "newcomer");
        assert!(
            node_is(&ev.paths[0].nodes[1], NodeType::Ip, RING_IP),
            "{:?}",
            ev.paths[0]
        );
        assert!(ev.anomalies.iter().all(|a| a.entity_id != "newcomer"));
        assert!(ev.anomalies.iter().any(|a| a.entity_id == RING_IP));
    }
}
