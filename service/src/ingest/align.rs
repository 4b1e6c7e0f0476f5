//! Event-time alignment of partitions: merges the records of several partitions into one
//! stream in event-time order before they reach the graph.
//!
//! The graph refuses transactions older than its newest event time minus the late window
//! (1 h by default), so partitions must not be applied at different paces. Consuming live,
//! they are not: every partition is near its end. Replaying a backlog (a fresh replica reads
//! the topic from its beginning), a consumer may read one partition far ahead of the others
//! (a broker may answer a fetch with a whole partition; Kafka gives each partition up to
//! `max.partition.fetch.bytes` per fetch, which is days of event time in a sparse stream),
//! and every transaction of the slower partitions would be refused as too late.
//!
//! [`Aligner`] holds what was polled, one FIFO queue per partition, and hands out the head
//! with the smallest event time `T`, unless a partition with nothing queued may still send
//! something older than the graph can take. Such a partition holds the merge back while
//!
//! - it is *behind*: its next offset is below its high watermark (or none is known yet), so
//!   records are waiting for it on the broker; or
//! - `T` is more than `slack` past the last event time it sent: caught up or not, its next
//!   record could be that old. A producer in event-time order writes every partition at the
//!   same pace, so the others soon follow; with `slack` at half the late window, whatever it
//!   sends next at or after its last time is still in the window.
//!
//! A partition that holds the merge back for `max_wait` is taken to be idle and holds
//! nothing back until it sends again; nor does any partition while `capacity` records are
//! held. Either way every record is still applied; the graph counts any that are now too
//! late. Within a partition the order is never changed, so offsets complete in order.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One partition's queued records and what it sent last.
struct Partition<T> {
    queue: VecDeque<(i64, T)>,
    /// The latest event time it sent.
    last_ms: Option<i64>,
    /// It held the merge back for `max_wait`: ignored until it sends again.
    idle: bool,
}

impl<T> Default for Partition<T> {
    fn default() -> Self {
        Partition {
            queue: VecDeque::new(),
            last_ms: None,
            idle: false,
        }
    }
}

/// Records of several partitions, handed out in event-time order (see the module docs).
pub struct Aligner<K, T> {
    partitions: HashMap<K, Partition<T>>,
    held: usize,
    capacity: usize,
    max_wait: Duration,
    slack_ms: i64,
    /// Since when the merge has been held back.
    blocked_since: Option<Instant>,
    /// Times the merge went on without a partition that held it back.
    gave_up: u64,
}

impl<K: Hash + Eq + Clone, T> Aligner<K, T> {
    /// An empty aligner that holds up to `capacity` records, lets a partition with nothing
    /// queued hold the merge back for up to `max_wait`, and hands out records up to
    /// `slack_ms` past the last event time of a partition that is not behind.
    pub fn new(capacity: usize, max_wait: Duration, slack_ms: i64) -> Self {
        Aligner {
            partitions: HashMap::new(),
            held: 0,
            capacity: capacity.max(1),
            max_wait,
            slack_ms,
            blocked_since: None,
            gave_up: 0,
        }
    }

