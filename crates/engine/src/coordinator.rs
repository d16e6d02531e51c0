//! The checkpoint coordinator of one job attempt. `CheckpointScheduler` and `PendingCheckpoints` are
//! pure decisions (when to trigger, when a checkpoint is complete or timed out); `run_coordinator` is
//! the I/O edge: it sends triggers to sources, collects acknowledgements, writes the manifest
//! (create-if-absent, last), checks that no newer attempt fenced this one, and only then tells every
//! task that the checkpoint is complete so sinks commit.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use streamjob_checkpoint::attempts::newest_attempt;
use streamjob_checkpoint::catalog::{
    apply_retention, commit_manifest, delete_snapshot_dir, CatalogError,
};
use streamjob_checkpoint::layout::SnapshotLayout;
use streamjob_checkpoint::manifest::{Manifest, OperatorState, SnapshotKind, SubtaskState};
use streamjob_checkpoint::store::SnapshotStore;

use crate::config::CheckpointConfig;
use crate::control::{
    ControlSender, CoordinatorEvent, SnapshotRequest, TaskAck, TaskControl, TaskId,
};
use crate::types::{Barrier, SnapshotType};

/// Why an attempt ended badly, as seen by the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A task failed.
    #[error("task {task} failed: {reason}")]
    TaskFailed { task: TaskId, reason: String },
    /// Too many checkpoints failed in a row.
    #[error(
        "{failures} checkpoints failed in a row (tolerable: {tolerable}); last failure: {last}"
    )]
    TooManyCheckpointFailures {
        failures: u32,
        tolerable: u32,
        last: String,
    },
    /// A newer attempt exists: this one is a zombie and must stop without side effects.
    #[error("attempt {attempt} is fenced by newer attempt {newer}; stopping without committing")]
    Fenced { attempt: u64, newer: u64 },
    /// The job was cancelled from outside.
    #[error("job cancelled")]
    Cancelled,
    /// This worker runs part of the attempt and the coordinator (worker 0) ended it, or is gone.
    #[error("the job coordinator on worker 0 ended the attempt: {0}")]
    Coordinator(String),
}

/// A completed snapshot, as reported to status and progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompletedSnapshot {
    /// Checkpoint id.
    pub id: u64,
    /// Attempt.
    pub attempt: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotType,
    /// Full location of the snapshot directory.
    pub location: String,
    /// Bytes of state (every file the manifest lists).
    pub size_bytes: u64,
    /// Bytes this snapshot uploaded (less than `size_bytes` when incremental).
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Trigger to completion.
    pub duration: Duration,
    /// The longest synchronous part of any task (its processing stopped that long for the
    /// snapshot: state copied and encoded; the upload runs after, asynchronously), microseconds.
    #[serde(default)]
    pub sync_max_micros: u64,
    /// Completion time (unix ms).
    pub completed_at_ms: u64,
}

/// One completed snapshot's figures (for percentiles and `--stats-json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFigures {
    /// Trigger to completion.
    pub duration_ms: u64,
    /// Bytes of state (every file the manifest lists).
    pub size_bytes: u64,
    /// Bytes uploaded (less than `size_bytes` for incremental checkpoints).
    pub uploaded_bytes: u64,
    /// The longest time any task stopped processing for it (its synchronous part), µs.
    pub sync_max_micros: u64,
}

