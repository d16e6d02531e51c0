//! One subtask of a job attempt on its own thread: reads its input channels (honouring barrier
//! alignment), runs its operator chain, snapshots when a barrier passes and hands the bytes to the
//! asynchronous upload queue (`upload.rs`), and applies checkpoint notifications from the coordinator.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Select, Sender};
use streamjob_checkpoint::layout::{SnapshotDir, SnapshotLayout};
use streamjob_checkpoint::manifest::SnapshotKind;

use crate::alignment::{AlignAction, BarrierAligner};
use crate::config::CheckpointingMode;
use crate::control::{CoordinatorEvent, TaskControl, TaskId};
use crate::coordinator::JobProgress;
use crate::operator::{BaseFile, OperatorContext, OperatorSnapshot, StateFileBody};
use crate::pipeline::{Pipeline, PipelineError};
use crate::restore::RestoreView;
use crate::types::{Barrier, EndOfStream, Message, SnapshotType, Timestamp, MIN_WATERMARK};
use crate::upload::{BaseRef, OperatorUpload, UploadJob, UploadQueue};
use crate::watermark_alignment::{AlignmentStats, SourceAlignment};

/// Why a task stopped before its input ended.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The operator chain failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The attempt was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// An upstream task vanished without ending its stream (it failed).
    #[error("an upstream task disappeared without ending its stream")]
    UpstreamLost,
}

/// Per-task counters, read by progress reporting and metrics (updated once per batch).
#[derive(Debug, Default)]
pub struct TaskMetrics {
    records: AtomicU64,
    /// Watermark alignment of an aligned source (untouched elsewhere).
    pub alignment: AlignmentStats,
}

impl TaskMetrics {
    /// Count records.
    pub fn add_records(&self, n: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
    }
    /// Records counted so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
}

/// Counts the tasks of this process that have not opened yet (restored their state); the last
/// one to open records when, in the attempt's progress (`restored_at`), if the attempt restores.
pub(crate) struct OpenLatch {
    waiting: AtomicUsize,
    restoring: bool,
    progress: Arc<Mutex<JobProgress>>,
}

impl OpenLatch {
    /// A latch for an attempt that restores a snapshot (`restoring`) or starts fresh.
    pub(crate) fn new(restoring: bool, progress: Arc<Mutex<JobProgress>>) -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            restoring,
            progress,
        }
    }

    /// One more task to wait for (all are counted before any starts).
    pub(crate) fn add(&self) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }

    /// A task opened.
    pub(crate) fn opened(&self) {
        if self.waiting.fetch_sub(1, Ordering::AcqRel) == 1 && self.restoring {
            if let Ok(mut progress) = self.progress.lock() {
                let now = std::time::Instant::now();
                progress.restored_at = Some(now);
                if let Some(started) = progress.attempt_started {
                    tracing::info!(
                        restore_ms = now.duration_since(started).as_millis() as u64,
                        "every task here has loaded its restored state"
                    );
                }
            }
        }
    }
}

/// What a task gets from the executor.
pub struct TaskEnv {
    /// Identity.
    pub id: TaskId,
    /// Operator context shared by the chain (operator id filled per operator).
    pub ctx: OperatorContext,
    /// Control messages from the coordinator.
    pub control: Receiver<TaskControl>,
    /// Events to the coordinator.
    pub events: Sender<CoordinatorEvent>,
    /// Set when the attempt is cancelled (unblocks full channels).
    pub cancelled: Arc<AtomicBool>,
    /// This subtask's view of the snapshot being restored (empty on a fresh start).
    pub restored: RestoreView,
    /// This task's upload queue.
    pub(crate) uploads: UploadQueue,
    /// Alignment mode.
    pub mode: CheckpointingMode,
    /// Records per batch.
    pub batch_size: usize,
    /// Counters.
    pub metrics: Arc<TaskMetrics>,
    /// Watermark alignment of a source subtask in an alignment group.
    pub alignment: Option<SourceAlignment>,
    /// Told when this task has opened (restored its state).
    pub(crate) opening: Arc<OpenLatch>,
}

