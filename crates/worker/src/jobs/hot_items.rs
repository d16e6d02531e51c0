//! Nexmark q5, hot items: per sliding event-time window (`window` every `slide`), the auction(s)
//! with the most bids. Output lines `auction,window_start,window_end,count`, one per winning auction
//! (ties give several lines).
//!
//! Three stages, none of which touches a bid twice:
//! 1. chained after the source, bids are counted per (auction, pane) inside each subtask, a pane
//!    being one `slide` of event time (local pre-aggregation: the exchange carries one partial
//!    count per auction, pane and subtask instead of every bid);
//! 2. keyed by auction, the partial counts of every pane are summed into the `window/slide`
//!    sliding windows containing the pane (`window(...).aggregate(...)`);
//! 3. keyed by window end, each window's counts are reduced to the maximum and its auctions, and
//!    emitted by an event-time timer when the watermark passes the window end (all counts of that
//!    window have arrived then: the windows of stage 2 fire ahead of the same watermark).

use std::fmt::Write as _;

use super::ResultSink;
use serde::{Deserialize, Serialize};
use streamjob_engine::connectors::nexmark::Event;
use streamjob_engine::operator::OperatorError;
use streamjob_engine::operators::keyed_process::{KeyedContext, KeyedProcessFunction};
use streamjob_engine::operators::local_window::LocalWindowAggregate;
use streamjob_engine::operators::window::{AggregateFunction, Count, WindowAssigner, WindowResult};
use streamjob_engine::state::{StateRegistry, ValueState};
use streamjob_engine::stream::DataStream;
use streamjob_engine::types::Timestamp;

/// One output line: an auction with the most bids of its window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotItem {
    pub auction: u64,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub count: u64,
}

/// Sums partial counts (stage 2).
#[derive(Debug, Clone, Copy)]
struct SumPartials;

impl AggregateFunction<WindowResult<u64, u64>, u64> for SumPartials {
    type Acc = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, partial: &WindowResult<u64, u64>) {
        *acc += partial.value;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// The leaders of one window so far (stage 3 state).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Leaders {
    start: Timestamp,
    count: u64,
    auctions: Vec<u64>,
}

/// Keyed by window end: keeps the maximum count and its auctions; the timer emits them.
#[derive(Default)]
struct MaxPerWindow {
    leaders: Option<ValueState<Leaders>>,
}

impl KeyedProcessFunction<Timestamp, WindowResult<u64, u64>, HotItem> for MaxPerWindow {
    fn open(&mut self, states: &mut StateRegistry<'_, Timestamp>) {
        self.leaders = Some(states.value("leaders"));
    }

    fn process_element(
        &mut self,
        count: WindowResult<u64, u64>,
        ctx: &mut KeyedContext<'_, Timestamp, HotItem>,
    ) -> Result<(), OperatorError> {
        let state = self.leaders.expect("opened");
        let leaders = ctx.value_or_insert_with(state, || Leaders {
            start: count.start,
            ..Leaders::default()
        });
        let first = leaders.auctions.is_empty();
        if count.value > leaders.count {
            leaders.count = count.value;
            leaders.auctions.clear();
            leaders.auctions.push(count.key);
        } else if count.value == leaders.count {
            leaders.auctions.push(count.key);
        }
        if first {
            ctx.register_event_time_timer(count.end - 1);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        ctx: &mut KeyedContext<'_, Timestamp, HotItem>,
    ) -> Result<(), OperatorError> {
        let state = self.leaders.expect("opened");
        let window_end = *ctx.key();
        if let Some(leaders) = ctx.clear_value(state) {
            for auction in leaders.auctions {
                ctx.collect(HotItem {
                    auction,
                    window_start: leaders.start,
                    window_end,
                    count: leaders.count,
                });
            }
        }
        Ok(())
    }
}

/// Add q5 to the graph of `events`: sliding windows of `window_ms` every `slide_ms` (a divisor).
pub(super) fn build(events: DataStream<Event>, window_ms: i64, slide_ms: i64, output: ResultSink) {
    events
        .flat_map("bids", |e: Event| match e {
            Event::Bid(b) => Some((b.auction, b.date_time)),
            _ => None,
        })
        .transform("q5-pane-counts", move |_| {
            Box::new(LocalWindowAggregate::new(
                WindowAssigner::tumbling(slide_ms),
                Count,
                |b: &(u64, Timestamp)| b.0,
                |b: &(u64, Timestamp)| b.1,
            ))
        })
        .key_by(|pane: &WindowResult<u64, u64>| pane.key)
        .window(WindowAssigner::sliding(window_ms, slide_ms), |pane| {
            pane.start
        })
        .aggregate("q5-window-counts", SumPartials)
        .key_by(|count: &WindowResult<u64, u64>| count.end)
        .process("q5-hot-items", MaxPerWindow::default)
        .sink("file-sink", move |_| {
            output.operator(|h: &HotItem, line: &mut String| {
                let _ = write!(
                    line,
                    "{},{},{},{}",
                    h.auction, h.window_start, h.window_end, h.count
                );
            })
        });
}
