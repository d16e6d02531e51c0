//! The keyed-state sizing job: a per-key sequence source (`keys` keys; record `i` is key
//! `i % keys`) -> keyed by key -> per key a value of `value-bytes` bytes rewritten by every record
//! and a count -> for one key in 1000, a line `key,seq,count,crc` per record (CRC-32C of the value).
//!
//! The first `keys` records fill the state (about `keys × (value-bytes + 40)` bytes encoded); after
//! that every record changes one key's value, cyclically. It measures checkpoints of large keyed
//! state (full vs incremental) and the memory the state takes; the output lets a run be checked.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use streamjob_engine::connectors::sequence::SequenceRecord;
use streamjob_engine::operator::OperatorError;
use streamjob_engine::operators::keyed_process::{KeyedContext, KeyedProcessFunction};
use streamjob_engine::state::{StateRegistry, ValueState};
use streamjob_engine::stream::StreamEnv;

use super::{sequence_records, FaultHook, ResultSink, SourceParams};

/// One output line (sampled keys only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampledValue {
    pub key: u64,
    pub seq: u64,
    pub count: u64,
    pub crc32c: u32,
}

/// Per key: the value and how many records wrote it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Slot {
    count: u64,
    /// Encoded as one byte string, not byte by byte (serde's default for `Vec<u8>`).
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

struct RewriteValues {
    value_bytes: usize,
    slot: Option<ValueState<Slot>>,
}

/// The value record `seq` of `key` writes: deterministic bytes, different for every write.
fn fill(value: &mut Vec<u8>, len: usize, key: u64, seq: u64) {
    value.clear();
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq;
    while value.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bytes = x.to_le_bytes();
        let take = (len - value.len()).min(8);
        value.extend_from_slice(&bytes[..take]);
    }
}

impl KeyedProcessFunction<u64, SequenceRecord, SampledValue> for RewriteValues {
    fn open(&mut self, states: &mut StateRegistry<'_, u64>) {
        self.slot = Some(states.value("slot"));
    }

    fn process_element(
        &mut self,
        record: SequenceRecord,
        ctx: &mut KeyedContext<'_, u64, SampledValue>,
    ) -> Result<(), OperatorError> {
        let len = self.value_bytes;
        let slot = ctx.value_or_insert_with(self.slot.expect("opened"), Slot::default);
        slot.count += 1;
        fill(&mut slot.value, len, record.key, record.seq);
        if record.key.is_multiple_of(1000) {
            let line = SampledValue {
                key: record.key,
                seq: record.seq,
                count: slot.count,
                crc32c: crc32c::crc32c(&slot.value),
            };
            ctx.collect(line);
        }
        Ok(())
    }
}

/// Add the job to `env`.
pub(super) fn build(
    env: &StreamEnv,
    source: SourceParams,
    keys: u64,
    value_bytes: usize,
    output: ResultSink,
    fault: Option<FaultHook>,
) {
    sequence_records(env, source, keys, fault)
        .key_by(|r: &SequenceRecord| r.key)
        .process("rewrite-values", move || RewriteValues {
            value_bytes,
            slot: None,
        })
        .sink("file-sink", move |_| {
            output.operator(|r: &SampledValue, line: &mut String| {
                let _ = write!(line, "{},{},{},{:08x}", r.key, r.seq, r.count, r.crc32c);
            })
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_deterministic_sized_and_differ_per_write() {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        fill(&mut a, 100, 7, 1);
        fill(&mut b, 100, 7, 1);
        fill(&mut c, 100, 7, 2);
        assert_eq!(a.len(), 100);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
