//! Local window pre-aggregation, the first phase of a two-phase (local-global) window aggregation,
//! as Flink's `table.optimizer.agg-phase-strategy: TWO_PHASE`: chained before any exchange, it folds
//! records per (window, key) inside one subtask and emits each window's partial accumulators when the
//! watermark passes the window end, ahead of that watermark. A keyed stage downstream combines the
//! partials of all subtasks. The exchange then carries one partial per key, window and subtask
//! instead of every record.
//!
//! The partials are operator list state (one entry per open window). After a restore, possibly at
//! another parallelism, restored partials are emitted as they are, next to the new ones: the global
//! stage must combine partials (it does anyway). It must not be used where the downstream stage
//! cannot merge accumulators.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use rustc_hash::FxHashMap;

use crate::operator::{
    OperatorContext, OperatorError, OperatorSnapshot, Output, RestoredState, StreamOperator,
};
use crate::operators::window::{AggregateFunction, WindowAssigner, WindowResult};
use crate::state::{decode_entry, encode_entry};
use crate::types::{Barrier, Key, Timestamp, MIN_WATERMARK};

/// Partials of one window: accumulator per key.
type WindowPartials<K, Acc> = FxHashMap<K, Acc>;
/// Partials restored from a snapshot, by window start.
type RestoredPartials<K, Acc> = Vec<(Timestamp, Vec<(K, Acc)>)>;

/// Per-subtask pre-aggregation; emits `WindowResult { key, start, end, value: accumulator }`.
pub struct LocalWindowAggregate<K, I, O, A: AggregateFunction<I, O>, KF, TF> {
    assigner: WindowAssigner,
    aggregate: A,
    key_of: KF,
    timestamp_of: TF,
    windows: BTreeMap<Timestamp, WindowPartials<K, A::Acc>>,
    restored: RestoredPartials<K, A::Acc>,
    starts: Vec<Timestamp>,
    watermark: Timestamp,
    late_records: u64,
    operator_id: String,
    _io: PhantomData<fn(I) -> O>,
}

impl<K, I, O, A, KF, TF> LocalWindowAggregate<K, I, O, A, KF, TF>
where
    K: Key,
    A: AggregateFunction<I, O>,
    KF: Fn(&I) -> K + Send,
    TF: Fn(&I) -> Timestamp + Send,
{
    /// Windows by `assigner`, keys by `key_of`, event time by `timestamp_of`, folded by `aggregate`.
    pub fn new(assigner: WindowAssigner, aggregate: A, key_of: KF, timestamp_of: TF) -> Self {
        Self {
            assigner,
            aggregate,
            key_of,
            timestamp_of,
            windows: BTreeMap::new(),
            restored: Vec::new(),
            starts: Vec::new(),
            watermark: MIN_WATERMARK,
            late_records: 0,
            operator_id: String::new(),
            _io: PhantomData,
        }
    }

    /// Records dropped because their window had already been emitted.
    pub fn late_records(&self) -> u64 {
        self.late_records
    }

    fn fold(&mut self, record: &I) {
        let ts = (self.timestamp_of)(record);
        let size = self.assigner.size();
        self.assigner.window_starts(ts, &mut self.starts);
        let key = (self.key_of)(record);
        for &start in &self.starts {
            if start + size - 1 <= self.watermark {
                self.late_records += 1;
                continue;
            }
            let window = self.windows.entry(start).or_default();
            match window.get_mut(&key) {
                Some(acc) => self.aggregate.add(acc, record),
                None => {
                    let mut acc = self.aggregate.create_accumulator();
                    self.aggregate.add(&mut acc, record);
                    window.insert(key.clone(), acc);
                }
            }
        }
    }
}

impl<K, I, O, A, KF, TF> StreamOperator<I, WindowResult<K, A::Acc>>
    for LocalWindowAggregate<K, I, O, A, KF, TF>
