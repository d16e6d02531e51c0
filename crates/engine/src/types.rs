//! The vocabulary of the runtime: records (`Data`, `Key`), event time, and the in-band `Message`s that
//! flow between subtasks (data batches, watermarks, barriers, end of stream).

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Event time in milliseconds since the Unix epoch.
pub type Timestamp = i64;

/// Watermark meaning "no more events, ever" (end of a bounded input).
pub const MAX_WATERMARK: Timestamp = i64::MAX;
/// Watermark before any event.
pub const MIN_WATERMARK: Timestamp = i64::MIN;

/// A record type that can flow through the dataflow, be stored in state and cross process boundaries.
pub trait Data: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> Data for T {}

/// A key of a keyed stream: hashed (deterministically) into key groups.
pub trait Key: Data + Hash + Eq + Ord {}
impl<T: Data + Hash + Eq + Ord> Key for T {}

/// What a snapshot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum SnapshotType {
    /// A periodic or on-demand checkpoint (retained per policy, may be deleted).
    Checkpoint,
    /// A savepoint (self-contained, never deleted automatically); `stop` ends the job right after it.
    Savepoint { stop: bool },
}

impl SnapshotType {
    /// True for a stop-with-savepoint.
    pub fn stops_job(self) -> bool {
        matches!(self, SnapshotType::Savepoint { stop: true })
    }
}

/// A checkpoint barrier: separates the records before checkpoint `id` from those after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Barrier {
    /// Checkpoint id (monotonic within a job, continues across attempts).
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotType,
    /// Set on the last checkpoint of a bounded job: after it every task finishes.
    pub is_final: bool,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum EndOfStream {
    /// The input is exhausted (bounded source): windows fire, then tasks finish.
    Drained,
    /// The job stops after a savepoint: nothing more is emitted, windows do not fire.
    Stopped,
}

/// What flows on a channel between two subtasks (and, encoded, between worker processes).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub enum Message<T> {
    /// A batch of records (never empty).
    Data(Vec<T>),
    /// Event time progress: no record with a smaller timestamp follows on this channel.
    Watermark(Timestamp),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// No more messages on this channel.
    End(EndOfStream),
}
