//! Event-time windows (tumbling and sliding) with an aggregate function (Flink
//! `window(TumblingEventTimeWindows.of(...)).aggregate(...)`), built on the keyed process machinery:
//! one map state (window start -> accumulator) per key and one timer per window end.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::operator::OperatorError;
use crate::operators::keyed_process::{KeyedContext, KeyedProcessFunction};
use crate::state::{MapState, StateRegistry};
use crate::types::{Data, Key, Timestamp};

/// Incremental aggregation of a window's records (Flink `AggregateFunction`).
pub trait AggregateFunction<I, O>: Send + Sync + 'static {
    /// Accumulator type kept in state.
    type Acc: Data;
    /// A fresh accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Fold one record in.
    fn add(&self, acc: &mut Self::Acc, record: &I);
    /// The window's result.
    fn result(&self, acc: &Self::Acc) -> O;
}

/// Counts records.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<I> AggregateFunction<I, u64> for Count {
    type Acc = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _record: &I) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Assigns records to windows by event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed-size, non-overlapping windows.
    Tumbling { size_ms: i64 },
    /// Fixed-size windows starting every `slide_ms` (a record belongs to `size/slide` windows).
    Sliding { size_ms: i64, slide_ms: i64 },
}

impl WindowAssigner {
    /// Tumbling windows of `size_ms`.
    pub fn tumbling(size_ms: i64) -> Self {
        Self::Tumbling {
            size_ms: size_ms.max(1),
        }
    }
    /// Sliding windows of `size_ms` every `slide_ms`.
    pub fn sliding(size_ms: i64, slide_ms: i64) -> Self {
        Self::Sliding {
            size_ms: size_ms.max(1),
            slide_ms: slide_ms.max(1),
        }
    }
    /// Window size.
    pub fn size(&self) -> i64 {
        match *self {
            Self::Tumbling { size_ms } | Self::Sliding { size_ms, .. } => size_ms,
        }
    }
    /// Start of every window containing `ts`, oldest first.
    pub fn window_starts(&self, ts: Timestamp, out: &mut Vec<Timestamp>) {
        out.clear();
        match *self {
            Self::Tumbling { size_ms } => out.push(ts - ts.rem_euclid(size_ms)),
            Self::Sliding { size_ms, slide_ms } => {
                let last = ts - ts.rem_euclid(slide_ms);
                let mut start = last;
                while start > ts - size_ms {
                    out.push(start);
                    start -= slide_ms;
                }
                out.reverse();
            }
        }
    }
}

/// One window's result.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowResult<K, O> {
    /// Key.
    pub key: K,
    /// Window start (inclusive), event time ms.
    pub start: Timestamp,
    /// Window end (exclusive).
    pub end: Timestamp,
    /// Aggregate.
    pub value: O,
}

/// The keyed function behind `KeyedStream::window(...).aggregate(...)`.
pub struct WindowAggregate<K, I, O, A: AggregateFunction<I, O>, TF> {
    assigner: WindowAssigner,
    aggregate: A,
    timestamp_of: TF,
    windows: Option<MapState<Timestamp, A::Acc>>,
    starts: Vec<Timestamp>,
    /// Window ends (max timestamps) of windows a record opened: their timers, registered after
    /// the record is folded into every window.
    opened: Vec<Timestamp>,
    late_records: u64,
    _k: PhantomData<fn(K, I) -> O>,
}

impl<K, I, O, A: AggregateFunction<I, O>, TF> WindowAggregate<K, I, O, A, TF> {
    /// Windows by `assigner`, aggregated by `aggregate`, event time from `timestamp_of`.
    pub fn new(assigner: WindowAssigner, aggregate: A, timestamp_of: TF) -> Self {
        Self {
            assigner,
            aggregate,
            timestamp_of,
            windows: None,
            starts: Vec::new(),
            opened: Vec::new(),
            late_records: 0,
            _k: PhantomData,
        }
    }
}

impl<K, I, O, A, TF> KeyedProcessFunction<K, I, WindowResult<K, O>>
    for WindowAggregate<K, I, O, A, TF>
where
    K: Key,
    I: Send + 'static,
    O: Send + 'static,
    A: AggregateFunction<I, O>,
    TF: Fn(&I) -> Timestamp + Send + 'static,
{
    fn open(&mut self, states: &mut StateRegistry<'_, K>) {
        self.windows = Some(states.map::<Timestamp, A::Acc>("windows"));
    }

    fn process_element(
        &mut self,
        record: I,
        ctx: &mut KeyedContext<'_, K, WindowResult<K, O>>,
    ) -> Result<(), OperatorError> {
        let windows = self.windows.expect("opened");
        let ts = (self.timestamp_of)(&record);
        self.assigner.window_starts(ts, &mut self.starts);
        let size = self.assigner.size();
        let watermark = ctx.current_watermark();
        // Windows whose end the watermark passed are late; `starts` is oldest first.
        let late = self
            .starts
            .iter()
            .take_while(|start| *start + size - 1 <= watermark)
            .count();
        self.late_records += late as u64;
        if late == self.starts.len() {
            return Ok(());
        }
        // One look-up of the key's windows for all the windows the record falls in.
        let map = ctx.map_mut(windows);
        for &start in &self.starts[late..] {
            let acc = map.entry(start).or_insert_with(|| {
                self.opened.push(start + size - 1);
                self.aggregate.create_accumulator()
            });
            self.aggregate.add(acc, &record);
        }
        for max_ts in self.opened.drain(..) {
            ctx.register_event_time_timer(max_ts);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        ctx: &mut KeyedContext<'_, K, WindowResult<K, O>>,
    ) -> Result<(), OperatorError> {
        let windows = self.windows.expect("opened");
        let size = self.assigner.size();
        let start = timestamp + 1 - size;
        if let Some(acc) = ctx.map_mut(windows).remove(&start) {
            let value = self.aggregate.result(&acc);
            let key = ctx.key().clone();
            ctx.collect(WindowResult {
                key,
                start,
                end: start + size,
                value,
            });
        }
        ctx.map_remove_if_empty(windows);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_and_sliding_assignment() {
        let mut starts = Vec::new();
        WindowAssigner::tumbling(10).window_starts(25, &mut starts);
        assert_eq!(starts, vec![20]);
        WindowAssigner::tumbling(10).window_starts(-1, &mut starts);
        assert_eq!(starts, vec![-10]);
        WindowAssigner::sliding(10, 5).window_starts(27, &mut starts);
        assert_eq!(starts, vec![20, 25]);
        WindowAssigner::sliding(30, 10).window_starts(30, &mut starts);
        assert_eq!(starts, vec![10, 20, 30]);
    }
}