impl TaskEnv {
    pub(crate) fn send_event(&self, event: CoordinatorEvent) {
        // The coordinator outlives every task of its attempt; a closed channel means it is gone already.
        let _ = self.events.send(event);
    }

    /// Serialize the snapshot now (the synchronous part, which began at `sync_started` when the
    /// task stopped processing for the barrier) and queue its upload; the upload queue
    /// acknowledges to the coordinator when the files are stored.
    pub(crate) fn upload(
        &self,
        barrier: Barrier,
        snapshots: Vec<(String, OperatorSnapshot)>,
        sync_started: std::time::Instant,
    ) {
        let task = self.id;
        let kind = match barrier.kind {
            SnapshotType::Checkpoint => SnapshotKind::Checkpoint,
            SnapshotType::Savepoint { .. } => SnapshotKind::Savepoint,
        };
        let attempt = self.ctx.attempt;
        let dir = SnapshotLayout::dir(kind, attempt, barrier.id);
        let started = std::time::Instant::now();
        let decline = |reason: String| {
            self.send_event(CoordinatorEvent::Declined {
                checkpoint_id: barrier.id,
                task,
                reason,
            })
        };
        let mut operators = Vec::with_capacity(snapshots.len());
        let mut encoded_bytes = 0;
        for (operator_id, mut snapshot) in snapshots {
            let file_in =
                |dir: &SnapshotDir| SnapshotLayout::state_file(dir, &operator_id, task.subtask);
            let mut base = Vec::with_capacity(snapshot.base.len());
            for file in std::mem::take(&mut snapshot.base) {
                match file {
                    BaseFile::Own(id) => {
                        match file_in(&SnapshotLayout::dir(SnapshotKind::Checkpoint, attempt, id)) {
                            Ok(key) => base.push(BaseRef::Uploaded(key)),
                            Err(e) => {
                                return decline(format!("invalid operator id {operator_id:?}: {e}"))
                            }
                        }
                    }
                    BaseFile::Adopted(file) => base.push(BaseRef::Adopted(file)),
                }
            }
            let own = if snapshot.writes_nothing() {
                None
            } else {
                let blobs = |groups: Vec<(u32, Vec<u8>)>| {
                    groups
                        .into_iter()
                        .map(|(kg, blob)| (kg, Bytes::from(blob))) // no copy
                        .collect()
                };
                let body = StateFileBody {
                    keyed: blobs(snapshot.keyed),
                    keyed_changes: blobs(snapshot.keyed_changes),
                    list: snapshot.list,
                };
                let key = match file_in(&dir) {
                    Ok(key) => key,
                    Err(e) => return decline(format!("invalid operator id {operator_id:?}: {e}")),
                };
                encoded_bytes += body.blob_bytes();
                // Laid out as a file by the upload queue, off this thread.
                Some((key, body))
            };
            operators.push(OperatorUpload {
                operator_id,
                base,
                own,
            });
        }
        tracing::debug!(
            task = %task,
            checkpoint_id = barrier.id,
            bytes = encoded_bytes,
            handover_us = started.elapsed().as_micros() as u64,
            "snapshot handed to the upload queue"
        );
        let job = UploadJob {
            checkpoint_id: barrier.id,
            is_checkpoint: kind == SnapshotKind::Checkpoint,
            task,
            key_groups: self.ctx.key_groups.clone(),
            operators,
            sync_micros: sync_started.elapsed().as_micros() as u64,
        };
        if let Err(reason) = self.uploads.push(job) {
            decline(reason);
        }
    }
}