/// Live facts about a running attempt (progress display, control API, metrics).
#[derive(Debug, Default, Clone)]
pub struct JobProgress {
    /// Newest completed checkpoint.
    pub last_checkpoint: Option<CompletedSnapshot>,
    /// Newest completed savepoint.
    pub last_savepoint: Option<CompletedSnapshot>,
    /// Completed snapshots in this attempt.
    pub completed: u64,
    /// Failed or aborted checkpoints in this attempt.
    pub failed: u64,
    /// The figures of every completed snapshot of this attempt, in completion order.
    pub snapshots: Vec<SnapshotFigures>,
    /// When the attempt started, before the snapshot it restores (if any) was downloaded.
    pub attempt_started: Option<Instant>,
    /// When every task of this process had its restored state loaded (opened), in an attempt that
    /// restores a snapshot: `restored_at - attempt_started` is the whole restore (download,
    /// verify, decode, load into the operators).
    pub restored_at: Option<Instant>,
    /// When the coordinator started (the tasks run from here; the snapshot is downloaded, and the
    /// tasks load their state from it as they open).
    pub run_started: Option<Instant>,
    /// When every source had emitted its last record (bounded jobs).
    pub sources_finished: Option<Instant>,
    /// When the attempt ended well (after the final checkpoint and sink commit).
    pub run_ended: Option<Instant>,
    /// CPU time the process had used at `run_started` and at `run_ended` (every thread: tasks,
    /// coordinator, uploads), for CPU per event; `None` where the clock cannot be read.
    pub run_started_cpu: Option<Duration>,
    /// See `run_started_cpu`.
    pub run_ended_cpu: Option<Duration>,
}

/// CPU time this process has used so far (all threads), if the clock can be read.
pub fn process_cpu_time() -> Option<Duration> {
    cpu_time::ProcessTime::try_now()
        .ok()
        .map(|t| t.as_duration())
}

/// Decides when the next periodic checkpoint starts (pure).
#[derive(Debug, Clone)]
pub struct CheckpointScheduler {
    config: CheckpointConfig,
    last_trigger: Option<Instant>,
    last_completion: Option<Instant>,
    started: Instant,
}

impl CheckpointScheduler {
    /// A scheduler that starts counting at `now`.
    pub fn new(config: CheckpointConfig, now: Instant) -> Self {
        Self {
            config,
            last_trigger: None,
            last_completion: None,
            started: now,
        }
    }
    /// When the next periodic checkpoint may start, given `in_flight` checkpoints; `None` when
    /// periodic checkpoints are off or `max_concurrent` are in flight.
    pub fn next_trigger_at(&self, in_flight: usize) -> Option<Instant> {
        let interval = self.config.interval?;
        if in_flight >= self.config.max_concurrent {
            return None;
        }
        let by_interval = self.last_trigger.unwrap_or(self.started) + interval;
        let by_pause = self.last_completion.map(|c| c + self.config.min_pause);
        Some(match by_pause {
            Some(p) if p > by_interval => p,
            _ => by_interval,
        })
    }
    /// A checkpoint was triggered at `now`.
    pub fn triggered(&mut self, now: Instant) {
        self.last_trigger = Some(now);
    }
    /// A checkpoint ended (completed or failed) at `now`.
    pub fn ended(&mut self, now: Instant) {
        self.last_completion = Some(now);
    }
}

/// A checkpoint waiting for acknowledgements.
#[derive(Debug)]
pub struct PendingCheckpoint {
    /// The barrier.
    pub barrier: Barrier,
    /// When it was triggered.
    pub started: Instant,
    /// Wall-clock trigger time (unix ms).
    pub started_ms: u64,
    /// Acks so far.
    pub acks: Vec<TaskAck>,
    /// Tasks that still have to acknowledge.
    pub waiting: HashSet<TaskId>,
    /// Who asked for it (savepoints, on-demand checkpoints).
    pub requesters: Vec<Sender<Result<CompletedSnapshot, String>>>,
}

/// Outcome of an acknowledgement.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// More acks are needed.
    Waiting,
    /// Every task acknowledged: write the manifest.
    AllAcknowledged,
    /// The checkpoint is not pending (aborted or unknown): ignore.
    Unknown,
}

/// Checkpoints in flight (pure bookkeeping).
#[derive(Debug, Default)]
pub struct PendingCheckpoints {
    pending: BTreeMap<u64, PendingCheckpoint>,
}

