//! A deterministic text generator (the source of the word-count job): line `i` is a pure function of
//! `i` and the configuration, so the split-based reader (`generator.rs`) replays exactly the same
//! lines after a restore, at any parallelism.
//!
//! Each line holds 8 to 12 words drawn from a vocabulary of `vocabulary` made-up words with a
//! Zipf-like distribution (word `n` has a probability about proportional to `1/(n+1)`: a few words
//! are frequent, most are rare, as in natural text), in integer arithmetic only. Event time advances
//! by `inter_event_us` per line from `base_time_ms`.

use serde::{Deserialize, Serialize};

use crate::connectors::generator::SplitReader;
use crate::operator::{OperatorContext, OperatorError, Output};
use crate::source::{SourceFunction, SourceStatus};
use crate::types::Timestamp;

/// Syllables words are spelled with (base-16 digits of the word number).
const SYLLABLES: [&str; 16] = [
    "ba", "ko", "ri", "tu", "me", "sa", "lo", "ni", "da", "ve", "zu", "pe", "gi", "ho", "ya", "fe",
];

/// One generated line of text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Line {
    /// Event time (ms).
    pub time: Timestamp,
    /// Words separated by single spaces.
    pub text: String,
}

/// Generator configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordsConfig {
    /// Event time of line 0 (ms).
    pub base_time_ms: Timestamp,
    /// Event-time distance between consecutive lines (µs).
    pub inter_event_us: u64,
    /// Number of distinct words.
    pub vocabulary: u64,
}

impl Default for WordsConfig {
    fn default() -> Self {
        Self {
            base_time_ms: 1_700_000_000_000,
            inter_event_us: 100,
            vocabulary: 10_000,
        }
    }
}

/// splitmix64 (the same mixer as the Nexmark generator).
#[inline]
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Append the spelling of word number `n` (distinct numbers give distinct words).
pub fn spell_word(mut n: u64, out: &mut String) {
    loop {
        out.push_str(SYLLABLES[(n % 16) as usize]);
        n /= 16;
        if n == 0 {
            break;
        }
    }
}

impl WordsConfig {
    /// Event time of line `index`.
    #[inline]
    pub fn time_of(&self, index: u64) -> Timestamp {
        self.base_time_ms + (index.saturating_mul(self.inter_event_us) / 1000) as i64
    }

    /// Append the text of line `index` to `out`.
    pub fn write_line(&self, index: u64, out: &mut String) {
        let vocabulary = self.vocabulary.max(1);
        // Log-uniform draw: a bucket k of words [2^k - 1, 2^(k+1) - 1) uniformly, then a word in it.
        let buckets = u64::from(64 - vocabulary.leading_zeros());
        let r = mix(index);
        let words = 8 + r % 5;
        for w in 0..words {
            let x = mix(r ^ (w + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let k = (x & 0xff) % buckets;
            let lo = (1u64 << k) - 1;
            let hi = ((1u64 << (k + 1)) - 1).min(vocabulary);
            if w > 0 {
                out.push(' ');
            }
            spell_word(lo + (x >> 8) % (hi - lo), out);
        }
    }

    /// Line number `index`.
    pub fn line(&self, index: u64) -> Line {
        let mut text = String::with_capacity(96);
        self.write_line(index, &mut text);
        Line {
            time: self.time_of(index),
            text,
        }
    }
}

/// The text source: `total` lines (or unbounded) in `splits` splits.
pub struct WordsSource {
    config: WordsConfig,
    reader: SplitReader,
}

impl WordsSource {
    /// A source emitting `total` lines (`None`: unbounded) at `rate` lines/s (`None`: max speed).
    pub fn new(config: WordsConfig, total: Option<u64>, splits: u32, rate: Option<u64>) -> Self {
        Self {
            config,
            reader: SplitReader::new(total, splits, rate),
        }
    }
}

impl SourceFunction<Line> for WordsSource {
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
        out: &mut Output<Line>,
        max_records: usize,
    ) -> Result<SourceStatus, OperatorError> {
        let config = self.config;
        Ok(self
            .reader
            .poll(out, max_records, |i| config.line(i), |i| config.time_of(i)))
    }
    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<Vec<u8>>, OperatorError> {
        self.reader.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn lines_are_deterministic_and_skewed_over_the_vocabulary() {
        let c = WordsConfig {
            vocabulary: 1000,
            ..WordsConfig::default()
        };
        assert_eq!(c.line(42), c.line(42));
        let mut counts: HashMap<String, u64> = HashMap::new();
        for i in 0..2000 {
            let line = c.line(i);
            let n = line.text.split(' ').count();
            assert!((8..=12).contains(&n), "{n} words in {:?}", line.text);
            for w in line.text.split(' ') {
                *counts.entry(w.to_string()).or_default() += 1;
            }
        }
        assert!(
            counts.len() <= 1000 && counts.len() > 300,
            "{}",
            counts.len()
        );
        let mut by_count: Vec<u64> = counts.values().copied().collect();
        by_count.sort_unstable_by(|a, b| b.cmp(a));
        assert!(
            by_count[0] > 20 * by_count[by_count.len() / 2],
            "not skewed: {:?}",
            &by_count[..5]
        );
    }

    #[test]
    fn distinct_numbers_spell_distinct_words() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..5000 {
            let mut w = String::new();
            spell_word(n, &mut w);
            assert!(seen.insert(w));
        }
    }
}
