//! A lock-free mirror of every node's first cache line (first sighting, aggregates,
//! degrees), so that samplers read most nodes without taking a shard lock.
//!
//! Why: a shard's `RwLock` costs two atomic read-modify-writes per node read, and on x86
//! each is a full fence. A sample adds ~300 nodes; with a fence on either side of every node
//! read, the cache misses of consecutive nodes cannot overlap, and they are most of the
//! time of a sample on a graph larger than the caches. Reading a node here is a handful of
//! plain loads, and a sampler can prefetch the records of all the neighbours a frontier has
//! chosen before it reads them, so their misses overlap.
//!
//! How: one `HotNode` per node slot, 64 bytes of atomics, in per-type tables whose
//! segments never move once allocated (segment `s` holds `64·2^s` records, so the table
//! grows with the graph without copying). The writer already holds the node's shard write
//! lock when it changes a node, so there is one writer per record at a time; it publishes
//! the new state under a sequence number (odd while writing), and a reader retries until it
//! sees the same even number before and after its loads (a seqlock). Every field is an
//! atomic, so a torn read is detected, never undefined behaviour.
//!
//! A new segment is allocated by the writer ahead of need (`HotTable::grow_ahead`), outside
//! any shard lock: filling a segment of millions of records takes tens of milliseconds
//! (41 ms for 64 MB on the 2-core VM), and under the shard lock of the node that first
//! needed it, every sampler reading that shard would wait as long.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use crate::graph::{Aggregates, MAX_PORTS, Node, NodeRef};
use crate::prefetch::{Intent, prefetch};

/// Records in segment 0; segment `s` holds `BASE << s`.
const BASE: u64 = 64;
/// Segments per table: enough for every `NodeRef` (32 bits).
const SEGMENTS: usize = 27;

/// One node's first-line state as atomics: word 0 is the sequence number (low 32 bits)
/// and the degrees of ports 4 and 5; words 1–2 the first sighting and the aggregates'
/// newest event time; words 3–6 the eight aggregate values (two `f32` per word); word 7
/// the degrees of ports 0–3 (16 bits each).
#[derive(Default)]
#[repr(align(64))]
pub(crate) struct HotNode {
    w: [AtomicU64; 8],
}

/// What a sampler reads of a node without its shard lock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotView {
    /// First event time, Unix ms (`i64::MAX` for an evicted slot).
    pub first_ms: i64,
    /// The aggregates of every transaction applied to the node.
    pub agg: Aggregates,
    /// The length of each adjacency list, in `ports` order (saturating at `u16::MAX`).
    pub degrees: [u16; MAX_PORTS],
}

