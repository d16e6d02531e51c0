//! The pending event-time timers of a keyed operator: a set of (time, key group, key) that pops
//! in time order.
//!
//! Window operators register one timer per key and window, and many keys share a window end, so
//! timers cluster on few distinct times. The queue keeps a small ordered map from time to a hash
//! set of (key group, key): registering a timer is a hash insert instead of a search down a large
//! ordered tree (Flink's heap timer service likewise pairs a priority queue with a hash set for
//! de-duplication). When a time fires, its members are sorted once by (key group, key), so timers
//! of one time fire in that order and the output does not depend on hashing. Timers registered for
//! a time while it fires go after the ones already sorted.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;

use crate::types::{Key, Timestamp};

/// The timers of one time.
struct Bucket<K> {
    /// Registered and not yet sorted for firing.
    waiting: FxHashSet<(u32, K)>,
    /// Sorted for firing, largest first (popped from the end).
    firing: Vec<(u32, K)>,
}

impl<K: Key> Bucket<K> {
    fn new() -> Self {
        Self {
            waiting: FxHashSet::default(),
            firing: Vec::new(),
        }
    }
    fn firing_position(&self, member: &(u32, K)) -> Result<usize, usize> {
        // `firing` is in descending order: a probe comes first when it is greater.
        self.firing.binary_search_by(|probe| member.cmp(probe))
    }
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.firing.is_empty()
    }
}

/// A set of timers, popped in time order.
pub(crate) struct TimerQueue<K> {
    buckets: BTreeMap<Timestamp, Bucket<K>>,
    len: usize,
}

impl<K> Default for TimerQueue<K> {
    fn default() -> Self {
        Self {
            buckets: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<K: Key> TimerQueue<K> {
    /// Add a timer; false when it was already registered.
    pub fn insert(&mut self, ts: Timestamp, key_group: u32, key: K) -> bool {
        let bucket = self.buckets.entry(ts).or_insert_with(Bucket::new);
        let member = (key_group, key);
        if !bucket.firing.is_empty() && bucket.firing_position(&member).is_ok() {
            return false;
        }
        let added = bucket.waiting.insert(member);
        self.len += usize::from(added);
        added
    }

    /// Remove a timer; false when it was not registered.
    pub fn remove(&mut self, ts: Timestamp, key_group: u32, key: &K) -> bool {
        let Some(bucket) = self.buckets.get_mut(&ts) else {
            return false;
        };
        let member = (key_group, key.clone());
        let removed = bucket.waiting.remove(&member)
            || match bucket.firing_position(&member) {
                Ok(i) => {
                    bucket.firing.remove(i);
                    true
                }
                Err(_) => false,
            };
        if bucket.is_empty() {
            self.buckets.remove(&ts);
        }
        self.len -= usize::from(removed);
        removed
    }

    /// The earliest time with a timer.
    pub fn first_time(&self) -> Option<Timestamp> {
        self.buckets.keys().next().copied()
    }

    /// Remove and return a timer of the earliest time (the least key group and key among those
    /// sorted when the time started firing).
    pub fn pop_first(&mut self) -> Option<(Timestamp, u32, K)> {
        let mut entry = self.buckets.first_entry()?;
        let ts = *entry.key();
        let bucket = entry.get_mut();
        if bucket.firing.is_empty() {
            bucket.firing = bucket.waiting.drain().collect();
            bucket.firing.sort_unstable_by(|a, b| b.cmp(a));
        }
        let (key_group, key) = bucket.firing.pop()?;
        if bucket.is_empty() {
            entry.remove();
        }
        self.len -= 1;
        Some((ts, key_group, key))
    }

    /// Number of timers.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no timer is registered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every timer, in no particular order within a time.
    pub fn iter(&self) -> impl Iterator<Item = (Timestamp, u32, &K)> + '_ {
        self.buckets.iter().flat_map(|(ts, bucket)| {
            bucket
                .waiting
                .iter()
                .chain(bucket.firing.iter())
                .map(move |(kg, key)| (*ts, *kg, key))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A small deterministic generator (no dependency on a random crate in this module).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn pops_in_time_then_key_order_and_deduplicates() {
        let mut q = TimerQueue::default();
        assert!(q.insert(20, 1, 5u64));
        assert!(q.insert(10, 3, 1));
        assert!(q.insert(10, 1, 9));
        assert!(q.insert(10, 1, 2));
        assert!(!q.insert(10, 1, 2), "registered twice");
        assert_eq!(q.len(), 4);
        assert_eq!(q.first_time(), Some(10));
        assert_eq!(q.pop_first(), Some((10, 1, 2)));
        // Registered while time 10 fires: after the ones already sorted; a duplicate of a sorted
        // one is refused.
        assert!(q.insert(10, 0, 0));
        assert!(!q.insert(10, 3, 1));
        assert!(q.remove(10, 1, &9), "removing a sorted timer");
        assert_eq!(q.pop_first(), Some((10, 3, 1)));
        assert_eq!(q.pop_first(), Some((10, 0, 0)));
        assert_eq!(q.first_time(), Some(20));
        assert!(!q.remove(10, 3, &1));
        assert_eq!(q.pop_first(), Some((20, 1, 5)));
        assert!(q.is_empty() && q.pop_first().is_none() && q.first_time().is_none());
    }

    /// Against a `BTreeSet` model: the same members after any mix of inserts, removes and pops,
    /// pops never go back in time, and each pop returns a member of the earliest time.
    #[test]
    fn behaves_as_an_ordered_set_of_timers() {
        let mut rng = Lcg(7);
        let mut q = TimerQueue::default();
        let mut model: BTreeSet<(Timestamp, u32, u64)> = BTreeSet::new();
        let mut last_popped = Timestamp::MIN;
        for step in 0..20_000 {
            let ts = last_popped.max(0) + rng.next(6) as Timestamp;
            let (kg, key) = (rng.next(4) as u32, rng.next(50));
            match rng.next(10) {
                0..=4 => assert_eq!(q.insert(ts, kg, key), model.insert((ts, kg, key)), "{step}"),
                5..=6 => assert_eq!(
                    q.remove(ts, kg, &key),
                    model.remove(&(ts, kg, key)),
                    "{step}"
                ),
                _ => {
                    let first = model.first().map(|t| t.0);
                    assert_eq!(q.first_time(), first, "{step}");
                    if let Some((t, g, k)) = q.pop_first() {
                        assert_eq!(Some(t), first, "{step}: pops the earliest time");
                        assert!(
                            model.remove(&(t, g, k)),
                            "{step}: popped a registered timer"
                        );
                        assert!(t >= last_popped, "{step}: never back in time");
                        last_popped = t;
                    }
                }
            }
            assert_eq!(q.len(), model.len(), "{step}");
        }
        let mut members: Vec<_> = q.iter().map(|(t, g, k)| (t, g, *k)).collect();
        members.sort();
        assert_eq!(members, model.into_iter().collect::<Vec<_>>());
    }
}
