//! Finding a node by its id: the hash of an id ([`IdHash`]) and each shard's index from id
//! to slot ([`IdIndex`]).
//!
//! The index is an open-addressing table of 8-byte entries with linear probing, written for
//! one property a library table does not offer: the address where an id's search starts is
//! known from its hash alone, so the writer can ask for that line a few transactions before
//! it interns the id ([`IdIndex::prefetch`], used by [`crate::graph::Graph::prefetch_upcoming`]).
//! On a graph beyond the caches, interning an entity is otherwise dependent misses (the
//! index's line, then the node whose id confirms the match), each entity's after the
//! previous one's, because every entity is interned under its own shard lock.

use rustc_hash::FxBuildHasher;

use crate::graph::{Node, SHARD_BITS};
use crate::prefetch::{Intent, prefetch};

/// The hash of a node id: its top bits pick the shard, its low 32 (the *tag*) place it in
/// the shard's index, which stores the tag with the slot so that growing the index, and
/// most mismatches, need not read the node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHash(u64);

impl IdHash {
    /// The hash of `key`.
    pub(crate) fn of(key: &str) -> IdHash {
        IdHash(std::hash::BuildHasher::hash_one(&FxBuildHasher, key))
    }

    /// The shard the id lives in.
    pub(crate) fn shard(self) -> usize {
        // The top bits of the multiplied hash: well spread, and independent of the tag.
        (self.0.wrapping_mul(SPREAD) >> (64 - SHARD_BITS)) as usize
    }

    /// The 32 bits the index stores.
    pub(crate) fn tag(self) -> u32 {
        self.0 as u32
    }
}

/// An entry: the tag in the high half, the slot plus one in the low half; 0 is empty.
type Entry = u64;

const EMPTY: Entry = 0;

/// Cache line size assumed by [`IdIndex::prefetch`].
const LINE: usize = 64;

/// Entries past its home that a search is likely to read: [`IdIndex::prefetch`] also asks
/// for the line holding the last of them when it is another one.
const LIKELY_RUN: usize = 2;

/// Multiplier that spreads a hash's bits into the top ones (2^64 over the golden ratio).
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// The smallest table allocated (the first insert allocates it).
const MIN_CAPACITY: usize = 8;

fn entry(tag: u32, slot: u32) -> Entry {
    (u64::from(tag) << 32) | (u64::from(slot) + 1)
}

fn tag_of(e: Entry) -> u32 {
    (e >> 32) as u32
}

fn slot_of(e: Entry) -> u32 {
    (e as u32) - 1
}

/// A shard's index: every live node as (tag, slot), found by the [`IdHash`] of its id and
/// confirmed against the node's own key. The id is stored once, in the node; an entry is 8
/// bytes, the table at most 3/4 full (grown by doubling), and growing it rehashes from the
/// entries alone. Deletion shifts the entries after the hole back (no tombstones), so a
/// search always ends at the first empty entry.
#[derive(Default)]
pub(crate) struct IdIndex {
    entries: Vec<Entry>,
    len: usize,
}

impl IdIndex {
    /// An empty index with room for `n` nodes.
    pub(crate) fn with_capacity(n: usize) -> IdIndex {
        let mut index = IdIndex::default();
        if n > 0 {
            index.entries = vec![EMPTY; capacity_for(n)];
        }
        index
    }

    /// The position a search for `tag` starts at (the table is not empty).
    fn home(&self, tag: u32) -> usize {
        let bits = self.entries.len().trailing_zeros();
        // The tag's multiplied top bits, so neighbouring tags spread out.
        (u64::from(tag).wrapping_mul(SPREAD) >> (64 - bits)) as usize
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// The position of the entry with `tag` whose slot passes `is`.
    fn position(&self, tag: u32, mut is: impl FnMut(u32) -> bool) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut at = self.home(tag);
        loop {
            let e = self.entries[at];
            if e == EMPTY {
                return None;
            }
            if tag_of(e) == tag && is(slot_of(e)) {
                return Some(at);
            }
            at = (at + 1) & mask;
        }
    }

    /// The slot of the node whose id has hash `h` and passes `is` (which compares the
    /// node's key; called only for entries whose tag matches).
    pub(crate) fn find_by(&self, h: IdHash, is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.position(h.tag(), is)
            .map(|at| slot_of(self.entries[at]))
    }

    /// The slot of the node of `nodes` whose id is `key` (with hash `h`).
    pub(crate) fn find(&self, nodes: &[Node], h: IdHash, key: &str) -> Option<u32> {
        self.find_by(h, |slot| nodes[slot as usize].key == *key)
    }

    /// The slot of the first entry with the tag of `h`, without confirming the id: the node
    /// a search for it will most likely read, for a prefetch.
    pub(crate) fn likely(&self, h: IdHash) -> Option<u32> {
        self.find_by(h, |_| true)
    }