where
    K: Key,
    I: Send,
    O: Send,
    A: AggregateFunction<I, O>,
    KF: Fn(&I) -> K + Send,
    TF: Fn(&I) -> Timestamp + Send,
{
    fn restore(
        &mut self,
        ctx: &OperatorContext,
        state: RestoredState,
    ) -> Result<(), OperatorError> {
        for entry in state.list {
            let partials: (Timestamp, Vec<(K, A::Acc)>) =
                decode_entry(&entry).map_err(|e| OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: e.to_string(),
                })?;
            self.restored.push(partials);
        }
        Ok(())
    }

    fn open(&mut self, ctx: &OperatorContext) -> Result<(), OperatorError> {
        self.operator_id = ctx.operator_id.clone();
        Ok(())
    }

    fn process_batch(
        &mut self,
        batch: Vec<I>,
        _out: &mut Output<WindowResult<K, A::Acc>>,
    ) -> Result<(), OperatorError> {
        for record in &batch {
            self.fold(record);
        }
        Ok(())
    }

    fn process_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<WindowResult<K, A::Acc>>,
    ) -> Result<(), OperatorError> {
        if watermark > self.watermark {
            self.watermark = watermark;
            let size = self.assigner.size();
            while let Some(entry) = self.windows.first_entry() {
                let start = *entry.key();
                if start + size - 1 > watermark {
                    break;
                }
                let partials = entry.remove();
                out.extend(partials.into_iter().map(|(key, value)| WindowResult {
                    key,
                    start,
                    end: start + size,
                    value,
                }));
            }
            if !self.restored.is_empty() {
                let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.restored)
                    .into_iter()
                    .partition(|(start, _)| start + size - 1 <= watermark);
                self.restored = keep;
                for (start, partials) in due {
                    out.extend(partials.into_iter().map(|(key, value)| WindowResult {
                        key,
                        start,
                        end: start + size,
                        value,
                    }));
                }
            }
        }
        out.emit_watermark(watermark);
        Ok(())
    }

    fn snapshot(&mut self, _barrier: &Barrier) -> Result<OperatorSnapshot, OperatorError> {
        let encode = |e: crate::state::StateError| OperatorError::StateEncode {
            operator: self.operator_id.clone(),
            reason: e.to_string(),
        };
        let mut list = Vec::with_capacity(self.windows.len() + self.restored.len());
        for (start, partials) in &self.windows {
            let entries: Vec<(&K, &A::Acc)> = partials.iter().collect();
            list.push(encode_entry(&(*start, entries)).map_err(encode)?);
        }
        for entry in &self.restored {
            list.push(encode_entry(entry).map_err(encode)?);
        }
        Ok(OperatorSnapshot {
            list,
            ..OperatorSnapshot::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::window::Count;

    type Rec = (u64, i64);
    type TestOp = LocalWindowAggregate<u64, Rec, u64, Count, fn(&Rec) -> u64, fn(&Rec) -> i64>;

    fn op() -> TestOp {
        LocalWindowAggregate::new(WindowAssigner::tumbling(10), Count, |r| r.0, |r| r.1)
    }

    fn sorted(out: &mut Output<WindowResult<u64, u64>>) -> Vec<(u64, i64, u64)> {
        let mut v: Vec<_> = out
            .take_records()
            .into_iter()
            .map(|r| (r.key, r.start, r.value))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn partials_are_emitted_ahead_of_the_watermark_that_closes_their_window() {
        let mut a = op();
        let mut out = Output::default();
        a.process_batch(vec![(1, 1), (1, 5), (2, 9), (1, 12)], &mut out)
            .unwrap();
        assert!(out.records.is_empty(), "nothing before the watermark");
        a.process_watermark(8, &mut out).unwrap();
        assert!(out.records.is_empty());
        a.process_watermark(9, &mut out).unwrap();
        assert_eq!(sorted(&mut out), vec![(1, 0, 2), (2, 0, 1)]);
        assert_eq!(out.watermark.take(), Some(9));
        // A record for an emitted window is late: dropped and counted.
        a.process_batch(vec![(3, 4)], &mut out).unwrap();
        assert_eq!(a.late_records(), 1);
        a.process_watermark(i64::MAX, &mut out).unwrap();
        assert_eq!(sorted(&mut out), vec![(1, 10, 1)]);
    }

    #[test]
    fn snapshot_and_restore_keep_every_partial() {
        let mut a = op();
        let mut out = Output::default();
        a.process_batch(vec![(1, 1), (1, 15), (2, 16)], &mut out)
            .unwrap();
        let barrier = Barrier {
            id: 1,
            kind: crate::types::SnapshotType::Checkpoint,
            is_final: false,
        };
        let snap = a.snapshot(&barrier).unwrap();
        assert_eq!(snap.list.len(), 2);
        let mut b = op();
        let ctx = OperatorContext::new("t", "local", 0, 1, 4).in_attempt(2, Some(1));
        b.restore(
            &ctx,
            RestoredState {
                list: snap.list,
                ..RestoredState::default()
            },
        )
        .unwrap();
        b.open(&ctx).unwrap();
        b.process_batch(vec![(1, 17)], &mut out).unwrap();
        b.process_watermark(i64::MAX, &mut out).unwrap();
        // The restored partial of key 1 in window 10 and the new one are emitted separately.
        assert_eq!(
            sorted(&mut out),
            vec![(1, 0, 1), (1, 10, 1), (1, 10, 1), (2, 10, 1)]
        );
    }
}
