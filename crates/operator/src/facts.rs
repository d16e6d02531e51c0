//! What the operator observed about one StreamJob, as plain data: its worker pods, what worker 0's
//! control API reported, and the snapshot index read from storage. `observe` fills these in;
//! `decide` reads them and never does I/O.

use streamjob_api::v1alpha1::SnapshotInfo;

/// Phase of a worker pod as the operator cares about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// Not running yet (scheduling, pulling, starting).
    Pending,
    /// The worker process runs.
    Running,
    /// The worker exited 0: the job finished or stopped with a savepoint.
    Succeeded,
    /// The worker exited non-zero or could not start.
    Failed,
}

/// One worker pod of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    /// Pod name.
    pub name: String,
    /// Attempt label (`None`: not one of ours or the label was removed).
    pub attempt: Option<u64>,
    /// Worker index label (0 hosts the job coordinator).
    pub worker: Option<u32>,
    /// Phase.
    pub phase: PodPhase,
    /// Ready condition.
    pub ready: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// Pod IP, once assigned.
    pub ip: Option<String>,
    /// Why it failed (container termination reason, exit code, message), or why it is still
    /// waiting to start (`CreateContainerConfigError: ...`).
    pub failure: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_ms: Option<u64>,
}

/// The job state a worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Restoring and starting its tasks.
    Starting,
    /// Running.
    Running,
    /// A bounded job finished.
    Finished,
    /// Stopped with a savepoint.
    Stopped,
    /// The attempt failed.
    Failed,
}

/// `GET /v1/status` of worker 0 of the current attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReport {
    /// Attempt the worker runs.
    pub attempt: u64,
    /// Job state.
    pub state: WorkerState,
    /// Newest checkpoint it completed.
    pub last_checkpoint: Option<SnapshotInfo>,
    /// Why it failed.
    pub failure: Option<String>,
}

/// A complete snapshot and its folder relative to the job's storage root.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedSnapshot {
    /// Folder relative to the storage root (`checkpoints/000002-0000000042`), what workers take as `--restore`.
    pub dir: String,
    /// What status shows.
    pub info: SnapshotInfo,
}

/// The verified snapshot index of a job, read from storage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotIndex {
    /// Where a new attempt restores from: the newest complete, unfenced checkpoint or savepoint.
    pub restore_point: Option<IndexedSnapshot>,
    /// Newest complete checkpoint (not savepoint).
    pub last_checkpoint: Option<SnapshotInfo>,
    /// Complete savepoints, newest first.
    pub savepoints: Vec<IndexedSnapshot>,
    /// Highest attempt recorded in storage (a new attempt must be above it).
    pub newest_attempt: u64,
    /// Snapshots newer than the restore point that were skipped, and why.
    pub skipped: Vec<String>,
}
