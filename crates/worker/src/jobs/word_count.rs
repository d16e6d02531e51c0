//! Word count over the deterministic text generator: lines -> words -> keyed by word -> a running
//! count per word in keyed state -> exactly-once file sink.
//!
//! Without `window` the counts are final counts, emitted once per word when the (bounded) input
//! ends: lines `word,count`. With `window` (tumbling, event time) every word's count in every window
//! is emitted when the watermark passes the window end: lines `word,window_start,window_end,count`.
//!
//! Words are `CompactString`s (inline up to 24 bytes), split from the line by an iterator that owns
//! the line: no allocation per word, no intermediate vector per line.

use std::fmt::Write as _;

use super::ResultSink;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use streamjob_engine::connectors::words::{Line, WordsConfig, WordsSource};
use streamjob_engine::operator::OperatorError;
use streamjob_engine::operators::keyed_process::{KeyedContext, KeyedProcessFunction};
use streamjob_engine::state::{StateRegistry, ValueState};
use streamjob_engine::stream::StreamEnv;
use streamjob_engine::types::{Timestamp, MAX_WATERMARK};

use super::{inject, FaultHook, SourceParams};

/// One word of a line, with the line's event time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Word {
    word: CompactString,
    time: Timestamp,
}

/// The words of a line (split on ASCII whitespace), owning the line.
struct Words {
    line: Line,
    at: usize,
}

impl Iterator for Words {
    type Item = Word;
    fn next(&mut self) -> Option<Word> {
        let bytes = self.line.text.as_bytes();
        let mut start = self.at;
        while start < bytes.len() && bytes[start].is_ascii_whitespace() {
            start += 1;
        }
        if start == bytes.len() {
            self.at = start;
            return None;
        }
        let mut end = start;
        while end < bytes.len() && !bytes[end].is_ascii_whitespace() {
            end += 1;
        }
        self.at = end;
        Some(Word {
            word: CompactString::new(&self.line.text[start..end]),
            time: self.line.time,
        })
    }
}

/// One output line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WordCount {
    word: CompactString,
    /// `(start, end)` of the window; `None` for a final count.
    window: Option<(Timestamp, Timestamp)>,
    count: u64,
}

/// Keyed by word: a running count (or per-window counts) in value state, emitted by timers.
struct CountWords {
    window_ms: Option<i64>,
    total: Option<ValueState<u64>>,
    windows: Option<ValueState<Vec<(Timestamp, u64)>>>,
}

impl KeyedProcessFunction<CompactString, Word, WordCount> for CountWords {
    fn open(&mut self, states: &mut StateRegistry<'_, CompactString>) {
        match self.window_ms {
            None => self.total = Some(states.value("count")),
            Some(_) => self.windows = Some(states.value("window-counts")),
        }
    }

    fn process_element(
        &mut self,
        word: Word,
        ctx: &mut KeyedContext<'_, CompactString, WordCount>,
    ) -> Result<(), OperatorError> {
        match self.window_ms {
            None => {
                let mut first = false;
                let count = ctx.value_or_insert_with(self.total.expect("opened"), || {
                    first = true;
                    0
                });
                *count += 1;
                if first {
                    // Fires with the final watermark of a bounded input.
                    ctx.register_event_time_timer(MAX_WATERMARK);
                }
            }
            Some(size) => {
                let start = word.time - word.time.rem_euclid(size);
                let counts = ctx.value_or_insert_with(self.windows.expect("opened"), Vec::new);
                // Almost always the newest window: search from the back.
                match counts.iter_mut().rev().find(|(s, _)| *s == start) {
                    Some((_, n)) => *n += 1,
                    None => {
                        counts.push((start, 1));
                        ctx.register_event_time_timer(start + size - 1);
                    }
                }
            }
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        ctx: &mut KeyedContext<'_, CompactString, WordCount>,
    ) -> Result<(), OperatorError> {
        let word = ctx.key().clone();
        match self.window_ms {
            None => {
                if let Some(count) = ctx.clear_value(self.total.expect("opened")) {
                    ctx.collect(WordCount {
                        word,
                        window: None,
                        count,
                    });
                }
            }
            Some(size) => {
                let handle = self.windows.expect("opened");
                let start = timestamp + 1 - size;
                if let Some(mut counts) = ctx.clear_value(handle) {
                    if let Some(i) = counts.iter().position(|(s, _)| *s == start) {
                        let (_, count) = counts.remove(i);
                        ctx.collect(WordCount {
                            word,
                            window: Some((start, start + size)),
                            count,
                        });
                    }
                    if !counts.is_empty() {
                        ctx.set_value(handle, counts);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Add word count to `env`: `vocabulary` distinct words; `window_ms` or final counts.
pub(super) fn build(
    env: &StreamEnv,
    source: SourceParams,
    vocabulary: u64,
    window_ms: Option<i64>,
    output: ResultSink,
    fault: Option<FaultHook>,
) {
    let config = WordsConfig {
        vocabulary,
        ..WordsConfig::default()
    };
    let lines = env.source("words", move |_| {
        Box::new(WordsSource::new(
            config,
            source.events,
            source.splits,
            source.rate,
        ))
    });
    inject(lines, fault)
        .flat_map("split-words", |line: Line| Words { line, at: 0 })
        .key_by(|w: &Word| w.word.clone())
        .process("count-words", move || CountWords {
            window_ms,
            total: None,
            windows: None,
        })
        .sink("file-sink", move |_| {
            output.operator(|c: &WordCount, line: &mut String| {
                let _ = match c.window {
                    None => write!(line, "{},{}", c.word, c.count),
                    Some((start, end)) => {
                        write!(line, "{},{},{},{}", c.word, start, end, c.count)
                    }
                };
            })
        });
}
