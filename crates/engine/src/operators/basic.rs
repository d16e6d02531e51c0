//! Stateless operators: map, filter, flat_map, and timestamp/watermark assignment.

use std::marker::PhantomData;

use crate::operator::{OperatorError, Output, StreamOperator};
use crate::types::Timestamp;

/// Whether a batch of `I` can hold the `O`s made from it (same size and alignment): then the
/// output is built in the input's buffer, with no allocation and no second buffer to fill.
const fn fits_in_place<I, O>() -> bool {
    std::mem::size_of::<I>() == std::mem::size_of::<O>()
        && std::mem::align_of::<I>() == std::mem::align_of::<O>()
        && std::mem::size_of::<I>() > 0
}

/// `map`: one output per input.
pub struct Map<F, I> {
    f: F,
    _in: PhantomData<fn(I)>,
}

impl<F, I> Map<F, I> {
    /// Wrap a function.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _in: PhantomData,
        }
    }
}

impl<I, O, F> StreamOperator<I, O> for Map<F, I>
where
    F: FnMut(I) -> O + Send,
{
    fn process_batch(&mut self, batch: Vec<I>, out: &mut Output<O>) -> Result<(), OperatorError> {
        if fits_in_place::<I, O>() && out.records.is_empty() {
            out.records = batch.into_iter().map(&mut self.f).collect();
        } else {
            out.extend(batch.into_iter().map(&mut self.f));
        }
        Ok(())
    }
}

/// `filter`: keeps the records the predicate accepts (in place, no copy).
pub struct Filter<F> {
    f: F,
}

impl<F> Filter<F> {
    /// Wrap a predicate.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<T, F> StreamOperator<T, T> for Filter<F>
where
    F: FnMut(&T) -> bool + Send,
{
    fn process_batch(
        &mut self,
        mut batch: Vec<T>,
        out: &mut Output<T>,
    ) -> Result<(), OperatorError> {
        batch.retain(|r| (self.f)(r));
        if out.records.is_empty() {
            out.records = batch;
        } else {
            out.extend(batch);
        }
        Ok(())
    }
}

/// `flat_map`: zero or more outputs per input.
pub struct FlatMap<F, I> {
    f: F,
    _in: PhantomData<fn(I)>,
}

impl<F, I> FlatMap<F, I> {
    /// Wrap a function.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _in: PhantomData,
        }
    }
}

impl<I, O, F, It> StreamOperator<I, O> for FlatMap<F, I>
where
    F: FnMut(I) -> It + Send,
    It: IntoIterator<Item = O>,
{
    fn process_batch(&mut self, batch: Vec<I>, out: &mut Output<O>) -> Result<(), OperatorError> {
        if fits_in_place::<I, O>() && out.records.is_empty() {
            // Outputs overwrite the inputs they came from, in the batch's own buffer. The
            // standard library collects `filter_map` in place but not `flat_map` (that one grew
            // a new buffer from nothing, copying as it doubled: 4 % of q0's time). So each
            // record's first output goes in place; from the first record with more than one
            // output on, every further output goes to a second buffer appended after, which
            // keeps the order.
            let f = &mut self.f;
            let mut spilled: Vec<O> = Vec::new();
            let mut records: Vec<O> = batch
                .into_iter()
                .filter_map(|record| {
                    let mut outputs = f(record).into_iter();
                    if !spilled.is_empty() {
                        spilled.extend(outputs);
                        return None;
                    }
                    let first = outputs.next()?;
                    spilled.extend(outputs);
                    Some(first)
                })
                .collect();
            records.append(&mut spilled);
            out.records = records;
        } else {
            for record in batch {
                out.extend((self.f)(record));
            }
        }
        Ok(())
    }
}

/// Assigns watermarks with bounded out-of-orderness (Flink `WatermarkStrategy.forBoundedOutOfOrderness`):
/// after each batch the watermark becomes `max event time seen - bound`. Like Flink's
/// `assignTimestampsAndWatermarks`, it replaces upstream watermarks, except the final `MAX` watermark
/// of a bounded input, which it forwards.
pub struct BoundedOutOfOrderness<F> {
    timestamp_of: F,
    bound_ms: i64,
    max_seen: Timestamp,
    emitted: Timestamp,
}

