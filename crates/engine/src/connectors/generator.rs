//! Split-based deterministic generation shared by the generator sources: the global sequence of
//! events `0..total` is cut into `splits` interleaved splits (split k holds indices k, k+S, k+2S, ...).
//! Each subtask reads some splits; a split's position is one number, kept in the snapshot, so a
//! restore (at any parallelism: splits are redistributed) replays exactly the same events.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::operator::{OperatorContext, OperatorError, Output};
use crate::source::SourceStatus;
use crate::state::{decode_entry, encode_entry};
use crate::types::Timestamp;

/// Position of one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitPosition {
    /// Split number.
    pub split: u32,
    /// Total number of splits of the source (must not change across restores).
    pub splits: u32,
    /// Next position within the split (global index = split + splits * next).
    pub next: u64,
}

/// Shared reader of generator splits: which indices to emit next, rate limiting, watermarks.
#[derive(Debug)]
pub struct SplitReader {
    /// Events in total (`None`: unbounded).
    pub total: Option<u64>,
    /// Number of splits.
    pub splits: u32,
    /// Events per second over all subtasks (`None`: as fast as possible).
    pub rate: Option<u64>,
    positions: Vec<SplitPosition>,
    emitted: u64,
    started: Option<Instant>,
    parallelism: u32,
    /// Reused buffer of the indices one poll emits.
    indices: Vec<u64>,
}

impl SplitReader {
    /// A reader; splits are assigned in `open` or `restore`.
    pub fn new(total: Option<u64>, splits: u32, rate: Option<u64>) -> Self {
        Self {
            total,
            splits: splits.max(1),
            rate,
            positions: Vec::new(),
            emitted: 0,
            started: None,
            parallelism: 1,
            indices: Vec::new(),
        }
    }