impl PendingCheckpoints {
    /// Start tracking a checkpoint that every task in `tasks` must acknowledge.
    pub fn start(&mut self, barrier: Barrier, tasks: &[TaskId], now: Instant, now_ms: u64) {
        self.pending.insert(
            barrier.id,
            PendingCheckpoint {
                barrier,
                started: now,
                started_ms: now_ms,
                acks: Vec::new(),
                waiting: tasks.iter().copied().collect(),
                requesters: Vec::new(),
            },
        );
    }
    /// Number in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }
    /// True when none is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
    /// Attach a requester to a pending checkpoint.
    pub fn add_requester(&mut self, id: u64, reply: Sender<Result<CompletedSnapshot, String>>) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.requesters.push(reply);
        }
    }
    /// Record an acknowledgement.
    pub fn ack(&mut self, ack: TaskAck) -> AckOutcome {
        let Some(p) = self.pending.get_mut(&ack.checkpoint_id) else {
            return AckOutcome::Unknown;
        };
        if !p.waiting.remove(&ack.task) {
            return AckOutcome::Unknown;
        }
        p.acks.push(ack);
        if p.waiting.is_empty() {
            AckOutcome::AllAcknowledged
        } else {
            AckOutcome::Waiting
        }
    }
    /// Remove and return a checkpoint.
    pub fn take(&mut self, id: u64) -> Option<PendingCheckpoint> {
        self.pending.remove(&id)
    }
    /// Ids of checkpoints older than `timeout` at `now`.
    pub fn timed_out(&self, now: Instant, timeout: Duration) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) >= timeout)
            .map(|(&id, _)| id)
            .collect()
    }
    /// Earliest deadline among pending checkpoints.
    pub fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.pending.values().map(|p| p.started + timeout).min()
    }
    /// Every pending id.
    pub fn ids(&self) -> Vec<u64> {
        self.pending.keys().copied().collect()
    }
}

/// Assemble the manifest of a fully acknowledged checkpoint (pure).
pub fn build_manifest(
    job_name: &str,
    attempt: u64,
    parallelism: u32,
    max_parallelism: u32,
    pending: &PendingCheckpoint,
    now_ms: u64,
) -> Manifest {
    let kind = match pending.barrier.kind {
        SnapshotType::Checkpoint => SnapshotKind::Checkpoint,
        SnapshotType::Savepoint { .. } => SnapshotKind::Savepoint,
    };
    let mut manifest = Manifest::new(kind, attempt, pending.barrier.id, job_name);
    manifest.created_at_ms = pending.started_ms;
    manifest.duration_ms = now_ms.saturating_sub(pending.started_ms);
    manifest.parallelism = parallelism;
    manifest.max_parallelism = max_parallelism;
    let mut by_operator: BTreeMap<String, Vec<SubtaskState>> = BTreeMap::new();
    let mut acks: Vec<&TaskAck> = pending.acks.iter().collect();
    acks.sort_by_key(|a| a.task);
    for ack in acks {
        // An incremental snapshot lists several files per operator, oldest first: keep them
        // together, in order, under one subtask entry.
        for (operator_id, file) in &ack.files {
            let subtasks = by_operator.entry(operator_id.clone()).or_default();
            match subtasks.last_mut() {
                Some(last) if last.subtask == ack.task.subtask => last.files.push(file.clone()),
                _ => subtasks.push(SubtaskState {
                    subtask: ack.task.subtask,
                    key_group_start: ack.key_groups.start,
                    key_group_end: ack.key_groups.end,
                    files: vec![file.clone()],
                }),
            }
        }
    }
    manifest.operators = by_operator
        .into_iter()
        .map(|(operator_id, subtasks)| OperatorState {
            operator_id,
            subtasks,
        })
        .collect();
    if pending.barrier.is_final {
        manifest.metadata.insert("final".into(), "true".into());
    }
    manifest
}

/// Fixed facts of the attempt the coordinator serves.
pub struct CoordinatorSetup {
    /// Job name.
    pub job_name: String,
    /// Attempt number.
    pub attempt: u64,
    /// First checkpoint id of this attempt.
    pub first_checkpoint_id: u64,
    /// Parallelism.
    pub parallelism: u32,
    /// Key groups.
    pub max_parallelism: u32,
    /// Schedule and limits.
    pub config: CheckpointConfig,
    /// Every task (all must acknowledge).
    pub tasks: Vec<TaskId>,
    /// Source tasks (they receive triggers).
    pub sources: Vec<TaskId>,
    /// Control channel of each task.
    pub controls: Vec<(TaskId, ControlSender)>,
    /// Snapshot storage (job root).
    pub store: Arc<dyn SnapshotStore>,
    /// Runtime for storage I/O.
    pub runtime: tokio::runtime::Handle,
    /// Shared progress.
    pub progress: Arc<Mutex<JobProgress>>,
}

