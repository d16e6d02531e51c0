//! A deterministic Nexmark event generator (persons, auctions, bids; after the Nexmark benchmark and
//! Flink's/Beam's generator): event `i` is a pure function of `i` and the configuration, so any split
//! of the sequence replays identically after a restore, and two runs produce the same events.
//!
//! Generating a bid allocates nothing: its channel is a borrowed `Cow<'static, str>`. Person and
//! auction strings are [`CompactString`]s, which fit inline (24 bytes); all of them serialize
//! exactly as `String`s do. A source builds one [`NexmarkGenerator`] (divisors prepared) per run.
//!
//! Proportions per 50 events: 1 person, 3 auctions, 46 bids. Event time advances by
//! `inter_event_us` per event from `base_time_ms`. Bids go to recent auctions, hot ones more often.

use std::borrow::Cow;
use std::hint::select_unpredictable;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use strength_reduce::StrengthReducedU64;

use crate::connectors::generator::SplitReader;
use crate::operator::{OperatorContext, OperatorError, Output};
use crate::source::{SourceFunction, SourceStatus};
use crate::types::Timestamp;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const HOT_AUCTION_RATIO: u64 = 100;
const HOT_BIDDER_RATIO: u64 = 100;
const NUM_CATEGORIES: u64 = 5;
// Fixed strings are built at compile time and cloned per event (a 24-byte copy): building them per
// event copied the text byte-wise into the inline buffer and stalled reading it back.
const US_STATES: [CompactString; 6] = [
    CompactString::const_new("AZ"),
    CompactString::const_new("CA"),
    CompactString::const_new("ID"),
    CompactString::const_new("OR"),
    CompactString::const_new("WA"),
    CompactString::const_new("WY"),
];
const US_CITIES: [CompactString; 10] = [
    CompactString::const_new("Phoenix"),
    CompactString::const_new("Los Angeles"),
    CompactString::const_new("San Francisco"),
    CompactString::const_new("Boise"),
    CompactString::const_new("Portland"),
    CompactString::const_new("Bend"),
    CompactString::const_new("Redmond"),
    CompactString::const_new("Seattle"),
    CompactString::const_new("Kent"),
    CompactString::const_new("Cheyenne"),
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CHANNELS: [Cow<'static, str>; 4] = [
    Cow::Borrowed("Google"),
    Cow::Borrowed("Facebook"),
    Cow::Borrowed("Baidu"),
    Cow::Borrowed("Apple"),
];

/// A new person.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Person {
    pub id: u64,
    pub name: CompactString,
    pub email_address: CompactString,
    pub credit_card: CompactString,
    pub city: CompactString,
    pub state: CompactString,
    pub date_time: Timestamp,
}

/// A new auction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Auction {
    pub id: u64,
    pub item_name: CompactString,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: Timestamp,
    pub expires: Timestamp,
    pub seller: u64,
    pub category: u64,
}

/// A bid on an auction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    /// One of a fixed set when generated (borrowed: a bid is moved through the pipeline as plain
    /// words); owned when decoded from state.
    pub channel: Cow<'static, str>,
    pub date_time: Timestamp,
}

/// One Nexmark event. Persons and auctions (4 of 50 events) are boxed, so an event takes no more
/// room than a bid: batches of events are moved through the pipeline, and their size is copied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Event {
    Person(Box<Person>),
    Auction(Box<Auction>),
    Bid(Bid),
}

impl Event {
    /// Event time.
    pub fn timestamp(&self) -> Timestamp {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}

/// Generator configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NexmarkConfig {
    /// Event time of event 0 (ms).
    pub base_time_ms: Timestamp,
    /// Event-time distance between consecutive events (µs).
    pub inter_event_us: u64,
    /// Number of auctions considered "recent" for bids.
    pub active_auctions: u64,
    /// Number of persons considered "active" for bids and auctions.
    pub active_people: u64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        Self {
            base_time_ms: 1_700_000_000_000,
            inter_event_us: 100,
            active_auctions: 1000,
            active_people: 1000,
        }
    }
}