impl HotNode {
    /// Publishes `node`'s state. The caller holds the node's shard write lock, so no other
    /// writer touches this record meanwhile.
    fn publish(&self, node: &Node) {
        let v = &node.agg.v;
        let mut d = [0u16; MAX_PORTS];
        for (d, list) in d.iter_mut().zip(node.ports.iter()) {
            *d = u16::try_from(list.len()).unwrap_or(u16::MAX);
        }
        let pair = |a: f32, b: f32| u64::from(a.to_bits()) | (u64::from(b.to_bits()) << 32);
        let seq = self.w[0].load(Ordering::Relaxed) as u32;
        // Even when stable, never 0 again once published (0 means never published).
        let next = match seq.wrapping_add(2) {
            0 => 2,
            n => n,
        };
        let high = (u64::from(d[4]) << 32) | (u64::from(d[5]) << 48);
        // Odd while writing: readers that overlap retry.
        self.w[0].store(high | u64::from(next - 1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.w[1].store(node.first_ms as u64, Ordering::Relaxed);
        self.w[2].store(node.agg.l_ms as u64, Ordering::Relaxed);
        for i in 0..4 {
            self.w[3 + i].store(pair(v[2 * i], v[2 * i + 1]), Ordering::Relaxed);
        }
        let low = (0..4).fold(0u64, |acc, i| acc | (u64::from(d[i]) << (16 * i)));
        self.w[7].store(low, Ordering::Relaxed);
        self.w[0].store(high | u64::from(next), Ordering::Release);
    }

    /// A consistent copy of the record, or `None` for a slot never published.
    fn read(&self) -> Option<HotView> {
        loop {
            let before = self.w[0].load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words: [u64; 7] = std::array::from_fn(|i| self.w[i + 1].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.w[0].load(Ordering::Relaxed) != before {
                continue;
            }
            if before as u32 == 0 {
                return None;
            }
            let half = |w: u64, i: usize| f32::from_bits((w >> (32 * i)) as u32);
            let low = words[6];
            return Some(HotView {
                first_ms: words[0] as i64,
                agg: Aggregates {
                    l_ms: words[1] as i64,
                    v: std::array::from_fn(|i| half(words[2 + i / 2], i % 2)),
                },
                degrees: [
                    low as u16,
                    (low >> 16) as u16,
                    (low >> 32) as u16,
                    (low >> 48) as u16,
                    (before >> 32) as u16,
                    (before >> 48) as u16,
                ],
            });
        }
    }
}

/// The [`HotNode`]s of one node type, indexed by `NodeRef`.
#[derive(Default)]
pub(crate) struct HotTable {
    segments: [OnceLock<Box<[HotNode]>>; SEGMENTS],
    /// One past the highest record index published so far.
    end: AtomicU32,
    /// Segments below this one are all allocated.
    complete: AtomicUsize,
}

/// (segment, offset) of record `index`.
fn locate(index: u32) -> (usize, usize) {
    let q = u64::from(index) / BASE + 1;
    let segment = 63 - q.leading_zeros() as usize;
    let first = BASE * ((1 << segment) - 1);
    (segment, (u64::from(index) - first) as usize)
}

/// The records of a new segment `segment`, never published.
fn new_segment(segment: usize) -> Box<[HotNode]> {
    (0..BASE << segment).map(|_| HotNode::default()).collect()
}

/// How far past the highest published record [`HotTable::grow_ahead`] makes sure records
/// exist: an eighth of the table, and at least a segment 0. Nodes are given the lowest
/// free slot of their shard, so record indices grow about as fast as the node count.
fn ahead_of(end: u32) -> u32 {
    end.saturating_add(end / 8).saturating_add(BASE as u32)
}

impl HotTable {
    /// Publishes the state of `node`, at `at`. Call it under the node's shard write lock
    /// after every change to its first sighting, aggregates or degrees. Allocates the
    /// record's segment if [`HotTable::grow_ahead`] has not (a node far beyond the others).
    pub(crate) fn publish(&self, at: NodeRef, node: &Node) {
        let (segment, offset) = locate(at.0);
        let records = self.segments[segment].get_or_init(|| new_segment(segment));
        records[offset].publish(node);
        self.end
            .fetch_max(at.0.saturating_add(1), Ordering::Relaxed);
    }

    /// Allocates every segment up to the one holding [`ahead_of`] the records published so
    /// far, so that [`HotTable::publish`] does not have to under a shard lock. The writer
    /// calls it before each transaction, holding no lock; it costs a load and a check when
    /// nothing is due.
    pub(crate) fn grow_ahead(&self) {
        let (last, _) = locate(ahead_of(self.end.load(Ordering::Relaxed)));
        let complete = self.complete.load(Ordering::Relaxed);
        if last < complete {
            return;
        }
        for segment in complete..=last {
            self.segments[segment].get_or_init(|| new_segment(segment));
        }
        self.complete.store(last + 1, Ordering::Relaxed);
    }

    /// The record at `at`, `None` while its segment has not been allocated.
    fn record(&self, at: NodeRef) -> Option<&HotNode> {
        let (segment, offset) = locate(at.0);
        self.segments[segment].get()?.get(offset)
    }

    /// The published state of the node at `at`, `None` if it was never published.
    pub(crate) fn read(&self, at: NodeRef) -> Option<HotView> {
        self.record(at)?.read()
    }

    /// Bytes of the segments allocated so far.
    pub(crate) fn bytes(&self) -> usize {
        self.segments
            .iter()
            .filter_map(OnceLock::get)
            .map(|records| std::mem::size_of_val::<[HotNode]>(records))
            .sum()
    }

    /// Starts loading the record at `at`: with [`Intent::Write`] ahead of a
    /// [`HotTable::publish`] (the writer), with [`Intent::Read`] ahead of a
    /// [`HotTable::read`] (a sampler). A hint, not a load: nothing waits for it to arrive.
    pub(crate) fn prefetch(&self, at: NodeRef, intent: Intent) {
        if let Some(record) = self.record(at) {
            prefetch(record, intent);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::adjacency::Adjacency;
    use crate::graph::Edge;

    /// A node whose every first-line field is derived from `k`.
    fn node(k: u32) -> Node {
        let agg = Aggregates {
            l_ms: i64::from(k) * 3,
            v: std::array::from_fn(|i| (k as f32) + i as f32),
        };
        let ports = Adjacency::from_lists(
            (0..MAX_PORTS)
                .map(|p| vec![Edge::new(NodeRef(0), 0, 0.0); (k as usize + p) % 5])
                .collect(),
        )
        .expect("fits");
        Node {
            key: "n".into(),
            first_ms: i64::from(k),
            agg,
            prev: agg,
            history: Vec::new(),
            ports,
            sequence: VecDeque::new(),
        }
    }

    fn consistent(v: &HotView) -> bool {
        let k = v.first_ms as u32;
        let expected = node(k);
        let degrees: Vec<u16> = expected.ports.iter().map(|l| l.len() as u16).collect();
        v.agg == expected.agg && v.degrees[..] == degrees[..]
    }

    #[test]
    fn a_reader_never_sees_a_half_published_node() {
        let table = HotTable::default();
        let at = NodeRef(70);
        assert_eq!(table.read(at), None, "never published");
        table.publish(at, &node(1));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for k in 2..1_000_000 {
                    table.publish(at, &node(k));
                }
                stop.store(true, Ordering::Relaxed);
            });
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) || reads < 1000 {
                let v = table.read(at).expect("published");
                assert!(consistent(&v), "torn read: {v:?}");
                reads += 1;
            }
        });
        let last = table.read(at).unwrap();
        assert_eq!(last.first_ms, 999_999);
        assert!(consistent(&last));
    }