impl<F> BoundedOutOfOrderness<F> {
    /// `timestamp_of` extracts the event time of a record; `bound_ms` is the allowed lateness.
    pub fn new(timestamp_of: F, bound_ms: i64) -> Self {
        Self {
            timestamp_of,
            bound_ms,
            max_seen: Timestamp::MIN,
            emitted: Timestamp::MIN,
        }
    }
}

impl<T, F> StreamOperator<T, T> for BoundedOutOfOrderness<F>
where
    F: Fn(&T) -> Timestamp + Send,
{
    fn process_batch(&mut self, batch: Vec<T>, out: &mut Output<T>) -> Result<(), OperatorError> {
        for r in &batch {
            self.max_seen = self.max_seen.max((self.timestamp_of)(r));
        }
        out.extend(batch);
        let candidate = self.max_seen.saturating_sub(self.bound_ms);
        if candidate > self.emitted {
            self.emitted = candidate;
            out.emit_watermark(candidate);
        }
        Ok(())
    }
    fn process_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<T>,
    ) -> Result<(), OperatorError> {
        if watermark == Timestamp::MAX {
            out.emit_watermark(watermark);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_filter_flat_map() {
        let mut out = Output::default();
        Map::new(|x: i32| x * 2)
            .process_batch(vec![1, 2, 3], &mut out)
            .unwrap();
        assert_eq!(out.take_records(), vec![2, 4, 6]);
        Filter::new(|x: &i32| x % 2 == 1)
            .process_batch(vec![1, 2, 3], &mut out)
            .unwrap();
        assert_eq!(out.take_records(), vec![1, 3]);
        let mut words = Output::default();
        FlatMap::new(|s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>())
            .process_batch(vec!["a b", "c"], &mut words)
            .unwrap();
        assert_eq!(words.take_records(), vec!["a", "b", "c"]);
    }

    /// Same-size input and output (the in-place path): any mix of records with no, one and
    /// several outputs comes out in the order of `Iterator::flat_map`.
    #[test]
    fn flat_map_in_place_keeps_the_order_of_outputs() {
        let outputs_of = |x: u64| -> Vec<u64> { (0..x % 4).map(|k| x * 10 + k).collect() };
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for case in 0..300 {
            let len = (case % 40) as usize;
            let batch: Vec<u64> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly zero or one output, sometimes more, as in real jobs.
                    seed % if case % 3 == 0 { 4 } else { 2 }
                })
                .collect();
            let expected: Vec<u64> = batch.iter().flat_map(|&x| outputs_of(x)).collect();
            let mut out = Output::default();
            FlatMap::new(outputs_of)
                .process_batch(batch.clone(), &mut out)
                .unwrap();
            assert_eq!(out.take_records(), expected, "batch {batch:?}");
        }
    }

    /// At most one output per record (`Option`, the Nexmark "bids" step): the outputs are
    /// written into the input batch's buffer, no new one is grown.
    #[test]
    fn flat_map_with_at_most_one_output_reuses_the_batch_buffer() {
        let batch: Vec<i64> = (0..1024).collect();
        let buffer = batch.as_ptr() as usize;
        let mut out = Output::default();
        FlatMap::new(|x: i64| (x % 3 != 0).then_some(x as u64))
            .process_batch(batch, &mut out)
            .unwrap();
        assert_eq!(out.records.as_ptr() as usize, buffer);
        assert_eq!(out.records.len(), 682);
        assert_eq!(out.records[..3], [1, 2, 4]);
    }

    #[test]
    fn bounded_out_of_orderness_trails_max_and_forwards_only_max() {
        let mut op = BoundedOutOfOrderness::new(|x: &i64| *x, 10);
        let mut out = Output::default();
        op.process_batch(vec![100, 50, 120], &mut out).unwrap();
        assert_eq!(out.watermark.take(), Some(110));
        op.process_batch(vec![105], &mut out).unwrap();
        assert_eq!(out.watermark.take(), None, "no regression, no repeat");
        op.process_watermark(500, &mut out).unwrap();
        assert_eq!(
            out.watermark.take(),
            None,
            "upstream watermarks are replaced"
        );
        op.process_watermark(Timestamp::MAX, &mut out).unwrap();
        assert_eq!(out.watermark.take(), Some(Timestamp::MAX));
    }
}
