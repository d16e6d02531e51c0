//! The chaos checker job: a deterministic per-key sequence source (`keys` keys, `events` records:
//! record `i` is key `i % keys`, sequence number `i / keys`) -> keyed by key -> a running count and
//! the last sequence number per key in keyed state -> exactly-once file sink, lines `key,seq,count`.
//!
//! With exactly-once state and output, every committed line has `count == seq + 1`, every
//! `(key, seq)` is committed once, and each key's lines appear in sequence order in commit order;
//! `crate::verify` checks exactly that from the committed files.

use std::fmt::Write as _;

use super::ResultSink;
use serde::{Deserialize, Serialize};
use streamjob_engine::connectors::sequence::SequenceRecord;
use streamjob_engine::operator::OperatorError;
use streamjob_engine::operators::keyed_process::{KeyedContext, KeyedProcessFunction};
use streamjob_engine::state::{StateRegistry, ValueState};
use streamjob_engine::stream::StreamEnv;

use super::{sequence_records, FaultHook, SourceParams};

/// One output line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedRecord {
    pub key: u64,
    pub seq: u64,
    /// Records of this key counted so far, this one included.
    pub count: u64,
}

/// Per key: records counted and the last sequence number.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Progress {
    count: u64,
    last_seq: Option<u64>,
}

#[derive(Default)]
struct CountSequences {
    progress: Option<ValueState<Progress>>,
    out_of_order: u64,
}

impl KeyedProcessFunction<u64, SequenceRecord, CheckedRecord> for CountSequences {
    fn open(&mut self, states: &mut StateRegistry<'_, u64>) {
        self.progress = Some(states.value("progress"));
    }

    fn process_element(
        &mut self,
        record: SequenceRecord,
        ctx: &mut KeyedContext<'_, u64, CheckedRecord>,
    ) -> Result<(), OperatorError> {
        let progress = ctx.value_or_insert_with(self.progress.expect("opened"), Progress::default);
        let expected = progress.last_seq.map_or(0, |s| s + 1);
        progress.count += 1;
        progress.last_seq = Some(record.seq);
        let count = progress.count;
        if record.seq != expected {
            // The verifier judges from the output; this only makes a live problem visible early.
            self.out_of_order += 1;
            if self.out_of_order == 1 {
                tracing::warn!(
                    key = record.key,
                    seq = record.seq,
                    expected,
                    "sequence-check: a key's record arrived out of sequence"
                );
            }
        }
        ctx.collect(CheckedRecord {
            key: record.key,
            seq: record.seq,
            count,
        });
        Ok(())
    }
}

/// Add the checker job to `env`.
pub(super) fn build(
    env: &StreamEnv,
    source: SourceParams,
    keys: u64,
    output: ResultSink,
    fault: Option<FaultHook>,
) {
    sequence_records(env, source, keys, fault)
        .key_by(|r: &SequenceRecord| r.key)
        .process("count-sequences", CountSequences::default)
        .sink("file-sink", move |_| {
            output.operator(|r: &CheckedRecord, line: &mut String| {
                let _ = write!(line, "{},{},{}", r.key, r.seq, r.count);
            })
        });
}
