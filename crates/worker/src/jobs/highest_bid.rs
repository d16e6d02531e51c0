//! Nexmark q7, highest bid: per tumbling event-time window, the bid(s) with the highest price.
//! Output lines `auction,bidder,price,channel,date_time,window_end`, one per winning bid (ties give
//! several lines).
//!
//! Two stages:
//! 1. chained after the source, each subtask keeps the highest bids of every open window (local
//!    pre-aggregation: no exchange of bids at all) and emits them when the watermark passes the
//!    window end;
//! 2. keyed by window end, the subtasks' partial maxima are merged and emitted by an event-time timer
//!    when the watermark passes the window end (every subtask's partial has arrived then).

use std::fmt::Write as _;

use super::ResultSink;
use serde::{Deserialize, Serialize};
use streamjob_engine::connectors::nexmark::{Bid, Event};
use streamjob_engine::operator::OperatorError;
use streamjob_engine::operators::keyed_process::{KeyedContext, KeyedProcessFunction};
use streamjob_engine::operators::local_window::LocalWindowAggregate;
use streamjob_engine::operators::window::{AggregateFunction, WindowAssigner, WindowResult};
use streamjob_engine::state::{StateRegistry, ValueState};
use streamjob_engine::stream::DataStream;
use streamjob_engine::types::Timestamp;

/// The highest bids seen so far (all bids at the highest price).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighestBids {
    pub price: u64,
    pub bids: Vec<Bid>,
}

impl HighestBids {
    fn add(&mut self, bid: &Bid) {
        if self.bids.is_empty() || bid.price > self.price {
            self.price = bid.price;
            self.bids.clear();
            self.bids.push(bid.clone());
        } else if bid.price == self.price {
            self.bids.push(bid.clone());
        }
    }

    fn merge(&mut self, other: HighestBids) {
        if other.bids.is_empty() {
            return;
        }
        if self.bids.is_empty() || other.price > self.price {
            *self = other;
        } else if other.price == self.price {
            self.bids.extend(other.bids);
        }
    }
}

/// Keeps the highest bids (stage 1).
#[derive(Debug, Clone, Copy)]
struct MaxPrice;

impl AggregateFunction<Bid, HighestBids> for MaxPrice {
    type Acc = HighestBids;
    fn create_accumulator(&self) -> HighestBids {
        HighestBids::default()
    }
    fn add(&self, acc: &mut HighestBids, bid: &Bid) {
        acc.add(bid);
    }
    fn result(&self, acc: &HighestBids) -> HighestBids {
        acc.clone()
    }
}

/// One output line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighestBid {
    pub bid: Bid,
    pub window_end: Timestamp,
}

/// Keyed by window end: merges partial maxima; the timer emits the window's winners.
#[derive(Default)]
struct MergeMaxima {
    highest: Option<ValueState<HighestBids>>,
}

impl KeyedProcessFunction<Timestamp, WindowResult<(), HighestBids>, HighestBid> for MergeMaxima {
    fn open(&mut self, states: &mut StateRegistry<'_, Timestamp>) {
        self.highest = Some(states.value("highest"));
    }

    fn process_element(
        &mut self,
        partial: WindowResult<(), HighestBids>,
        ctx: &mut KeyedContext<'_, Timestamp, HighestBid>,
    ) -> Result<(), OperatorError> {
        let state = self.highest.expect("opened");
        let highest = ctx.value_or_insert_with(state, HighestBids::default);
        let first = highest.bids.is_empty();
        highest.merge(partial.value);
        if first {
            ctx.register_event_time_timer(partial.end - 1);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        ctx: &mut KeyedContext<'_, Timestamp, HighestBid>,
    ) -> Result<(), OperatorError> {
        let state = self.highest.expect("opened");
        let window_end = *ctx.key();
        if let Some(highest) = ctx.clear_value(state) {
            for bid in highest.bids {
                ctx.collect(HighestBid { bid, window_end });
            }
        }
        Ok(())
    }
}

/// Add q7 to the graph of `events`: tumbling windows of `window_ms`.
pub(super) fn build(events: DataStream<Event>, window_ms: i64, output: ResultSink) {
    events
        .flat_map("bids", |e: Event| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .transform("q7-local-max", move |_| {
            Box::new(LocalWindowAggregate::new(
                WindowAssigner::tumbling(window_ms),
                MaxPrice,
                |_: &Bid| (),
                |b: &Bid| b.date_time,
            ))
        })
        .key_by(|partial: &WindowResult<(), HighestBids>| partial.end)
        .process("q7-highest-bid", MergeMaxima::default)
        .sink("file-sink", move |_| {
            output.operator(|h: &HighestBid, line: &mut String| {
                let b = &h.bid;
                let _ = write!(
                    line,
                    "{},{},{},{},{},{}",
                    b.auction, b.bidder, b.price, b.channel, b.date_time, h.window_end
                );
            })
        });
}
