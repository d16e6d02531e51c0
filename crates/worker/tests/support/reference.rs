//! Independent references: each built-in job's expected output computed straight from the
//! generators (`NexmarkGenerator::event(i)`, `WordsConfig::line(i)`, `i % keys` / `i / keys`) with
//! plain collections, sharing no code with the jobs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use streamjob_engine::connectors::nexmark::{Bid, Event, NexmarkConfig, NexmarkGenerator};
use streamjob_engine::connectors::words::WordsConfig;

fn nexmark_events(n: u64) -> impl Iterator<Item = Event> {
    let generator = NexmarkGenerator::new(NexmarkConfig::default());
    (0..n).map(move |i| generator.event(i))
}

/// q5: per sliding window, the auctions with the most bids.
pub fn q5(n: u64, size: i64, slide: i64) -> Vec<String> {
    let mut counts: HashMap<(i64, u64), u64> = HashMap::new();
    for e in nexmark_events(n) {
        if let Event::Bid(b) = e {
            // Every window start s (a multiple of slide) with s <= t < s + size.
            let mut start = b.date_time - b.date_time.rem_euclid(slide);
            while start > b.date_time - size {
                *counts.entry((start, b.auction)).or_default() += 1;
                start -= slide;
            }
        }
    }
    let mut best: BTreeMap<i64, (u64, Vec<u64>)> = BTreeMap::new();
    for ((start, auction), count) in counts {
        let entry = best.entry(start).or_insert((0, Vec::new()));
        if count > entry.0 {
            *entry = (count, vec![auction]);
        } else if count == entry.0 {
            entry.1.push(auction);
        }
    }
    let mut lines = Vec::new();
    for (start, (count, auctions)) in best {
        for a in auctions {
            lines.push(format!("{a},{start},{},{count}", start + size));
        }
    }
    lines
}

/// q7: per tumbling window, the bids with the highest price.
pub fn q7(n: u64, size: i64) -> Vec<String> {
    let mut best: BTreeMap<i64, Vec<Bid>> = BTreeMap::new();
    for e in nexmark_events(n) {
        if let Event::Bid(b) = e {
            let start = b.date_time - b.date_time.rem_euclid(size);
            let bids = best.entry(start).or_default();
            match bids.first().map(|top| top.price) {
                Some(p) if b.price < p => {}
                Some(p) if b.price == p => bids.push(b),
                _ => *bids = vec![b],
            }
        }
    }
    best.into_iter()
        .flat_map(|(start, bids)| {
            bids.into_iter().map(move |b| {
                format!(
                    "{},{},{},{},{},{}",
                    b.auction,
                    b.bidder,
                    b.price,
                    b.channel,
                    b.date_time,
                    start + size
                )
            })
        })
        .collect()
}

/// q8: persons who created an auction in the window in which they registered.
pub fn q8(n: u64, size: i64) -> Vec<String> {
    let window = |t: i64| t - t.rem_euclid(size);
    let mut persons = Vec::new();
    let mut sold: BTreeSet<(u64, i64)> = BTreeSet::new();
    for e in nexmark_events(n) {
        match e {
            Event::Person(p) => persons.push((p.id, p.name, window(p.date_time))),
            Event::Auction(a) => {
                sold.insert((a.seller, window(a.date_time)));
            }
            Event::Bid(_) => {}
        }
    }
    persons
        .into_iter()
        .filter(|(id, _, start)| sold.contains(&(*id, *start)))
        .map(|(id, name, start)| format!("{id},{name},{start}"))
        .collect()
}

/// word-count: final counts, or counts per tumbling window.
pub fn word_count(n: u64, vocabulary: u64, window: Option<i64>) -> Vec<String> {
    let config = WordsConfig {
        vocabulary,
        ..WordsConfig::default()
    };
    let mut counts: HashMap<(String, i64), u64> = HashMap::new();
    for i in 0..n {
        let line = config.line(i);
        let start = window.map_or(0, |size| line.time - line.time.rem_euclid(size));
        for word in line.text.split_whitespace() {
            *counts.entry((word.to_string(), start)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|((word, start), count)| match window {
            None => format!("{word},{count}"),
            Some(size) => format!("{word},{start},{},{count}", start + size),
        })
        .collect()
}

pub fn sequence(n: u64, keys: u64) -> Vec<String> {
    (0..n)
        .map(|i| format!("{},{},{}", i % keys, i / keys, i / keys + 1))
        .collect()
}

/// large-state: for keys `% 1000 == 0`, one line per record `key,seq,count,crc` where record `i`
/// is key `i % keys`, seq `i / keys`, and the value written is `value-bytes` bytes of the job's
/// documented generator: x = key * 0x9E3779B97F4A7C15 ^ seq, then per 8 bytes
/// x = x * 6364136223846793005 + 1442695040888963407 (little-endian, the last word cut).
pub fn large_state(n: u64, keys: u64, value_bytes: usize) -> Vec<String> {
    (0..n)
        .filter(|i| (i % keys).is_multiple_of(1000))
        .map(|i| {
            let (key, seq) = (i % keys, i / keys);
            let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq;
            let mut value = Vec::with_capacity(value_bytes);
            while value.len() < value_bytes {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let take = (value_bytes - value.len()).min(8);
                value.extend_from_slice(&x.to_le_bytes()[..take]);
            }
            format!("{key},{seq},{},{:08x}", seq + 1, crc32c::crc32c(&value))
        })
        .collect()
}