/// The pieces, joined: in a stack buffer, then copied once into the string (inline, no allocation,
/// when they fit in 24 bytes, as every string the generator makes does).
fn concat(pieces: &[&str]) -> CompactString {
    let mut buffer = [0u8; 24];
    let mut len = 0;
    for piece in pieces {
        let bytes = piece.as_bytes();
        let Some(room) = buffer.get_mut(len..len + bytes.len()) else {
            return CompactString::from(pieces.concat());
        };
        room.copy_from_slice(bytes);
        len += bytes.len();
    }
    // Whole `&str`s joined: always valid UTF-8.
    std::str::from_utf8(&buffer[..len])
        .map(CompactString::new)
        .unwrap_or_default()
}

/// `first.last@N.com`.
fn email(first: &str, last: &str, n: u64) -> CompactString {
    let mut digits = itoa::Buffer::new();
    concat(&[first, ".", last, "@", digits.format(n), ".com"])
}

/// `item-N`.
fn item_name(n: u64) -> CompactString {
    let mut digits = itoa::Buffer::new();
    concat(&["item-", digits.format(n)])
}

/// Four groups of four zero-padded digits from bits of `r` (`format!("{:04} {:04} {:04} {:04}")`).
fn credit_card(r: u64) -> CompactString {
    let mut text = [b' '; 19];
    for (group, shift) in [20, 30, 40, 50].into_iter().enumerate() {
        let mut n = (r >> shift) % 10_000;
        for place in (0..4).rev() {
            text[group * 5 + place] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    // ASCII digits and spaces: always valid UTF-8.
    CompactString::from_utf8(text).unwrap_or_default()
}

/// splitmix64: a fast, well-mixed deterministic hash of the event index.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl NexmarkConfig {
    /// Event time of event `index`.
    #[inline]
    pub fn time_of(&self, index: u64) -> Timestamp {
        self.base_time_ms + (index.saturating_mul(self.inter_event_us) / 1000) as i64
    }

    fn last_person_id(&self, index: u64) -> u64 {
        let epoch = index / TOTAL_PROPORTION;
        // One person per epoch (PERSON_PROPORTION == 1): its offset within the epoch is 0.
        let offset = PERSON_PROPORTION - 1;
        FIRST_PERSON_ID + epoch * PERSON_PROPORTION + offset
    }

    fn last_auction_id(&self, index: u64) -> u64 {
        let epoch = index / TOTAL_PROPORTION;
        let offset = index % TOTAL_PROPORTION;
        let offset = if offset < PERSON_PROPORTION {
            // No auction in this epoch yet: the last one is from the previous epoch.
            return (FIRST_AUCTION_ID + epoch * AUCTION_PROPORTION)
                .saturating_sub(1)
                .max(FIRST_AUCTION_ID);
        } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
            offset - PERSON_PROPORTION
        } else {
            AUCTION_PROPORTION - 1
        };
        FIRST_AUCTION_ID + epoch * AUCTION_PROPORTION + offset
    }

    /// Event number `index`. For one-off use (tests, references): a source builds one
    /// [`NexmarkGenerator`] and asks it for every event.
    pub fn event(&self, index: u64) -> Event {
        NexmarkGenerator::new(*self).event(index)
    }
}

/// Builds the events of one configuration, its divisors prepared: the "active" counts are runtime
/// values, and a hardware division by them per bid was the generator's slowest step.
#[derive(Debug, Clone, Copy)]
pub struct NexmarkGenerator {
    config: NexmarkConfig,
    active_auctions: StrengthReducedU64,
    active_people: StrengthReducedU64,
}

impl NexmarkGenerator {
    /// A generator for `config`.
    pub fn new(config: NexmarkConfig) -> Self {
        Self {
            config,
            active_auctions: StrengthReducedU64::new(config.active_auctions.max(1)),
            active_people: StrengthReducedU64::new(config.active_people.max(1)),
        }
    }

    /// Event time of event `index`.
    #[inline]
    pub fn time_of(&self, index: u64) -> Timestamp {
        self.config.time_of(index)
    }