    /// Queues `item` of partition `key` with its event time (Unix ms). A record without
    /// one (it cannot be decoded) should come with `i64::MIN`: it goes out as soon as it
    /// heads its partition's queue.
    pub fn push(&mut self, key: K, event_time_ms: i64, item: T) {
        let p = self.partitions.entry(key).or_default();
        if event_time_ms != i64::MIN {
            p.last_ms = Some(p.last_ms.map_or(event_time_ms, |l| l.max(event_time_ms)));
        }
        p.idle = false;
        p.queue.push_back((event_time_ms, item));
        self.held += 1;
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Times the merge went on without a partition that held it back (after `max_wait`,
    /// or with `capacity` records held).
    pub fn gave_up(&self) -> u64 {
        self.gave_up
    }

    /// The next record in event-time order, or `None` when nothing is held or when one of
    /// `partitions` holds the merge back (see the module docs; `behind` says which are
    /// behind their high watermark).
    pub fn pop(
        &mut self,
        partitions: &[K],
        behind: impl Fn(&K) -> bool,
        now: Instant,
    ) -> Option<T> {
        let (key, head_ms) = self
            .partitions
            .iter()
            .filter_map(|(k, p)| p.queue.front().map(|(t, _)| (k, *t)))
            .min_by_key(|(_, t)| *t)?;
        let key = key.clone();
        let holds_back = |k: &K| match self.partitions.get(k) {
            None => behind(k),
            Some(p) => {
                p.queue.is_empty()
                    && !p.idle
                    && (behind(k)
                        || p.last_ms
                            .is_some_and(|l| head_ms > l.saturating_add(self.slack_ms)))
            }
        };
        let blockers: Vec<K> = partitions
            .iter()
            .filter(|k| holds_back(k))
            .cloned()
            .collect();
        if !blockers.is_empty() {
            let since = *self.blocked_since.get_or_insert(now);
            if now.duration_since(since) < self.max_wait && self.held < self.capacity {
                return None;
            }
            for k in blockers {
                self.partitions.entry(k).or_default().idle = true;
            }
            self.gave_up += 1;
        }
        self.blocked_since = None;
        let (_, item) = self
            .partitions
            .get_mut(&key)
            .and_then(|p| p.queue.pop_front())
            .expect("the key of a non-empty queue");
        self.held -= 1;
        Some(item)
    }

    /// Everything held, in event-time order, waiting for nothing (at shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.held);
        let now = Instant::now();
        while let Some(item) = self.pop(&[], |_| false, now) {
            out.push(item);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(2);
    const SLACK: i64 = 1_000;

    fn drain_now(
        a: &mut Aligner<i32, &'static str>,
        partitions: &[i32],
        behind: &[i32],
    ) -> Vec<&'static str> {
        let now = Instant::now();
        std::iter::from_fn(|| a.pop(partitions, |p| behind.contains(p), now)).collect()
    }

    #[test]
    fn partitions_are_merged_by_event_time_keeping_each_partition_in_order() {
        let mut a = Aligner::new(100, WAIT, SLACK);
        a.push(0, 10, "p0 t10");
        a.push(0, 30, "p0 t30");
        a.push(0, 20, "p0 t20 (late within its partition)");
        a.push(1, 15, "p1 t15");
        a.push(1, 40, "p1 t40");
        assert_eq!(a.len(), 5);
        assert_eq!(
            drain_now(&mut a, &[0, 1], &[]),
            [
                "p0 t10",
                "p1 t15",
                "p0 t30",
                "p0 t20 (late within its partition)",
                "p1 t40"
            ]
        );
        assert!(a.is_empty());
        assert_eq!(a.gave_up(), 0);
    }

    #[test]
    fn a_partition_behind_with_nothing_queued_stops_the_merge_until_it_delivers() {
        let mut a = Aligner::new(100, WAIT, SLACK);
        a.push(0, 100, "p0 t100");
        a.push(0, 200, "p0 t200");
        // Partition 1 is behind its high watermark and has sent nothing yet: it may hold
        // older records.
        assert!(drain_now(&mut a, &[0, 1], &[1]).is_empty());
        a.push(1, 50, "p1 t50");
        // Partition 1 has more to send after t50: it blocks again once its queue is empty.
        assert_eq!(drain_now(&mut a, &[0, 1], &[1]), ["p1 t50"]);
        // Caught up: nothing more can come that is older.
        assert_eq!(drain_now(&mut a, &[0, 1], &[]), ["p0 t100", "p0 t200"]);
        assert_eq!(a.gave_up(), 0);
    }

    #[test]
    fn a_silent_partition_is_waited_for_at_most_max_wait_then_taken_as_idle() {
        let mut a = Aligner::new(100, WAIT, SLACK);
        a.push(0, 100, "p0 t100");
        a.push(0, 200, "p0 t200");
        let start = Instant::now();
        assert_eq!(a.pop(&[0, 1], |p| *p == 1, start), None);
        assert_eq!(a.pop(&[0, 1], |p| *p == 1, start + WAIT / 2), None);
        assert_eq!(a.pop(&[0, 1], |p| *p == 1, start + WAIT), Some("p0 t100"));
        assert_eq!(a.gave_up(), 1);
        // Idle now: it holds nothing back.
        assert_eq!(a.pop(&[0, 1], |p| *p == 1, start + WAIT), Some("p0 t200"));
        // Until it sends again.
        a.push(0, 300, "p0 t300");
        a.push(1, 250, "p1 t250");
        let later = start + 2 * WAIT;
        assert_eq!(a.pop(&[0, 1], |p| *p == 1, later), Some("p1 t250"));
        assert_eq!(a.pop(&[0, 1], |p| *p == 1, later), None);
        assert_eq!(a.gave_up(), 1);
    }

    #[test]
    fn a_caught_up_partition_holds_back_records_beyond_slack_past_its_last_time() {
        let mut a = Aligner::new(100, WAIT, SLACK);
        a.push(1, 100, "p1 t100");
        a.push(0, 500, "p0 t500");
        a.push(0, 1_200, "p0 t1200");
        // Partition 1 is at its high watermark, but a producer writing in event-time order
        // may not have reached it yet: nothing more than SLACK past t100 goes out.
        assert_eq!(drain_now(&mut a, &[0, 1], &[]), ["p1 t100", "p0 t500"]);
        a.push(1, 1_150, "p1 t1150");
        assert_eq!(drain_now(&mut a, &[0, 1], &[]), ["p1 t1150", "p0 t1200"]);
    }

    #[test]
    fn a_full_aligner_goes_on_without_the_silent_partition() {
        let mut a = Aligner::new(3, WAIT, SLACK);
        a.push(0, 1, "a");
        a.push(0, 2, "b");
        assert!(drain_now(&mut a, &[0, 1], &[1]).is_empty());
        a.push(0, 3, "c");
        // Three held, at capacity: the merge goes on without partition 1.
        assert_eq!(drain_now(&mut a, &[0, 1], &[1]), ["a", "b", "c"]);
        assert_eq!(a.gave_up(), 1);
    }

    #[test]
    fn undecodable_records_go_out_when_they_head_their_partition() {
        let mut a = Aligner::new(100, WAIT, SLACK);
        a.push(0, 500, "p0 t500");
        a.push(0, i64::MIN, "p0 malformed");
        a.push(1, 100, "p1 t100");
        assert_eq!(
            drain_now(&mut a, &[0, 1], &[]),
            ["p1 t100", "p0 t500", "p0 malformed"]
        );
    }

    #[test]
    fn drain_empties_in_event_time_order() {
        let mut a = Aligner::new(100, WAIT, SLACK);
        a.push(2, 3, "c");
        a.push(1, 1, "a");
        a.push(2, 4, "d");
        a.push(1, 2, "b");
        assert_eq!(a.drain(), ["a", "b", "c", "d"]);
        assert!(a.is_empty());
    }
}
