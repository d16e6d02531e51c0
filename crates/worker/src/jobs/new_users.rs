//! Nexmark q8, monitor new users: the persons who created an auction in the same tumbling event-time
//! window in which they registered (a windowed join of persons and auctions on
//! `person.id == auction.seller`). Output lines `person_id,name,window_start`, one per such person.
//!
//! Persons and auctions come from the one Nexmark source: a flat_map turns them into one enum (bids
//! are dropped before any exchange), keyed by person id (the seller, for auctions). Per key, the
//! state holds the person's registration window (until a matching auction arrives, or the window
//! ends) and the windows in which they sold something (for auctions that arrive before the person
//! does, from another source subtask). A person is emitted as soon as both sides met — once, since
//! a person registers once — and event-time timers at the window ends clear the state.

use compact_str::CompactString;
use std::fmt::Write as _;

use super::ResultSink;
use serde::{Deserialize, Serialize};
use streamjob_engine::connectors::nexmark::Event;
use streamjob_engine::operator::OperatorError;
use streamjob_engine::operators::keyed_process::{KeyedContext, KeyedProcessFunction};
use streamjob_engine::state::{StateRegistry, ValueState};
use streamjob_engine::stream::DataStream;
use streamjob_engine::types::Timestamp;

/// The two inputs of the join.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum PersonOrAuction {
    Person {
        id: u64,
        name: CompactString,
        time: Timestamp,
    },
    Auction {
        seller: u64,
        time: Timestamp,
    },
}

impl PersonOrAuction {
    fn person_id(&self) -> u64 {
        match self {
            Self::Person { id, .. } => *id,
            Self::Auction { seller, .. } => *seller,
        }
    }
}

/// One output line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    pub id: u64,
    pub name: CompactString,
    pub window_start: Timestamp,
}

/// Per person: the registration not yet matched, and the windows of auctions not yet matched.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JoinState {
    /// Registration window start and name.
    person: Option<(Timestamp, CompactString)>,
    /// Starts of windows in which this person sold something (no registration seen there yet).
    sold_in: Vec<Timestamp>,
}

struct JoinPersonsAuctions {
    window_ms: i64,
    state: Option<ValueState<JoinState>>,
}

impl JoinPersonsAuctions {
    fn window_start(&self, time: Timestamp) -> Timestamp {
        time - time.rem_euclid(self.window_ms)
    }
}

impl KeyedProcessFunction<u64, PersonOrAuction, NewUser> for JoinPersonsAuctions {
    fn open(&mut self, states: &mut StateRegistry<'_, u64>) {
        self.state = Some(states.value("join"));
    }

    fn process_element(
        &mut self,
        record: PersonOrAuction,
        ctx: &mut KeyedContext<'_, u64, NewUser>,
    ) -> Result<(), OperatorError> {
        let handle = self.state.expect("opened");
        let window_ms = self.window_ms;
        match record {
            PersonOrAuction::Person { id, name, time } => {
                let start = self.window_start(time);
                let state = ctx.value_or_insert_with(handle, JoinState::default);
                if state.sold_in.contains(&start) {
                    ctx.collect(NewUser {
                        id,
                        name,
                        window_start: start,
                    });
                } else {
                    state.person = Some((start, name));
                    ctx.register_event_time_timer(start + window_ms - 1);
                }
            }
            PersonOrAuction::Auction { seller, time } => {
                let start = self.window_start(time);
                let state = ctx.value_or_insert_with(handle, JoinState::default);
                if state.person.as_ref().is_some_and(|(s, _)| *s == start) {
                    let (_, name) = state.person.take().expect("checked");
                    ctx.collect(NewUser {
                        id: seller,
                        name,
                        window_start: start,
                    });
                } else if !state.sold_in.contains(&start) {
                    state.sold_in.push(start);
                    ctx.register_event_time_timer(start + window_ms - 1);
                }
            }
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        ctx: &mut KeyedContext<'_, u64, NewUser>,
    ) -> Result<(), OperatorError> {
        let handle = self.state.expect("opened");
        let ended = timestamp + 1 - self.window_ms;
        if let Some(mut state) = ctx.clear_value(handle) {
            state.sold_in.retain(|&s| s > ended);
            if state.person.as_ref().is_some_and(|(s, _)| *s <= ended) {
                state.person = None;
            }
            if state.person.is_some() || !state.sold_in.is_empty() {
                ctx.set_value(handle, state);
            }
        }
        Ok(())
    }
}

/// Add q8 to the graph of `events`: tumbling windows of `window_ms`.
pub(super) fn build(events: DataStream<Event>, window_ms: i64, output: ResultSink) {
    events
        .flat_map("persons-and-auctions", |e: Event| match e {
            Event::Person(p) => Some(PersonOrAuction::Person {
                id: p.id,
                name: p.name,
                time: p.date_time,
            }),
            Event::Auction(a) => Some(PersonOrAuction::Auction {
                seller: a.seller,
                time: a.date_time,
            }),
            Event::Bid(_) => None,
        })
        .key_by(PersonOrAuction::person_id)
        .process("q8-new-users", move || JoinPersonsAuctions {
            window_ms,
            state: None,
        })
        .sink("file-sink", move |_| {
            output.operator(|u: &NewUser, line: &mut String| {
                let _ = write!(line, "{},{},{}", u.id, u.name, u.window_start);
            })
        });
}