    /// Restore this subtask's share of split positions.
    pub fn restore(
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
                        "the snapshot was taken with {} generator splits, the job now has {}; keep the `splits` parameter unchanged",
                        position.splits, self.splits
                    ),
                });
            }
            self.positions.push(position);
        }
        self.positions.sort_by_key(|p| p.split);
        Ok(())
    }

    /// Assign initial splits (fresh start) and start the rate clock.
    pub fn open(&mut self, ctx: &OperatorContext, restored: bool) {
        self.parallelism = ctx.parallelism.max(1);
        if !restored {
            self.positions = (0..self.splits)
                .filter(|k| k % ctx.parallelism.max(1) == ctx.subtask)
                .map(|split| SplitPosition {
                    split,
                    splits: self.splits,
                    next: 0,
                })
                .collect();
        }
        self.started = Some(Instant::now());
    }

    /// Positions as list-state entries.
    pub fn snapshot(&self) -> Result<Vec<Vec<u8>>, OperatorError> {
        self.positions
            .iter()
            .map(|p| {
                encode_entry(p).map_err(|e| OperatorError::StateEncode {
                    operator: "generator".into(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    fn index(&self, p: &SplitPosition) -> u64 {
        u64::from(p.split) + u64::from(self.splits) * p.next
    }

    fn live(&self, p: &SplitPosition) -> bool {
        self.total.is_none_or(|t| self.index(p) < t)
    }

    /// Emit up to `max` events: round-robin over this subtask's splits, in global index order within
    /// a round. `make(index)` builds the event; `time_of(index)` gives its event time. After the batch,
    /// the watermark is the smallest next event time over live splits, minus one.
    pub fn poll<T>(
        &mut self,
        out: &mut Output<T>,
        max: usize,
        mut make: impl FnMut(u64) -> T,
        time_of: impl Fn(u64) -> Timestamp,
    ) -> SourceStatus {
        let Some(indices) = self.next_indices(max) else {
            return self.idle();
        };
        // Built straight into the output buffer (a push per event went through a stack copy the
        // CPU could not forward).
        out.extend(indices.iter().map(|&i| make(i)));
        self.finish_poll(indices, out, time_of)
    }

    /// Under a rate limit, how long to wait before the next event is due.
    pub fn idle(&self) -> SourceStatus {
        let per_subtask = (self.rate.unwrap_or(1) / u64::from(self.parallelism)).max(1);
        let wait = Duration::from_secs_f64(1.0 / per_subtask as f64).max(Duration::from_millis(1));
        SourceStatus::Idle(wait.min(Duration::from_millis(50)))
    }

    /// The indices of the next up to `max` events (the reader's reused buffer), positions advanced;
    /// `None` when the rate limit allows none yet (then [`SplitReader::idle`] says how long to
    /// wait). A source that builds its batch itself hands them back to [`SplitReader::finish_poll`].
    pub fn next_indices(&mut self, max: usize) -> Option<Vec<u64>> {
        let mut budget = max;
        if let (Some(rate), Some(started)) = (self.rate, self.started) {
            let per_subtask = (rate / u64::from(self.parallelism)).max(1);
            let allowed = (started.elapsed().as_secs_f64() * per_subtask as f64) as u64;
            if allowed <= self.emitted {
                return None;
            }
            budget = budget.min((allowed - self.emitted) as usize);
        }
        let mut indices = std::mem::take(&mut self.indices);
        indices.clear();
        // Whole rounds in which every split stays live: each position's indices step by `splits`,
        // with no per-index checks (the same order as the loop below, which does the rest).
        let splits = u64::from(self.splits);
        let live_rounds = match self.total {
            None => u64::MAX,
            Some(total) => self
                .positions
                .iter()
                .map(|p| total.saturating_sub(self.index(p)).div_ceil(splits))
                .min()
                .unwrap_or(0),
        };
        let rounds =
            (budget / self.positions.len().max(1)).min(live_rounds.min(usize::MAX as u64) as usize);
        if rounds > 0 {
            indices.reserve(rounds * self.positions.len());
            for round in 0..rounds as u64 {
                indices.extend(
                    self.positions
                        .iter()
                        .map(|p| self.index(p) + splits * round),
                );
            }
            for p in &mut self.positions {
                p.next += rounds as u64;
            }
        }
        'rounds: while indices.len() < budget {
            let mut any = false;
            for i in 0..self.positions.len() {
                if indices.len() >= budget {
                    break 'rounds;
                }
                let p = self.positions[i];
                if !self.live(&p) {
                    continue;
                }
                any = true;
                indices.push(self.index(&p));
                self.positions[i].next += 1;
            }
            if !any {
                break;
            }
        }
        Some(indices)
    }

    /// After a poll emitted the events of `indices`: keep the buffer, count, and emit the watermark
    /// (or report the end of input).
    pub fn finish_poll<T>(
        &mut self,
        indices: Vec<u64>,
        out: &mut Output<T>,
        time_of: impl Fn(u64) -> Timestamp,
    ) -> SourceStatus {
        self.emitted += indices.len() as u64;
        self.indices = indices;
        let next_time = self
            .positions
            .iter()
            .filter(|p| self.live(p))
            .map(|p| time_of(self.index(p)))
            .min();
        match next_time {
            Some(t) => {
                out.emit_watermark(t - 1);
                SourceStatus::Ready
            }
            None => SourceStatus::Finished,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: one index at a time, round-robin over the live positions.
    fn reference(positions: &mut [SplitPosition], total: Option<u64>, budget: usize) -> Vec<u64> {
        let mut out = Vec::new();
        'rounds: while out.len() < budget {
            let mut any = false;
            for p in positions.iter_mut() {
                if out.len() >= budget {
                    break 'rounds;
                }
                let index = u64::from(p.split) + u64::from(p.splits) * p.next;
                if total.is_some_and(|t| index >= t) {
                    continue;
                }
                any = true;
                out.push(index);
                p.next += 1;
            }
            if !any {
                break;
            }
        }
        out
    }

    #[test]
    fn polls_emit_the_reference_order_whatever_the_budgets_and_positions() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for case in 0..200 {
            let splits = 1 + next(20) as u32;
            let total = if case % 5 == 0 {
                None
            } else {
                Some(next(5000))
            };
            let positions: Vec<SplitPosition> = (0..splits)
                .filter(|k| k % 3 != 1 || case % 2 == 0)
                .map(|split| SplitPosition {
                    split,
                    splits,
                    // Unequal positions, as after a restore of a partial round.
                    next: next(4),
                })
                .collect();
            let mut reader = SplitReader::new(total, splits, None);
            reader.positions = positions.clone();
            let mut model = positions;
            for _ in 0..30 {
                let budget = 1 + next(700) as usize;
                let mut out = Output::default();
                reader.poll(&mut out, budget, |i| i, |i| i as Timestamp);
                let expected = reference(&mut model, total, budget);
                assert_eq!(out.records, expected, "case {case}, budget {budget}");
                assert_eq!(reader.positions, model, "case {case}");
            }
        }
    }
}