/// Runs a non-source task until all inputs end (then waits for the last checkpoint's completion so
/// sinks commit) or the attempt is cancelled.
pub(crate) fn run_task<I: Send + 'static>(
    inputs: Vec<Receiver<Message<I>>>,
    mut pipeline: Box<dyn Pipeline<I>>,
    env: TaskEnv,
) -> Result<(), TaskError> {
    pipeline.open(&env.ctx, &env.restored)?;
    env.opening.opened();
    let channels = inputs.len();
    let mut aligner = BarrierAligner::new(channels, env.mode);
    let mut watermarks = vec![MIN_WATERMARK; channels];
    let mut current_watermark = MIN_WATERMARK;
    let mut last_barrier: Option<Barrier> = None;
    let mut ended: Option<EndOfStream> = None;
    let mut closed = vec![false; channels];
    let mut last_notified: Option<u64> = None;

    loop {
        if let Some(end) = ended {
            // All inputs ended: the final (or stop) checkpoint is in flight; wait for its outcome so a
            // sink commits, then finish.
            let Some(barrier) = last_barrier.filter(|b| b.is_final || b.kind.stops_job()) else {
                return Ok(());
            };
            if last_notified.is_some_and(|id| id >= barrier.id) {
                return Ok(());
            }
            match env.control.recv() {
                Ok(TaskControl::NotifyComplete(id)) => {
                    pipeline.notify_complete(id)?;
                    if id >= barrier.id {
                        return Ok(());
                    }
                }
                Ok(TaskControl::NotifyAborted(id)) => {
                    pipeline.notify_aborted(id);
                    if id >= barrier.id && end == EndOfStream::Stopped {
                        return Ok(());
                    }
                }
                Ok(TaskControl::Cancel) | Err(_) => return Err(TaskError::Cancelled),
                Ok(TaskControl::TriggerBarrier(_)) => {}
            }
            continue;
        }

        // Wait for a message on any unblocked input or the control channel.
        let mut select = Select::new();
        let mut map = Vec::with_capacity(channels);
        for (c, input) in inputs.iter().enumerate() {
            if !aligner.is_blocked(c) && !closed[c] {
                map.push(c);
                select.recv(input);
            }
        }
        let control_index = map.len();
        select.recv(&env.control);
        let op = select.select();
        let index = op.index();
        if index == control_index {
            let control = op.recv(&env.control).map_err(|_| TaskError::Cancelled)?;
            match control {
                TaskControl::NotifyComplete(id) => {
                    pipeline.notify_complete(id)?;
                    last_notified = Some(last_notified.map_or(id, |n| n.max(id)));
                }
                TaskControl::NotifyAborted(id) => pipeline.notify_aborted(id),
                TaskControl::Cancel => return Err(TaskError::Cancelled),
                TaskControl::TriggerBarrier(_) => {}
            }
            continue;
        }
        let channel = map[index];
        let message = op
            .recv(&inputs[channel])
            .map_err(|_| TaskError::UpstreamLost)?;
        match message {
            Message::Data(batch) => {
                env.metrics.add_records(batch.len() as u64);
                pipeline.batch(batch)?;
            }
            Message::Watermark(w) => {
                watermarks[channel] = watermarks[channel].max(w);
                let min = watermarks.iter().copied().min().unwrap_or(MIN_WATERMARK);
                if min > current_watermark {
                    current_watermark = min;
                    pipeline.watermark(min)?;
                }
            }
            Message::Barrier(barrier) => {
                if let AlignAction::Snapshot(b) = aligner.on_barrier(channel, barrier) {
                    snapshot(&mut pipeline, &env, b)?;
                    last_barrier = Some(b);
                }
            }
            Message::End(end) => {
                // A drained channel sent the MAX watermark before its end; a stopped one must not
                // advance event time. Either way it no longer holds back the others.
                closed[channel] = true;
                watermarks[channel] = Timestamp::MAX;
                if let AlignAction::Snapshot(b) = aligner.on_end(channel) {
                    snapshot(&mut pipeline, &env, b)?;
                    last_barrier = Some(b);
                }
                if aligner.all_ended() {
                    pipeline.end(end)?;
                    ended = Some(end);
                } else if end == EndOfStream::Drained {
                    let min = watermarks.iter().copied().min().unwrap_or(MIN_WATERMARK);
                    if min > current_watermark {
                        current_watermark = min;
                        pipeline.watermark(min)?;
                    }
                }
            }
        }
    }
}

fn snapshot<I>(
    pipeline: &mut Box<dyn Pipeline<I>>,
    env: &TaskEnv,
    barrier: Barrier,
) -> Result<(), TaskError> {
    let sync_started = std::time::Instant::now();
    let mut snapshots = Vec::new();
    pipeline.barrier(&barrier, &mut snapshots)?;
    env.upload(barrier, snapshots, sync_started);
    Ok(())
}