/// How the attempt ended, from the coordinator's point of view.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AttemptEnd {
    /// Bounded input fully processed and committed.
    Finished,
    /// Stopped with a savepoint.
    Stopped(CompletedSnapshot),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Consecutive checkpoint failures against `tolerable_failures` (pure).
#[derive(Debug)]
struct FailureBudget {
    consecutive: u32,
    tolerable: u32,
}

impl FailureBudget {
    /// A checkpoint failed: Err once more than `tolerable` failed in a row.
    fn failed(&mut self, reason: String) -> Result<(), CoordinatorError> {
        self.consecutive += 1;
        if self.consecutive > self.tolerable {
            return Err(CoordinatorError::TooManyCheckpointFailures {
                failures: self.consecutive,
                tolerable: self.tolerable,
                last: reason,
            });
        }
        Ok(())
    }
    /// A checkpoint completed.
    fn succeeded(&mut self) {
        self.consecutive = 0;
    }
}

/// Runs the coordinator until every task finished (Ok) or the attempt fails (Err).
pub fn run_coordinator(
    setup: CoordinatorSetup,
    events: Receiver<CoordinatorEvent>,
) -> Result<AttemptEnd, CoordinatorError> {
    let mut scheduler = CheckpointScheduler::new(setup.config.clone(), Instant::now());
    let mut pending = PendingCheckpoints::default();
    let mut next_id = setup.first_checkpoint_id;
    let mut finished_sources: HashSet<TaskId> = HashSet::new();
    let mut finished_tasks: HashSet<TaskId> = HashSet::new();
    let mut final_triggered: Option<u64> = None;
    let mut stop_savepoint: Option<CompletedSnapshot> = None;
    let mut budget = FailureBudget {
        consecutive: 0,
        tolerable: setup.config.tolerable_failures,
    };
    let send_all = |message: TaskControl| {
        for (_, control) in &setup.controls {
            let _ = control.send(message.clone());
        }
    };
    let trigger = |barrier: Barrier| {
        for (task, control) in &setup.controls {
            if setup.sources.contains(task) {
                let _ = control.send(TaskControl::TriggerBarrier(barrier));
            }
        }
    };
    let fail = |error: CoordinatorError| {
        send_all(TaskControl::Cancel);
        Err(error)
    };

    if let Ok(mut progress) = setup.progress.lock() {
        progress.run_started = Some(Instant::now());
        progress.run_started_cpu = process_cpu_time();
    }
    loop {
        if finished_tasks.len() == setup.tasks.len() {
            if let Ok(mut progress) = setup.progress.lock() {
                progress.run_ended = Some(Instant::now());
                progress.run_ended_cpu = process_cpu_time();
            }
            return Ok(match stop_savepoint {
                Some(s) => AttemptEnd::Stopped(s),
                None => AttemptEnd::Finished,
            });
        }
        let now = Instant::now();
        // Decide whether a checkpoint starts now: the final one once every source finished, else
        // a periodic one (not while sources are finishing).
        let all_sources_done = finished_sources.len() == setup.sources.len();
        let start_now = if all_sources_done {
            (final_triggered.is_none() && pending.is_empty()).then_some(true)
        } else {
            (finished_sources.is_empty()
                && scheduler
                    .next_trigger_at(pending.len())
                    .is_some_and(|t| t <= now))
            .then_some(false)
        };
        if let Some(is_final) = start_now {
            let barrier = Barrier {
                id: next_id,
                kind: SnapshotType::Checkpoint,
                is_final,
            };
            next_id += 1;
            pending.start(barrier, &setup.tasks, now, now_ms());
            scheduler.triggered(now);
            if is_final {
                final_triggered = Some(barrier.id);
                tracing::info!(
                    checkpoint_id = barrier.id,
                    "all sources finished: final checkpoint triggered"
                );
            } else {
                tracing::debug!(checkpoint_id = barrier.id, "checkpoint triggered");
            }
            trigger(barrier);
        }
        // Timeouts.
        for id in pending.timed_out(now, setup.config.timeout) {
            if let Some(p) = pending.take(id) {
                let reason = format!("checkpoint {id} timed out after {:?}", setup.config.timeout);
                abort(&setup, p, &reason, &send_all);
                scheduler.ended(now);
                if final_triggered == Some(id) {
                    final_triggered = None;
                }
                if let Err(e) = budget.failed(reason) {
                    return fail(e);
                }
            }
        }
        // Wait for the next event or deadline.
        let mut deadline = now + Duration::from_millis(500);
        if let Some(t) = scheduler.next_trigger_at(pending.len()) {
            deadline = deadline.min(t.max(now));
        }
        if let Some(t) = pending.next_deadline(setup.config.timeout) {
            deadline = deadline.min(t.max(now));
        }
        let event = match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return fail(CoordinatorError::Cancelled),
        };
        match event {
            CoordinatorEvent::Ack(ack) => {
                let id = ack.checkpoint_id;
                if pending.ack(ack) == AckOutcome::AllAcknowledged {
                    let p = pending
                        .take(id)
                        .expect("acknowledged checkpoint is pending");
                    match complete(&setup, p, &send_all) {
                        Ok(done) => {
                            budget.succeeded();
                            scheduler.ended(Instant::now());
                            if done.kind.stops_job() {
                                stop_savepoint = Some(done);
                            }
                        }
                        Err(CompleteError::Fenced(newer)) => {
                            return fail(CoordinatorError::Fenced {
                                attempt: setup.attempt,
                                newer,
                            })
                        }
                        Err(CompleteError::Failed(reason)) => {
                            scheduler.ended(Instant::now());
                            if final_triggered == Some(id) {
                                final_triggered = None;
                            }
                            if let Err(e) = budget.failed(reason) {
                                return fail(e);
                            }
                        }
                    }
                }
            }
            CoordinatorEvent::Declined {
                checkpoint_id,
                task,
                reason,
            } => {
                if let Some(p) = pending.take(checkpoint_id) {
                    let reason =
                        format!("task {task} declined checkpoint {checkpoint_id}: {reason}");
                    abort(&setup, p, &reason, &send_all);
                    scheduler.ended(Instant::now());
                    if final_triggered == Some(checkpoint_id) {
                        final_triggered = None;
                    }
                    if let Err(e) = budget.failed(reason) {
                        return fail(e);
                    }
                }
            }
            CoordinatorEvent::SourceFinished(task) => {
                finished_sources.insert(task);
                if finished_sources.len() == setup.sources.len() {
                    if let Ok(mut progress) = setup.progress.lock() {
                        progress.sources_finished = Some(Instant::now());
                    }
                }
            }
            CoordinatorEvent::TaskFinished(task) => {
                finished_tasks.insert(task);
            }
            CoordinatorEvent::TaskFailed { task, reason } => {
                return fail(CoordinatorError::TaskFailed { task, reason });
            }
            CoordinatorEvent::Request(SnapshotRequest { kind, reply }) => {
                if !finished_sources.is_empty() {
                    let _ = reply.send(Err(
                        "the job is finishing; no new snapshots are taken".into()
                    ));
                    continue;
                }
                let barrier = Barrier {
                    id: next_id,
                    kind,
                    is_final: false,
                };
                next_id += 1;
                pending.start(barrier, &setup.tasks, Instant::now(), now_ms());
                pending.add_requester(barrier.id, reply);
                tracing::info!(checkpoint_id = barrier.id, ?kind, "snapshot requested");
                trigger(barrier);
            }
        }
    }
}

