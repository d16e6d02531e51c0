//! streamjob's dataflow engine: keyed state, event time, windows, parallel subtasks, and asynchronous
//! barrier snapshots (Carbone et al. 2015, as in Apache Flink). It knows nothing of Kubernetes.
//!
//! Data flow:
//! 1. A [`stream::StreamEnv`] builds a graph: sources, chained operators, exchanges (forward,
//!    rebalance, hash by key group), sinks. [`job::start`] runs it: one thread per subtask.
//! 2. Records travel in batches (`Message::Data(Vec<T>)`) over bounded channels: a full channel blocks
//!    the sender (backpressure). Watermarks travel in band; a task's event time is the minimum over
//!    its inputs.
//!
//! Barrier flow (one checkpoint):
//! 1. The [`coordinator`] triggers checkpoint `n` at the sources (interval, min pause, max concurrent).
//! 2. A source snapshots its offsets between two batches and emits barrier `n` on every output.
//! 3. A task with several inputs aligns barrier `n` (exactly-once: blocks the inputs that delivered
//!    it; at-least-once: does not) then snapshots every operator of its chain and forwards the barrier.
//! 4. The snapshot bytes are uploaded asynchronously while the task goes on processing; the upload
//!    acknowledges to the coordinator with the files' sizes and checksums.
//! 5. With every acknowledgement in, the coordinator writes the manifest (create-if-absent, last),
//!    checks no newer attempt fenced it, and notifies "checkpoint complete": two-phase-commit sinks
//!    commit then.
//!
//! Watermark alignment (optional, per source): aligned source subtasks share their watermarks in a
//! [`watermark_alignment::AlignmentHub`] (across workers: reports over the control links); one that
//! is more than the group's drift ahead of the slowest pauses reading but keeps serving barriers.

pub mod alignment;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod control;
pub mod coordinator;
pub mod framing;
pub mod incremental;
pub mod job;
pub mod keygroup;
pub mod operator;
pub mod operators;
pub mod pipeline;
pub mod restore;
pub mod runner;
pub mod source;
pub mod state;
pub mod stream;
pub mod task;
pub mod types;
mod upload;
pub mod watermark_alignment;