    #[test]
    fn the_writer_allocates_the_next_segment_before_a_publish_needs_it() {
        let table = HotTable::default();
        let allocated = |s: usize| table.segments[s].get().is_some();
        table.grow_ahead();
        assert!(allocated(0) && allocated(1), "the first records up front");
        assert!(!allocated(2));
        // Segment 1 holds records 64..192, segment 2 192..448.
        let n = node(1);
        for i in 0..100 {
            table.publish(NodeRef(i), &n);
        }
        table.grow_ahead();
        assert!(
            !allocated(2),
            "not while the published records are far from its start"
        );
        for i in 100..180 {
            table.publish(NodeRef(i), &n);
        }
        assert!(
            !allocated(2),
            "publish allocates only the segment it writes to"
        );
        table.grow_ahead();
        assert!(
            allocated(2),
            "near the end, the next segment is there before it is needed"
        );
        assert!(!allocated(3), "and not more");
        // A publish far beyond the others still finds its record.
        table.publish(NodeRef(100_000), &n);
        assert_eq!(table.read(NodeRef(100_000)).map(|v| v.first_ms), Some(1));
        // Growing ahead from there fills the segments below it.
        table.grow_ahead();
        let (far, _) = locate(ahead_of(100_001));
        assert!((0..=far).all(allocated));
    }

    #[test]
    fn segments_tile_the_index_space() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(63), (0, 63));
        assert_eq!(locate(64), (1, 0));
        assert_eq!(locate(191), (1, 127));
        assert_eq!(locate(192), (2, 0));
        let (segment, offset) = locate(u32::MAX);
        assert!(segment < SEGMENTS);
        assert!((offset as u64) < BASE << segment);
    }
}