enum CompleteError {
    Fenced(u64),
    Failed(String),
}

fn complete(
    setup: &CoordinatorSetup,
    p: PendingCheckpoint,
    send_all: &dyn Fn(TaskControl),
) -> Result<CompletedSnapshot, CompleteError> {
    let manifest = build_manifest(
        &setup.job_name,
        setup.attempt,
        setup.parallelism,
        setup.max_parallelism,
        &p,
        now_ms(),
    );
    let store = Arc::clone(&setup.store);
    let written = setup.runtime.block_on(async {
        let dir = commit_manifest(store.as_ref(), &manifest).await?;
        // Fencing: the manifest is written; a newer attempt that exists now may not have seen it, so
        // this attempt must not commit side effects for it.
        let newest = newest_attempt(store.as_ref()).await?;
        Ok::<_, CatalogError>((dir, newest))
    });
    let (dir, newest) = match written {
        Ok(v) => v,
        Err(CatalogError::Fenced { newest, .. }) => {
            for r in &p.requesters {
                let _ = r.send(Err(format!(
                    "attempt {} was fenced by attempt {newest}",
                    setup.attempt
                )));
            }
            return Err(CompleteError::Fenced(newest));
        }
        Err(e) => {
            let reason = format!(
                "failed to write the manifest of checkpoint {}: {e}",
                p.barrier.id
            );
            abort(setup, p, &reason, send_all);
            return Err(CompleteError::Failed(reason));
        }
    };
    if let Some(newer) = newest.filter(|&n| n > setup.attempt) {
        for r in &p.requesters {
            let _ = r.send(Err(format!(
                "attempt {} was fenced by attempt {newer}",
                setup.attempt
            )));
        }
        return Err(CompleteError::Fenced(newer));
    }
    let done = CompletedSnapshot {
        id: p.barrier.id,
        attempt: setup.attempt,
        kind: p.barrier.kind,
        location: setup.store.location(&dir.path()),
        size_bytes: manifest.total_size(),
        uploaded_bytes: p.acks.iter().map(|a| a.bytes).sum(),
        duration: p.started.elapsed(),
        sync_max_micros: p.acks.iter().map(|a| a.sync_micros).max().unwrap_or(0),
        completed_at_ms: now_ms(),
    };
    tracing::info!(
        checkpoint_id = done.id,
        kind = ?done.kind,
        bytes = done.size_bytes,
        uploaded_bytes = done.uploaded_bytes,
        duration_ms = done.duration.as_millis() as u64,
        sync_max_us = done.sync_max_micros,
        location = %done.location,
        "snapshot complete"
    );
    send_all(TaskControl::NotifyComplete(done.id));
    if let Ok(mut progress) = setup.progress.lock() {
        progress.completed += 1;
        progress.snapshots.push(SnapshotFigures {
            duration_ms: done.duration.as_millis() as u64,
            size_bytes: done.size_bytes,
            uploaded_bytes: done.uploaded_bytes,
            sync_max_micros: done.sync_max_micros,
        });
        match done.kind {
            SnapshotType::Checkpoint => progress.last_checkpoint = Some(done.clone()),
            SnapshotType::Savepoint { .. } => progress.last_savepoint = Some(done.clone()),
        }
    }
    for r in &p.requesters {
        let _ = r.send(Ok(done.clone()));
    }
    if matches!(done.kind, SnapshotType::Checkpoint) {
        let store = Arc::clone(&setup.store);
        let retained = setup.config.retained;
        setup.runtime.spawn(async move {
            if let Err(e) = apply_retention(store.as_ref(), retained, &BTreeSet::new(), &BTreeSet::new()).await {
                tracing::warn!(error = %e, "checkpoint retention failed; old checkpoints stay until the next run");
            }
        });
    }
    Ok(done)
}

