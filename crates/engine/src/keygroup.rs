//! Key groups: the unit in which keyed state is partitioned and redistributed on rescale (as in Flink).
//! A key hashes (deterministically, the same in every process and run) to one of `max_parallelism` key
//! groups; subtask `i` of `p` owns a contiguous range of them.

use std::hash::{Hash, Hasher};
use std::ops::Range;

/// The key group of a key, in `0..max_parallelism`.
pub fn key_group_of<K: Hash + ?Sized>(key: &K, max_parallelism: u32) -> u32 {
    let mut hasher = rustc_hash::FxHasher::default();
    key.hash(&mut hasher);
    (fmix64(hasher.finish()) % u64::from(max_parallelism.max(1))) as u32
}

/// The subtask (of `parallelism`) that owns `key_group`.
pub fn subtask_for_key_group(key_group: u32, max_parallelism: u32, parallelism: u32) -> u32 {
    ((u64::from(key_group) * u64::from(parallelism)) / u64::from(max_parallelism.max(1))) as u32
}

/// The key groups owned by `subtask` of `parallelism`: the inverse of [`subtask_for_key_group`].
pub fn key_group_range(subtask: u32, max_parallelism: u32, parallelism: u32) -> Range<u32> {
    let m = u64::from(max_parallelism);
    let p = u64::from(parallelism.max(1));
    let s = u64::from(subtask);
    let start = (s * m).div_ceil(p);
    let end = ((s + 1) * m).div_ceil(p);
    (start as u32)..(end as u32)
}

/// The key groups owned by a block of consecutive `subtasks` of `parallelism` (a worker's share).
pub fn key_groups_of_subtasks(
    subtasks: Range<u32>,
    max_parallelism: u32,
    parallelism: u32,
) -> Range<u32> {
    // Subtask `s` starts where `s - 1` ends; `parallelism` itself starts at `max_parallelism`.
    let start = key_group_range(subtasks.start, max_parallelism, parallelism).start;
    let end = key_group_range(subtasks.end, max_parallelism, parallelism).start;
    start..end.max(start)
}

/// True when two key group ranges share a key group.
pub fn ranges_overlap(a: &Range<u32>, b: &Range<u32>) -> bool {
    a.start < b.end && b.start < a.end
}

/// MurmurHash3's 64-bit finalizer: spreads FxHash output over all bits.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_all_key_groups_and_match_assignment() {
        for max in [1u32, 7, 128, 1000] {
            for p in 1..=max.min(13) {
                let mut next = 0;
                for s in 0..p {
                    let range = key_group_range(s, max, p);
                    assert_eq!(range.start, next, "max {max} p {p} s {s}");
                    for kg in range.clone() {
                        assert_eq!(
                            subtask_for_key_group(kg, max, p),
                            s,
                            "max {max} p {p} kg {kg}"
                        );
                    }
                    next = range.end;
                }
                assert_eq!(next, max);
            }
        }
    }

    #[test]
    fn key_groups_are_stable_and_spread() {
        // Stable across runs and processes: fixed expectations.
        assert_eq!(key_group_of(&42u64, 128), key_group_of(&42u64, 128));
        let mut counts = [0u32; 16];
        for k in 0u64..16_000 {
            counts[key_group_of(&k, 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert!(key_group_of("auction-7", 128) < 128);
    }

    #[test]
    fn a_block_of_subtasks_owns_the_union_of_their_ranges() {
        for (max, p) in [(128u32, 4u32), (7, 3), (1000, 13)] {
            for start in 0..=p {
                for end in start..=p {
                    let union = (start..end)
                        .map(|s| key_group_range(s, max, p))
                        .reduce(|a, b| a.start..b.end)
                        .unwrap_or(
                            key_group_range(start, max, p).start
                                ..key_group_range(start, max, p).start,
                        );
                    assert_eq!(
                        key_groups_of_subtasks(start..end, max, p),
                        union,
                        "max {max} p {p} {start}..{end}"
                    );
                }
            }
        }
    }

    #[test]
    fn overlap() {
        assert!(ranges_overlap(&(0..4), &(3..8)));
        assert!(!ranges_overlap(&(0..4), &(4..8)));
    }
}
