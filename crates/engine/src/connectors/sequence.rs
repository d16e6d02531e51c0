//! A deterministic per-key sequence source, the input of the chaos checker job: record `i` of the
//! global sequence `0..events` is key `i % keys` with sequence number `i / keys`, so the expected
//! output is known from `keys` and `events` alone.
//!
//! Keys are spread over `splits` splits (split `s` owns keys `s, s + splits, ...`): all records of a
//! key come from one split, in sequence order, so every key's records reach the keyed stage in order.
//! A split's position is one number kept in the snapshot (the same `SplitPosition` entries as the
//! other generators); a restore at any parallelism redistributes splits and replays exactly.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::connectors::generator::SplitPosition;
use crate::operator::{OperatorContext, OperatorError, Output};
use crate::source::{SourceFunction, SourceStatus};
use crate::state::{decode_entry, encode_entry};

/// One record: the `seq`-th record of `key` (sequence numbers start at 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SequenceRecord {
    /// Key, in `0..keys`.
    pub key: u64,
    /// Sequence number within the key.
    pub seq: u64,
}

/// Where record `n` of split `split` sits: its key, sequence number and global index.
#[inline]
fn locate(keys: u64, splits: u64, split: u64, n: u64) -> SequenceRecord {
    // Keys of this split: split, split + splits, ... below `keys`.
    let per_round = (keys - 1 - split) / splits + 1;
    SequenceRecord {
        key: split + splits * (n % per_round),
        seq: n / per_round,
    }
}

/// The sequence source.
pub struct SequenceSource {
    keys: u64,
    total: Option<u64>,
    splits: u32,
    rate: Option<u64>,
    positions: Vec<SplitPosition>,
    emitted: u64,
    started: Option<Instant>,
    parallelism: u32,
}

impl SequenceSource {
    /// `total` records (`None`: unbounded) over `keys` keys (at least 1) in `splits` splits, at
    /// `rate` records/s over all subtasks (`None`: as fast as possible).
    pub fn new(keys: u64, total: Option<u64>, splits: u32, rate: Option<u64>) -> Self {
        Self {
            keys: keys.max(1),
            total,
            splits: splits.max(1),
            rate,
            positions: Vec::new(),
            emitted: 0,
            started: None,
            parallelism: 1,
        }
    }

    /// True when split `p` still has records.
    fn live(&self, p: &SplitPosition) -> bool {
        let split = u64::from(p.split);
        if split >= self.keys {
            return false; // more splits than keys: this one owns none
        }
        let r = locate(self.keys, u64::from(self.splits), split, p.next);
        self.total
            .is_none_or(|t| r.seq.saturating_mul(self.keys).saturating_add(r.key) < t)
    }
}