    /// Starts loading the line where a search for `h` begins, and the next one when the
    /// search is likely to run into it.
    pub(crate) fn prefetch(&self, h: IdHash, intent: Intent) {
        if self.entries.is_empty() {
            return;
        }
        let at = self.home(h.tag());
        let base = self.entries.as_ptr();
        // `wrapping_add`: no pointer-arithmetic precondition to meet for a hint. The table
        // need not start on a line boundary, so compare addresses, not positions.
        let first = base.wrapping_add(at);
        let soon = base.wrapping_add((at + LIKELY_RUN) & self.mask());
        prefetch(first, intent);
        if soon as usize / LINE != first as usize / LINE {
            prefetch(soon, intent);
        }
    }

    /// Adds the node at `slot`, whose id has hash `h` and is not in the index.
    pub(crate) fn insert(&mut self, h: IdHash, slot: u32) {
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        self.place(entry(h.tag(), slot));
        self.len += 1;
    }

    /// Puts `e` at the first empty position from its home (there is one: the table is
    /// never full).
    fn place(&mut self, e: Entry) {
        let mask = self.mask();
        let mut at = self.home(tag_of(e));
        while self.entries[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.entries[at] = e;
    }

    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.entries, vec![EMPTY; capacity]);
        for e in old.into_iter().filter(|&e| e != EMPTY) {
            self.place(e);
        }
    }

    /// Removes the node at `slot`, whose id has hash `h`.
    pub(crate) fn remove(&mut self, h: IdHash, slot: u32) {
        let Some(mut hole) = self.position(h.tag(), |s| s == slot) else {
            return;
        };
        self.len -= 1;
        // Shift back every later entry of the run that may move into the hole: one whose
        // home is not between the hole and itself (cyclically), so it stays reachable.
        let mask = self.mask();
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let e = self.entries[at];
            if e == EMPTY {
                break;
            }
            let home = self.home(tag_of(e));
            if at.wrapping_sub(home) & mask >= at.wrapping_sub(hole) & mask {
                self.entries[hole] = e;
                hole = at;
            }
        }
        self.entries[hole] = EMPTY;
    }

    /// Entries in the index.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of its table.
    pub(crate) fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

/// The table size that holds `n` entries at most 3/4 full.
fn capacity_for(n: usize) -> usize {
    (n * 4 / 3 + 1).next_power_of_two().max(MIN_CAPACITY)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A hash whose tag is `tag` (the shard bits do not matter to one index).
    fn hash(tag: u32) -> IdHash {
        IdHash(u64::from(tag))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        Remove(u32),
    }

    proptest! {
        /// Against a map from slot to tag: every live slot is found by its tag and its own
        /// check, removed ones are not, through growth and backward-shift deletion. Tags
        /// come from a small range, so runs of equal tags and wrapped runs occur.
        #[test]
        fn finds_what_was_inserted_and_not_what_was_removed(
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (0u32..400).prop_map(Op::Insert),
                    2 => (0u32..400).prop_map(Op::Remove),
                ],
                1..600,
            ),
            tags in 1u32..64,
        ) {
            let mut index = IdIndex::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            let tag_for = |slot: u32| slot.wrapping_mul(2_654_435_761) % tags;
            for op in ops {
                match op {
                    Op::Insert(slot) if !model.contains_key(&slot) => {
                        index.insert(hash(tag_for(slot)), slot);
                        model.insert(slot, tag_for(slot));
                    }
                    Op::Insert(_) => {}
                    Op::Remove(slot) => {
                        index.remove(hash(tag_for(slot)), slot);
                        model.remove(&slot);
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for slot in 0..400 {
                let found = index.find_by(hash(tag_for(slot)), |s| s == slot);
                prop_assert_eq!(found, model.contains_key(&slot).then_some(slot));
            }
            prop_assert!(index.len() * 4 <= index.entries.len() * 3);
        }
    }

    #[test]
    fn an_empty_index_finds_nothing_and_prefetches_nothing() {
        let index = IdIndex::default();
        assert_eq!(index.find_by(hash(7), |_| true), None);
        assert_eq!(index.likely(hash(7)), None);
        index.prefetch(hash(7), Intent::Read);
        assert_eq!(index.bytes(), 0);
        let sized = IdIndex::with_capacity(100);
        assert!(sized.entries.len() >= 134 && sized.entries.len().is_power_of_two());
    }

    #[test]
    fn likely_names_the_first_entry_with_the_tag() {
        let mut index = IdIndex::default();
        index.insert(hash(5), 10);
        index.insert(hash(5), 11);
        index.insert(hash(6), 12);
        assert_eq!(index.likely(hash(5)), Some(10));
        assert_eq!(index.find_by(hash(5), |s| s == 11), Some(11));
        assert_eq!(index.likely(hash(6)), Some(12));
        assert_eq!(index.likely(hash(9)), None);
    }
}
