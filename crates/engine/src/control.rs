//! Messages between the checkpoint coordinator and the tasks of a job attempt (out of band: data,
//! watermarks and barriers flow in band on the data channels).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use streamjob_checkpoint::manifest::FileRef;

use crate::types::{Barrier, SnapshotType};

/// Identifies one subtask of one vertex of the job graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// Vertex index in the job graph (topological order).
    pub vertex: u32,
    /// Subtask index.
    pub subtask: u32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.vertex, self.subtask)
    }
}

/// Coordinator -> task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TaskControl {
    /// Sources only: inject this barrier now.
    TriggerBarrier(Barrier),
    /// The checkpoint is complete (manifest written, not fenced): commit side effects.
    NotifyComplete(u64),
    /// The checkpoint was aborted.
    NotifyAborted(u64),
    /// Stop now; the attempt is over.
    Cancel,
}

/// A task's part of a checkpoint: the files it uploaded, by operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskAck {
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// Who acknowledges.
    pub task: TaskId,
    /// Key groups owned by the task.
    pub key_groups: Range<u32>,
    /// `(operator id, file)` for every operator with state.
    pub files: Vec<(String, FileRef)>,
    /// Bytes uploaded.
    pub bytes: u64,
    /// How long the task's processing stopped for the snapshot (the synchronous part: copying
    /// operator state and encoding the files), in microseconds.
    #[serde(default)]
    pub sync_micros: u64,
}

/// Task (or uploader) -> coordinator.
#[derive(Debug)]
pub enum CoordinatorEvent {
    /// A task's snapshot is uploaded.
    Ack(TaskAck),
    /// A task could not snapshot or upload: the checkpoint fails.
    Declined {
        checkpoint_id: u64,
        task: TaskId,
        reason: String,
    },
    /// A bounded source emitted everything (and its final watermark).
    SourceFinished(TaskId),
    /// A task ended normally.
    TaskFinished(TaskId),
    /// A task failed: the attempt fails.
    TaskFailed { task: TaskId, reason: String },
    /// Someone asks for a snapshot now (savepoint, on-demand checkpoint).
    Request(SnapshotRequest),
}

/// A request for a snapshot outside the periodic schedule.
#[derive(Debug)]
pub struct SnapshotRequest {
    /// Checkpoint or savepoint (optionally stopping the job).
    pub kind: SnapshotType,
    /// Where to send the result.
    pub reply: crossbeam_channel::Sender<Result<crate::coordinator::CompletedSnapshot, String>>,
}

/// Where the coordinator sends one task's control messages: the task's channel in this process, or
/// the control link to the worker process that runs it.
#[derive(Clone)]
pub enum ControlSender {
    /// A task of this process.
    Local(crossbeam_channel::Sender<TaskControl>),
    /// A task of another worker; the function queues the message on that worker's link.
    Remote(std::sync::Arc<dyn Fn(TaskControl) -> bool + Send + Sync>),
}

impl ControlSender {
    /// Send; false when the task (or its worker) is gone.
    pub fn send(&self, message: TaskControl) -> bool {
        match self {
            ControlSender::Local(tx) => tx.send(message).is_ok(),
            ControlSender::Remote(send) => send(message),
        }
    }
}

impl std::fmt::Debug for ControlSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlSender::Local(_) => f.write_str("ControlSender::Local"),
            ControlSender::Remote(_) => f.write_str("ControlSender::Remote"),
        }
    }
}
