//! A node's adjacency: one list of [`Edge`]s per relation side (port), all held in one
//! allocation, port after port.
//!
//! One allocation instead of one per port means reading a port costs one dependent load
//! from the node (its edges' address is in the node itself), not two (node → the ports'
//! list headers → the list), and a node holds no separate block of list headers. The price
//! is that adding or removing an edge moves the edges of the ports after it (each port
//! holds at most `adjacency_cap` edges: a few kilobytes at most at the default cap of 64).

use std::ops::Index;

use crate::graph::{Edge, MAX_PORTS};
use crate::prefetch::{Intent, prefetch_head, prefetch_tail};

/// The edges of every port of a node, in port order; see the module docs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Adjacency {
    /// Port `p` is `edges[start(p)..ends[p]]`, where `start(p)` is the end of port `p - 1`.
    edges: Vec<Edge>,
    ends: [u32; MAX_PORTS],
    /// How many ports the node's type has.
    ports: u8,
}

impl Adjacency {
    /// Empty lists for a node type with `ports` relation sides (at most [`MAX_PORTS`]).
    pub fn new(ports: usize) -> Self {
        assert!(ports <= MAX_PORTS, "{ports} ports, at most {MAX_PORTS}");
        Adjacency {
            edges: Vec::new(),
            ends: [0; MAX_PORTS],
            ports: ports as u8,
        }
    }

    /// The given lists, one per port, in port order; `None` when there are more than
    /// [`MAX_PORTS`] of them or more edges than the positions can address.
    pub fn from_lists(lists: Vec<Vec<Edge>>) -> Option<Self> {
        if lists.len() > MAX_PORTS {
            return None;
        }
        let mut adj = Adjacency::new(lists.len());
        adj.edges.reserve_exact(lists.iter().map(Vec::len).sum());
        for (p, list) in lists.into_iter().enumerate() {
            adj.edges.extend(list);
            adj.ends[p] = u32::try_from(adj.edges.len()).ok()?;
        }
        for p in adj.port_count()..MAX_PORTS {
            adj.ends[p] = u32::try_from(adj.edges.len()).ok()?;
        }
        Some(adj)
    }

    /// How many ports (relation sides) the node has.
    pub fn port_count(&self) -> usize {
        usize::from(self.ports)
    }

    fn start(&self, port: usize) -> usize {
        if port == 0 {
            0
        } else {
            self.ends[port - 1] as usize
        }
    }

    /// The edges of `port`, ordered by last sighting (see [`crate::graph`]).
    pub fn port(&self, port: usize) -> &[Edge] {
        &self.edges[self.start(port)..self.ends[port] as usize]
    }

    /// The edges of `port`, to update in place.
    pub fn port_mut(&mut self, port: usize) -> &mut [Edge] {
        let (from, to) = (self.start(port), self.ends[port] as usize);
        &mut self.edges[from..to]
    }

    /// Starts loading the newest `count` edges of each port whose bit is set in `ports`:
    /// what [`crate::graph::Graph::apply`] does for each entity it interns, before it
    /// touches their edges, and the sampler for the nodes it is about to expand.
    pub(crate) fn prefetch(&self, ports: u8, count: usize, intent: Intent) {
        let every_port = (1u8 << self.port_count()).wrapping_sub(1);
        if ports & every_port == every_port && self.edges.len() <= count {
            // Every edge is among the newest `count` of its port: one pass over all.
            prefetch_tail(&self.edges, count, intent);
            return;
        }
        let mut start = 0;
        for (p, &end) in self.ends[..self.port_count()].iter().enumerate() {
            let end = end as usize;
            if ports & (1 << p) != 0 {
                prefetch_tail(&self.edges[start..end], count, intent);
            }
            start = end;
        }
    }

    /// Starts loading up to `count` edges from the start of `port` on (into the ports
    /// after it): what removing one of its oldest edges reads (the walk from the oldest
    /// end) and moves (every edge after it, in this one allocation).
    pub(crate) fn prefetch_from(&self, port: usize, count: usize, intent: Intent) {
        prefetch_head(&self.edges[self.start(port)..], count, intent);
    }