fn abort(
    setup: &CoordinatorSetup,
    p: PendingCheckpoint,
    reason: &str,
    send_all: &dyn Fn(TaskControl),
) {
    tracing::warn!(checkpoint_id = p.barrier.id, reason, "checkpoint aborted");
    if let Ok(mut progress) = setup.progress.lock() {
        progress.failed += 1;
    }
    send_all(TaskControl::NotifyAborted(p.barrier.id));
    for r in &p.requesters {
        let _ = r.send(Err(reason.to_string()));
    }
    let kind = match p.barrier.kind {
        SnapshotType::Checkpoint => SnapshotKind::Checkpoint,
        SnapshotType::Savepoint { .. } => SnapshotKind::Savepoint,
    };
    if setup.config.incremental && kind == SnapshotKind::Checkpoint {
        // Later incremental checkpoints may reference files this one uploaded (tasks build on
        // their own last snapshot); retention deletes the folder once nothing references it.
        return;
    }
    let dir = SnapshotLayout::dir(kind, setup.attempt, p.barrier.id).path();
    let store = Arc::clone(&setup.store);
    setup.runtime.spawn(async move {
        // Uploads still in flight may land after this; retention removes such leftovers later.
        if let Err(e) = delete_snapshot_dir(store.as_ref(), &dir).await {
            tracing::warn!(error = %e, dir, "failed to delete an aborted checkpoint's files");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(interval_ms: u64, min_pause_ms: u64, max_concurrent: usize) -> CheckpointConfig {
        CheckpointConfig::enabled(Duration::from_millis(interval_ms))
            .with_min_pause(Duration::from_millis(min_pause_ms))
            .with_max_concurrent(max_concurrent)
    }

    #[test]
    fn scheduler_respects_interval_min_pause_and_max_concurrent() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = CheckpointScheduler::new(config(1000, 0, 1), t0);
        assert_eq!(s.next_trigger_at(0), Some(t0 + ms(1000)));
        assert_eq!(s.next_trigger_at(1), None, "max concurrent reached");
        s.triggered(t0 + ms(1000));
        assert_eq!(s.next_trigger_at(0), Some(t0 + ms(2000)));

        let mut s = CheckpointScheduler::new(config(1000, 800, 2), t0);
        s.triggered(t0 + ms(1000));
        assert_eq!(
            s.next_trigger_at(1),
            Some(t0 + ms(2000)),
            "second concurrent allowed"
        );
        s.ended(t0 + ms(1900));
        assert_eq!(
            s.next_trigger_at(0),
            Some(t0 + ms(2700)),
            "min pause after completion wins"
        );
        assert_eq!(
            CheckpointScheduler::new(CheckpointConfig::disabled(), t0).next_trigger_at(0),
            None
        );
    }

    fn ack(id: u64, vertex: u32, subtask: u32) -> TaskAck {
        TaskAck {
            checkpoint_id: id,
            task: TaskId { vertex, subtask },
            key_groups: 0..4,
            files: vec![(
                format!("op{vertex}"),
                streamjob_checkpoint::manifest::FileRef {
                    key: format!("checkpoints/000001-{id:010}/op{vertex}/{subtask:04}.state"),
                    size: 10,
                    crc32c: 1,
                    contents: None,
                },
            )],
            bytes: 10,
            sync_micros: 0,
        }
    }

    #[test]
    fn pending_completes_only_with_every_ack_and_times_out() {
        let t0 = Instant::now();
        let tasks = [
            TaskId {
                vertex: 0,
                subtask: 0,
            },
            TaskId {
                vertex: 1,
                subtask: 0,
            },
        ];
        let barrier = Barrier {
            id: 7,
            kind: SnapshotType::Checkpoint,
            is_final: false,
        };
        let mut p = PendingCheckpoints::default();
        p.start(barrier, &tasks, t0, 0);
        assert_eq!(p.ack(ack(7, 0, 0)), AckOutcome::Waiting);
        assert_eq!(
            p.ack(ack(7, 0, 0)),
            AckOutcome::Unknown,
            "duplicate ack ignored"
        );
        assert_eq!(
            p.ack(ack(8, 1, 0)),
            AckOutcome::Unknown,
            "unknown checkpoint"
        );
        assert!(p
            .timed_out(t0 + Duration::from_secs(1), Duration::from_secs(2))
            .is_empty());
        assert_eq!(
            p.timed_out(t0 + Duration::from_secs(3), Duration::from_secs(2)),
            vec![7]
        );
        assert_eq!(p.ack(ack(7, 1, 0)), AckOutcome::AllAcknowledged);
        let done = p.take(7).unwrap();
        let manifest = build_manifest("job", 1, 1, 4, &done, 5);
        assert_eq!(manifest.checkpoint_id, 7);
        assert_eq!(manifest.operators.len(), 2);
        assert_eq!(manifest.total_size(), 20);
        assert!(p.is_empty());
    }
}