    /// Event number `index`. Small enough to inline into the source's loop: the bid (46 of 50
    /// events) is built in place; persons and auctions are built out of line.
    #[inline(always)]
    pub fn event(&self, index: u64) -> Event {
        let r = mix(index);
        let offset = index % TOTAL_PROPORTION;
        if offset < PERSON_PROPORTION {
            Event::Person(self.person(index, r))
        } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
            Event::Auction(self.auction(index, r))
        } else {
            Event::Bid(self.bid(index, r))
        }
    }

    #[inline(never)]
    fn person(&self, index: u64, r: u64) -> Box<Person> {
        let id = self.config.last_person_id(index);
        let first = FIRST_NAMES[(r % 11) as usize];
        let last = LAST_NAMES[((r >> 8) % 9) as usize];
        Box::new(Person {
            id,
            name: concat(&[first, " ", last]),
            email_address: email(first, last, (r >> 16) % 1000),
            credit_card: credit_card(r),
            city: US_CITIES[((r >> 12) % 10) as usize].clone(),
            state: US_STATES[((r >> 24) % 6) as usize].clone(),
            date_time: self.config.time_of(index),
        })
    }

    #[inline(never)]
    fn auction(&self, index: u64, r: u64) -> Box<Auction> {
        let id = self.config.last_auction_id(index);
        let last_person = self.config.last_person_id(index);
        let seller = if r.is_multiple_of(10) {
            // Hot sellers.
            (last_person / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO
        } else {
            last_person.saturating_sub((r >> 8) % self.active_people)
        }
        .max(FIRST_PERSON_ID);
        let initial_bid = 100 + (r >> 16) % 10_000;
        let time = self.config.time_of(index);
        Box::new(Auction {
            id,
            item_name: item_name((r >> 24) % 100_000),
            initial_bid,
            reserve: initial_bid + (r >> 32) % 10_000,
            date_time: time,
            expires: time + 10_000 + ((r >> 40) % 20_000) as i64,
            seller,
            category: 10 + (r >> 48) % NUM_CATEGORIES,
        })
    }

    #[inline(always)]
    fn bid(&self, index: u64, r: u64) -> Bid {
        // Both candidates, then a select: which one a bid takes is random, and a branch on it
        // was mispredicted for a third of the bids.
        let last_auction = self.config.last_auction_id(index);
        let auction = select_unpredictable(
            !r.is_multiple_of(3),
            // Hot auctions get most bids.
            (last_auction / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO,
            last_auction.saturating_sub((r >> 8) % self.active_auctions),
        )
        .max(FIRST_AUCTION_ID);
        let last_person = self.config.last_person_id(index);
        let bidder = select_unpredictable(
            !(r >> 4).is_multiple_of(4),
            (last_person / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1,
            last_person.saturating_sub((r >> 16) % self.active_people),
        )
        .max(FIRST_PERSON_ID);
        Bid {
            auction,
            bidder,
            price: 100 + (r >> 24) % 100_000,
            channel: CHANNELS[((r >> 40) % 4) as usize].clone(),
            date_time: self.config.time_of(index),
        }
    }
}

/// The Nexmark source: `events` events in total (or unbounded) in `splits` splits. It emits every
/// event ([`AllEvents`]) or, built with [`NexmarkSource::selecting`], only what a selection keeps.
pub struct NexmarkSource<S = AllEvents> {
    generator: NexmarkGenerator,
    reader: SplitReader,
    selection: S,
}

/// What a Nexmark source emits of the events it generates.
pub trait EventSelection: Send + 'static {
    /// The records emitted.
    type Record;
    /// Put the records of the events numbered `indices` into `out`, in order.
    fn emit(&self, generator: &NexmarkGenerator, indices: &[u64], out: &mut Output<Self::Record>);
}

/// Every event, as generated.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllEvents;

impl EventSelection for AllEvents {
    type Record = Event;
    fn emit(&self, generator: &NexmarkGenerator, indices: &[u64], out: &mut Output<Event>) {
        // Built straight into the output buffer (a push per event went through a stack copy the
        // CPU could not forward).
        out.extend(indices.iter().map(|&i| generator.event(i)));
    }
}

/// The events a function keeps, turned into what it returns (`Some`), the rest dropped (`None`).
#[derive(Debug, Clone, Copy)]
pub struct Selecting<F>(F);

impl<T, F> EventSelection for Selecting<F>
where
    F: Fn(Event) -> Option<T> + Send + 'static,
{
    type Record = T;
    fn emit(&self, generator: &NexmarkGenerator, indices: &[u64], out: &mut Output<T>) {
        // One loop, the event built and selected inline: through a closure per event, the
        // selected record went back to the loop through the stack, where a wider read than the
        // writes stalled on every record.
        let Selecting(select) = self;
        out.reserve(indices.len());
        for &i in indices {
            if let Some(record) = select(generator.event(i)) {
                out.records.push(record);
            }
        }
        out.note_read(indices.len() as u64);
    }
}

impl NexmarkSource {
    /// A source emitting `total` events (`None`: unbounded) at `rate` events/s (`None`: max speed).
    pub fn new(config: NexmarkConfig, total: Option<u64>, splits: u32, rate: Option<u64>) -> Self {
        Self {
            generator: NexmarkGenerator::new(config),
            reader: SplitReader::new(total, splits, rate),
            selection: AllEvents,
        }
    }

    /// The same source emitting only what `select` returns for each event: a `flat_map` pushed
    /// into the source (as a filter pushed down into a scan). Every event is still generated,
    /// read and counted as a source record; the events `select` drops are never put in a batch,
    /// so a job that wants, say, only the bids does not copy every event a second time to get
    /// them. Positions, replay and watermarks are those of the unselected source.
    pub fn selecting<T, F>(self, select: F) -> NexmarkSource<Selecting<F>>
    where
        F: Fn(Event) -> Option<T> + Send + 'static,
    {
        NexmarkSource {
            generator: self.generator,
            reader: self.reader,
            selection: Selecting(select),
        }
    }
}

impl<S: EventSelection> SourceFunction<S::Record> for NexmarkSource<S> {
    fn restore(
        &mut self,
        ctx: &OperatorContext,
        entries: Vec<Vec<u8>>,
    ) -> Result<(), OperatorError> {
        self.reader.restore(ctx, entries)
    }
    fn open(&mut self, ctx: &OperatorContext, restored: bool) -> Result<(), OperatorError> {
        self.reader.open(ctx, restored);
        Ok(())
    }
    fn poll(
        &mut self,
        out: &mut Output<S::Record>,
        max_records: usize,
    ) -> Result<SourceStatus, OperatorError> {
        // The reader's steps are called here rather than through a poll taking the batch's
        // emit as a closure: that shape (tried) compiled the selecting loop on its own, building
        // each event on the stack and reading it back wider than written (q0 69 -> 56-60 M
        // events/s, even with the emit forced inline).
        let Some(indices) = self.reader.next_indices(max_records) else {
            return Ok(self.reader.idle());
        };
        let generator = self.generator;
        self.selection.emit(&generator, &indices, out);
        Ok(self
            .reader
            .finish_poll(indices, out, |i| generator.time_of(i)))
    }
    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<Vec<u8>>, OperatorError> {
        self.reader.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_joins_short_and_long_pieces() {
        assert_eq!(concat(&["Kate", " ", "Noris"]), "Kate Noris");
        assert_eq!(concat(&[]), "");
        let long = "x".repeat(20);
        assert_eq!(concat(&[&long, "-", "tail"]), format!("{long}-tail"));
    }

    #[test]
    fn string_fields_are_the_documented_formats() {
        let c = NexmarkConfig::default();
        let mut persons = 0;
        for i in 0..5000 {
            let r = mix(i);
            match c.event(i) {
                Event::Person(p) => {
                    persons += 1;
                    let name = format!(
                        "{} {}",
                        FIRST_NAMES[(r % 11) as usize],
                        LAST_NAMES[((r >> 8) % 9) as usize]
                    );
                    assert_eq!(
                        p.email_address,
                        format!("{}@{}.com", name.replace(' ', "."), (r >> 16) % 1000)
                    );
                    assert_eq!(p.name, name);
                    assert_eq!(
                        p.credit_card,
                        format!(
                            "{:04} {:04} {:04} {:04}",
                            (r >> 20) % 10000,
                            (r >> 30) % 10000,
                            (r >> 40) % 10000,
                            (r >> 50) % 10000
                        )
                    );
                    assert!(!p.name.is_heap_allocated() && !p.email_address.is_heap_allocated());
                }
                Event::Auction(a) => {
                    assert_eq!(a.item_name, format!("item-{}", (r >> 24) % 100_000))
                }
                Event::Bid(b) => {
                    assert!(CHANNELS.contains(&b.channel));
                    // The definition the Java port of the Flink side mirrors, with plain divisions.
                    let last_auction = c.last_auction_id(i);
                    let auction = if !r.is_multiple_of(3) {
                        last_auction / 100 * 100
                    } else {
                        last_auction.saturating_sub((r >> 8) % c.active_auctions)
                    };
                    assert_eq!(b.auction, auction.max(FIRST_AUCTION_ID));
                    let last_person = c.last_person_id(i);
                    let bidder = if !(r >> 4).is_multiple_of(4) {
                        last_person / 100 * 100 + 1
                    } else {
                        last_person.saturating_sub((r >> 16) % c.active_people)
                    };
                    assert_eq!(b.bidder, bidder.max(FIRST_PERSON_ID));
                }
            }
        }
        assert_eq!(persons, 100);
    }

    /// The selecting source emits exactly the bids of the plain one, poll for poll, with the same
    /// watermarks and positions, counts every event it read, and replays the same after a
    /// restore of its snapshot.
    #[test]
    fn a_selecting_source_emits_the_selected_events_of_the_plain_source() {
        let only_bids = |e: Event| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        };
        let ctx = OperatorContext::new("t", "nexmark", 1, 2, 8);
        let config = NexmarkConfig::default();
        let mut plain = NexmarkSource::new(config, Some(10_007), 5, None);
        let mut selecting = NexmarkSource::new(config, Some(10_007), 5, None).selecting(only_bids);
        plain.open(&ctx, false).unwrap();
        selecting.open(&ctx, false).unwrap();
        let (mut events, mut bids) = (Output::default(), Output::default());
        let mut read = 0;
        for poll in 0.. {
            let max = 1 + (poll * 37) % 300;
            let status = plain.poll(&mut events, max).unwrap();
            assert_eq!(selecting.poll(&mut bids, max).unwrap(), status);
            assert_eq!(bids.read.take(), Some(events.records.len() as u64));
            read += events.records.len();
            let expected: Vec<Bid> = events
                .take_records()
                .into_iter()
                .filter_map(only_bids)
                .collect();
            assert_eq!(bids.take_records(), expected);
            assert_eq!(bids.watermark.take(), events.watermark.take());
            if poll == 7 {
                // Restore a fresh selecting source from this snapshot: it goes on identically.
                let snapshot = selecting.snapshot(1).unwrap();
                assert_eq!(snapshot, plain.snapshot(1).unwrap());
                selecting = NexmarkSource::new(config, Some(10_007), 5, None).selecting(only_bids);
                selecting.restore(&ctx, snapshot).unwrap();
                selecting.open(&ctx, true).unwrap();
            }
            if status == SourceStatus::Finished {
                break;
            }
        }
        // Subtask 1 of 2 reads splits 1 and 3 of 5: indices 1, 3, 6, 8, 11, ... below 10,007.
        assert_eq!(
            read,
            (0..10_007).filter(|i| [1, 3].contains(&(i % 5))).count()
        );
    }

    #[test]
    fn deterministic_with_nexmark_proportions() {
        let c = NexmarkConfig::default();
        let events: Vec<Event> = (0..5000).map(|i| c.event(i)).collect();
        let again: Vec<Event> = (0..5000).map(|i| c.event(i)).collect();
        assert_eq!(events, again);
        let persons = events
            .iter()
            .filter(|e| matches!(e, Event::Person(_)))
            .count();
        let auctions = events
            .iter()
            .filter(|e| matches!(e, Event::Auction(_)))
            .count();
        assert_eq!(persons, 100);
        assert_eq!(auctions, 300);
        // Event time is monotonic in the index.
        assert!(events
            .windows(2)
            .all(|w| w[0].timestamp() <= w[1].timestamp()));
        // Bids reference auctions that exist at that point.
        let mut max_auction = 0;
        for e in &events {
            match e {
                Event::Auction(a) => max_auction = max_auction.max(a.id),
                Event::Bid(b) if max_auction > 0 => assert!(b.auction <= max_auction),
                _ => {}
            }
        }
    }
}
