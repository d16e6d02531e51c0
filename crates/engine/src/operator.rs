//! The one trait every operator implements (`StreamOperator`), the buffer operators emit into
//! (`Output`), and the state an operator puts into a snapshot (`OperatorSnapshot`).
//!
//! Operators work on batches: one virtual call per batch, plain loops inside. An operator never blocks
//! and never does I/O on the record path; snapshots return bytes that the task uploads asynchronously.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::types::{Barrier, EndOfStream, Timestamp};

/// Failure inside an operator; fails the job attempt (the job restarts from the latest checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// User code reported a failure.
    #[error("operator failed: {0}")]
    Failed(String),
    /// State from a snapshot could not be decoded (snapshot of another job version?).
    #[error("failed to decode state of operator {operator}: {reason}; restore a snapshot taken by a compatible job or start without state")]
    StateDecode { operator: String, reason: String },
    /// State could not be encoded.
    #[error("failed to encode state of operator {operator}: {reason}")]
    StateEncode { operator: String, reason: String },
    /// An external system (file system, object store) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where an operator instance runs.
#[derive(Debug, Clone)]
pub struct OperatorContext {
    /// Job name.
    pub job_name: String,
    /// Stable operator id (state in snapshots is stored under it).
    pub operator_id: String,
    /// This subtask's index.
    pub subtask: u32,
    /// Number of subtasks of this operator.
    pub parallelism: u32,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Key groups owned by this subtask.
    pub key_groups: Range<u32>,
    /// Job attempt (fences older attempts' side effects).
    pub attempt: u64,
    /// Checkpoint id the attempt restored from (`None`: started with empty state).
    pub restored_checkpoint: Option<u64>,
}

/// State of one operator instance in a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OperatorSnapshot {
    /// Keyed state: one encoded blob per non-empty key group.
    pub keyed: Vec<(u32, Vec<u8>)>,
    /// Operator (non-keyed) list state: entries are redistributed round-robin on rescale.
    pub list: Vec<Vec<u8>>,
}

impl OperatorSnapshot {
    /// True when there is nothing to store.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.list.is_empty()
    }
}

/// The state handed to an operator instance on restore: only the key groups it owns and its share of
/// list entries.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    /// Keyed state blobs for key groups in this subtask's range.
    pub keyed: Vec<(u32, Vec<u8>)>,
    /// This subtask's share of the list entries.
    pub list: Vec<Vec<u8>>,
}

/// Records and watermark an operator emitted while handling one input.
#[derive(Debug)]
pub struct Output<O> {
    pub(crate) records: Vec<O>,
    pub(crate) watermark: Option<Timestamp>,
}

impl<O> Default for Output<O> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            watermark: None,
        }
    }
}

impl<O> Output<O> {
    /// Emit one record.
    #[inline]
    pub fn collect(&mut self, record: O) {
        self.records.push(record);
    }
    /// Emit many records.
    #[inline]
    pub fn extend(&mut self, records: impl IntoIterator<Item = O>) {
        self.records.extend(records);
    }
    /// Emit a watermark (after the records emitted so far).
    pub fn emit_watermark(&mut self, watermark: Timestamp) {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
    }
    /// Take the records, leaving an empty buffer with the same capacity strategy.
    pub(crate) fn take_records(&mut self) -> Vec<O> {
        std::mem::take(&mut self.records)
    }
}

/// An operator: turns batches of `I` into records of `O`, may keep state, and hears about checkpoints.
pub trait StreamOperator<I, O>: Send {
    /// Called once before any input, after `restore` if the job restored state.
    fn open(&mut self, _ctx: &OperatorContext) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Load state from a snapshot (called before `open`).
    fn restore(
        &mut self,
        _ctx: &OperatorContext,
        _state: RestoredState,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Process a batch of records.
    fn process_batch(&mut self, batch: Vec<I>, out: &mut Output<O>) -> Result<(), OperatorError>;
    /// Event time advanced to `watermark` (the minimum over all inputs). Forward it (default) or hold it.
    fn process_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<O>,
    ) -> Result<(), OperatorError> {
        out.emit_watermark(watermark);
        Ok(())
    }
    /// The barrier passed: return this operator's state as of this point (synchronous part only).
    fn snapshot(&mut self, _barrier: &Barrier) -> Result<OperatorSnapshot, OperatorError> {
        Ok(OperatorSnapshot::default())
    }
    /// Checkpoint `id` is complete (its manifest is written): commit side effects up to it.
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Checkpoint `id` was aborted: discard what was prepared for it.
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) {}
    /// All inputs ended.
    fn end_of_input(
        &mut self,
        _end: EndOfStream,
        _out: &mut Output<O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
}