impl SourceFunction<SequenceRecord> for SequenceSource {
    fn restore(
        &mut self,
        ctx: &OperatorContext,
        entries: Vec<Vec<u8>>,
    ) -> Result<(), OperatorError> {
        for entry in entries {
            let position: SplitPosition =
                decode_entry(&entry).map_err(|e| OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: e.to_string(),
                })?;
            if position.splits != self.splits {
                return Err(OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: format!(
                        "the snapshot was taken with {} sequence splits, the job now has {}; keep the `splits` parameter unchanged",
                        position.splits, self.splits
                    ),
                });
            }
            self.positions.push(position);
        }
        self.positions.sort_by_key(|p| p.split);
        Ok(())
    }

    fn open(&mut self, ctx: &OperatorContext, restored: bool) -> Result<(), OperatorError> {
        self.parallelism = ctx.parallelism.max(1);
        if !restored {
            self.positions = (0..self.splits)
                .filter(|k| k % self.parallelism == ctx.subtask)
                .map(|split| SplitPosition {
                    split,
                    splits: self.splits,
                    next: 0,
                })
                .collect();
        }
        self.started = Some(Instant::now());
        Ok(())
    }

    fn poll(
        &mut self,
        out: &mut Output<SequenceRecord>,
        max_records: usize,
    ) -> Result<SourceStatus, OperatorError> {
        let mut budget = max_records as u64;
        if let (Some(rate), Some(started)) = (self.rate, self.started) {
            let per_subtask = (rate / u64::from(self.parallelism)).max(1);
            let allowed = (started.elapsed().as_secs_f64() * per_subtask as f64) as u64;
            if allowed <= self.emitted {
                let wait =
                    Duration::from_secs_f64(1.0 / per_subtask as f64).max(Duration::from_millis(1));
                return Ok(SourceStatus::Idle(wait.min(Duration::from_millis(50))));
            }
            budget = budget.min(allowed - self.emitted);
        }
        let (keys, splits) = (self.keys, u64::from(self.splits));
        let mut emitted = 0u64;
        // Each live split gets an equal share of the batch (at least one record): long runs of one
        // split, no per-record round-robin.
        let live = self.positions.iter().filter(|p| self.live(p)).count() as u64;
        if live == 0 {
            return Ok(SourceStatus::Finished);
        }
        let share = (budget / live).max(1);
        for i in 0..self.positions.len() {
            let p = self.positions[i];
            let split = u64::from(p.split);
            if split >= keys {
                continue;
            }
            let mut next = p.next;
            let end = next + share.min(budget - emitted);
            // Walk the split incrementally (no division per record).
            let per_round = (keys - 1 - split) / splits + 1;
            let (mut seq, mut j) = (next / per_round, next % per_round);
            let limit = self.total.unwrap_or(u64::MAX);
            while next < end {
                let key = split + splits * j;
                if seq.saturating_mul(keys).saturating_add(key) >= limit {
                    break;
                }
                out.collect(SequenceRecord { key, seq });
                next += 1;
                j += 1;
                if j == per_round {
                    j = 0;
                    seq += 1;
                }
            }
            emitted += next - p.next;
            self.positions[i].next = next;
            if emitted >= budget {
                break;
            }
        }
        self.emitted += emitted;
        if self.positions.iter().any(|p| self.live(p)) {
            Ok(SourceStatus::Ready)
        } else {
            Ok(SourceStatus::Finished)
        }
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<Vec<u8>>, OperatorError> {
        self.positions
            .iter()
            .map(|p| {
                encode_entry(p).map_err(|e| OperatorError::StateEncode {
                    operator: "sequence".into(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(subtask: u32, parallelism: u32) -> OperatorContext {
        OperatorContext::new("t", "sequence", subtask, parallelism, 16)
    }

    fn drain(source: &mut SequenceSource, batch: usize) -> Vec<SequenceRecord> {
        let mut out = Output::default();
        let mut all = Vec::new();
        loop {
            let status = source.poll(&mut out, batch).unwrap();
            all.extend(out.take_records());
            if status == SourceStatus::Finished {
                return all;
            }
        }
    }

    #[test]
    fn every_record_once_in_order_per_key_for_any_split_count() {
        for (keys, events, splits, parallelism) in [
            (7u64, 100u64, 3u32, 2u32),
            (10, 95, 16, 3),
            (1, 10, 4, 1),
            (64, 1000, 8, 3),
        ] {
            let mut all = Vec::new();
            for s in 0..parallelism {
                let mut source = SequenceSource::new(keys, Some(events), splits, None);
                source.open(&ctx(s, parallelism), false).unwrap();
                let records = drain(&mut source, 5);
                // Per key, this subtask's records are consecutive sequence numbers.
                let mut next = vec![None::<u64>; keys as usize];
                for r in &records {
                    let n = &mut next[r.key as usize];
                    assert_eq!(n.unwrap_or(0), r.seq, "key {} out of order", r.key);
                    *n = Some(r.seq + 1);
                }
                all.extend(records);
            }
            all.sort_by_key(|r| r.seq * keys + r.key);
            let expected: Vec<SequenceRecord> = (0..events)
                .map(|i| SequenceRecord {
                    key: i % keys,
                    seq: i / keys,
                })
                .collect();
            assert_eq!(all, expected, "keys {keys} events {events} splits {splits}");
        }
    }

    #[test]
    fn restore_resumes_exactly_where_the_snapshot_was_taken() {
        let mut source = SequenceSource::new(5, Some(200), 4, None);
        source.open(&ctx(0, 1), false).unwrap();
        let mut out = Output::default();
        source.poll(&mut out, 37).unwrap();
        let before = out.take_records();
        let entries = source.snapshot(1).unwrap();
        // Restore at parallelism 2: each subtask takes some of the split positions.
        let mut rest = Vec::new();
        for (s, share) in [(0u32, &entries[..2]), (1, &entries[2..])] {
            let mut restored = SequenceSource::new(5, Some(200), 4, None);
            restored.restore(&ctx(s, 2), share.to_vec()).unwrap();
            restored.open(&ctx(s, 2), true).unwrap();
            rest.extend(drain(&mut restored, 16));
        }
        let mut all: Vec<u64> = before
            .iter()
            .chain(&rest)
            .map(|r| r.seq * 5 + r.key)
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        let mut wrong = SequenceSource::new(5, Some(200), 3, None);
        assert!(wrong.restore(&ctx(0, 1), entries).is_err());
    }
}