    /// Every port's edges, in port order.
    pub fn iter(&self) -> impl Iterator<Item = &[Edge]> + '_ {
        (0..self.port_count()).map(|p| self.port(p))
    }

    /// Every port's edges as owned lists (tests, snapshots).
    pub fn to_vec(&self) -> Vec<Vec<Edge>> {
        self.iter().map(<[Edge]>::to_vec).collect()
    }

    /// Edges over all ports.
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Edges the allocation has room for.
    pub fn capacity(&self) -> usize {
        self.edges.capacity()
    }

    /// Inserts `edge` at position `at` of `port`.
    pub(crate) fn insert(&mut self, port: usize, at: usize, edge: Edge) {
        if self.edges.len() == self.edges.capacity() {
            // Grow by an eighth, not double: adjacency is most of the memory.
            self.edges.reserve_exact(self.edges.len() / 8 + 1);
        }
        self.edges.insert(self.start(port) + at, edge);
        for end in &mut self.ends[port..] {
            *end += 1;
        }
    }

    /// Removes and returns the edge at position `at` of `port`.
    pub(crate) fn remove(&mut self, port: usize, at: usize) -> Edge {
        let edge = self.edges.remove(self.start(port) + at);
        for end in &mut self.ends[port..] {
            *end -= 1;
        }
        edge
    }

    /// Drops `port`'s oldest edge (its first) and inserts `edge` in last-sighting order,
    /// returning the dropped edge: what a full list does for a new neighbour. One rotation
    /// within the port, where a remove and an insert would each shift every later port's
    /// edges. `port` must not be empty.
    pub(crate) fn replace_oldest(&mut self, port: usize, edge: Edge) -> Edge {
        let list = self.port_mut(port);
        // Where `edge` goes once the first edge is gone (0 if it is older than all).
        let at = list.partition_point(|x| x.last_s <= edge.last_s).max(1);
        list[..at].rotate_left(1);
        std::mem::replace(&mut list[at - 1], edge)
    }

    /// Gives memory back when more than an eighth of the allocation is unused (after an
    /// edge was dropped for good, not replaced).
    pub(crate) fn shrink_if_slack(&mut self) {
        if self.edges.capacity() > self.edges.len() + self.edges.len() / 8 {
            self.edges.shrink_to_fit();
        }
    }

    /// Whether some edge was last seen before `time_s`. Each port is ordered by last
    /// sighting, so this reads only each port's oldest edge.
    pub(crate) fn any_last_seen_before(&self, time_s: u32) -> bool {
        self.iter()
            .any(|port| port.first().is_some_and(|e| e.last_s < time_s))
    }

    /// Keeps only the edges `keep` accepts, in every port, in place; returns how many
    /// were removed. Gives memory back when more than an eighth (and one edge) of the
    /// allocation is then unused.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Edge) -> bool) -> usize {
        let before = self.edges.len();
        let (mut read, mut write) = (0, 0);
        for end in &mut self.ends {
            while read < *end as usize {
                if keep(&self.edges[read]) {
                    self.edges[write] = self.edges[read];
                    write += 1;
                }
                read += 1;
            }
            *end = write as u32;
        }
        self.edges.truncate(write);
        if self.edges.capacity() > write + write / 8 + 1 {
            self.edges.shrink_to_fit();
        }
        before - write
    }
}

impl Index<usize> for Adjacency {
    type Output = [Edge];

    fn index(&self, port: usize) -> &[Edge] {
        self.port(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::NodeRef;

    fn e(nbr: u32) -> Edge {
        Edge::new(NodeRef(nbr), nbr, 1.0)
    }

    fn nbrs(a: &Adjacency) -> Vec<Vec<u32>> {
        a.iter()
            .map(|port| port.iter().map(|e| e.nbr.0).collect())
            .collect()
    }

    #[test]
    fn ports_keep_their_own_edges_through_inserts_and_removals() {
        let mut a = Adjacency::new(3);
        a.insert(1, 0, e(10));
        a.insert(0, 0, e(1));
        a.insert(2, 0, e(20));
        a.insert(1, 1, e(11));
        a.insert(0, 0, e(0));
        assert_eq!(nbrs(&a), vec![vec![0, 1], vec![10, 11], vec![20]]);
        assert_eq!(a.remove(1, 0).nbr, NodeRef(10));
        assert_eq!(a.remove(0, 1).nbr, NodeRef(1));
        assert_eq!(nbrs(&a), vec![vec![0], vec![11], vec![20]]);
        a.port_mut(2)[0].count = 7;
        assert_eq!(a[2][0].count, 7);
        assert_eq!(a.edge_count(), 3);
        assert!(a.capacity() >= 3);
    }

    #[test]
    fn retain_and_round_trip_through_lists() {
        let lists = vec![vec![e(1), e(2)], vec![], vec![e(3), e(4), e(5)]];
        let mut a = Adjacency::from_lists(lists.clone()).expect("fits");
        assert_eq!(a.to_vec(), lists);
        assert_eq!(a.retain(|e| e.nbr.0 % 2 == 1), 2);
        assert_eq!(nbrs(&a), vec![vec![1], vec![], vec![3, 5]]);
        a.insert(1, 0, e(9));
        assert_eq!(nbrs(&a), vec![vec![1], vec![9], vec![3, 5]]);
        assert!(Adjacency::from_lists(vec![Vec::new(); MAX_PORTS + 1]).is_none());
    }

    #[test]
    fn replace_oldest_is_a_remove_of_the_first_edge_then_an_ordered_insert() {
        let times = [3u32, 5, 5, 8, 9];
        for new_time in 0..11 {
            for port in 0..3 {
                let lists = |t: &[u32]| {
                    let mut l = vec![vec![e(1)], vec![e(2), e(4)], vec![e(20)]];
                    l[port] = t.iter().map(|&t| e(t)).collect();
                    l
                };
                let mut a = Adjacency::from_lists(lists(&times)).expect("fits");
                let mut b = a.clone();
                let edge = Edge::new(NodeRef(100 + new_time), new_time, 1.0);
                let dropped = a.replace_oldest(port, edge);
                let expected = b.remove(port, 0);
                let at = b.port(port).partition_point(|x| x.last_s <= new_time);
                b.insert(port, at, edge);
                assert_eq!(dropped.nbr, expected.nbr);
                assert_eq!(
                    a.to_vec(),
                    b.to_vec(),
                    "port {port}, new edge at {new_time}"
                );
            }
        }
    }

    #[test]
    fn any_last_seen_before_reads_each_ports_oldest_edge() {
        // Edge::new(nbr, time_s, amount): last seen at `nbr` seconds here.
        let a = Adjacency::from_lists(vec![vec![], vec![e(7), e(9)], vec![e(5)]]).expect("fits");
        assert!(!a.any_last_seen_before(5));
        assert!(a.any_last_seen_before(6));
        assert!(
            !Adjacency::from_lists(vec![vec![]; 3])
                .expect("fits")
                .any_last_seen_before(u32::MAX)
        );
    }
}
