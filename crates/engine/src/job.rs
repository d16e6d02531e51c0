//! Runs one attempt of a job graph: loads the snapshot to restore (verified), starts the checkpoint
//! coordinator and one thread per subtask, and reports how the attempt ended. A task that fails or
//! panics fails the attempt; the caller (local mode, or the operator for worker pods) restarts it.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, Sender};
use streamjob_checkpoint::manifest::Manifest;
use streamjob_checkpoint::store::SnapshotStore;

use crate::control::{ControlSender, CoordinatorEvent, SnapshotRequest, TaskId};
use crate::coordinator::{
    run_coordinator, AttemptEnd, CompletedSnapshot, CoordinatorError, CoordinatorSetup, JobProgress,
};
use crate::keygroup::key_groups_of_subtasks;
use crate::operator::OperatorContext;
use crate::restore::{DownloadSummary, RestoreData, RestoreError, RestoreScope, RestoreView};
use crate::stream::JobGraph;
use crate::task::{OpenLatch, TaskEnv, TaskError, TaskMetrics};
use crate::types::SnapshotType;
use crate::upload::UploadQueue;
use crate::watermark_alignment::{AlignmentHub, AlignmentSummary};

/// Why an attempt could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The snapshot to restore is unusable.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The attempt failed while running.
    #[error(transparent)]
    Failed(#[from] CoordinatorError),
    /// A thread could not be started.
    #[error("failed to start a task thread: {0}")]
    Spawn(std::io::Error),
    /// This worker's part of a multi-worker attempt could not start.
    #[error("cannot run this worker's part of the attempt: {0}")]
    Cluster(String),
}

/// What an attempt starts from.
pub struct AttemptSpec {
    /// Attempt number (already recorded in storage by the caller).
    pub attempt: u64,
    /// Snapshot storage of the job.
    pub store: Arc<dyn SnapshotStore>,
    /// Snapshot to restore: its manifest and location.
    pub restore: Option<(Manifest, String)>,
    /// Drop state of operators the job no longer has instead of failing.
    pub allow_non_restored_state: bool,
}

/// A cloneable remote control of a running attempt (for a control API or a monitor thread).
#[derive(Clone)]
pub struct JobController {
    events: Sender<CoordinatorEvent>,
    progress: Arc<Mutex<JobProgress>>,
    metrics: Arc<Vec<(TaskId, bool, Arc<TaskMetrics>)>>,
}

impl JobController {
    /// Ask for a snapshot now; the receiver gets its outcome.
    pub fn request_snapshot(
        &self,
        kind: SnapshotType,
    ) -> Receiver<Result<CompletedSnapshot, String>> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        if self
            .events
            .send(CoordinatorEvent::Request(SnapshotRequest {
                kind,
                reply: reply.clone(),
            }))
            .is_err()
        {
            let _ = reply.send(Err("the job is not running".into()));
        }
        rx
    }
    /// Records read by the sources so far.
    pub fn source_records(&self) -> u64 {
        self.metrics
            .iter()
            .filter(|(_, source, _)| *source)
            .map(|(_, _, m)| m.records())
            .sum()
    }
    /// Records processed by all tasks so far.
    pub fn all_records(&self) -> u64 {
        self.metrics.iter().map(|(_, _, m)| m.records()).sum()
    }
    /// Live checkpoint facts.
    pub fn progress(&self) -> JobProgress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }
    /// What watermark alignment did to the source subtasks of this process.
    pub fn alignment(&self) -> AlignmentSummary {
        self.metrics.iter().filter(|(_, source, _)| *source).fold(
            AlignmentSummary::default(),
            |sum, (_, _, m)| AlignmentSummary {
                pauses: sum.pauses + m.alignment.pauses(),
                max_drift_ms: sum.max_drift_ms.max(m.alignment.max_drift_ms()),
            },
        )
    }
}

/// A running attempt.
pub struct JobHandle {
    controller: JobController,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
    coordinator: JoinHandle<Result<AttemptEnd, CoordinatorError>>,
    tasks: Vec<JoinHandle<()>>,
    restore_download: Option<DownloadSummary>,
}

impl JobHandle {
    /// A cloneable control of this attempt.
    pub fn controller(&self) -> JobController {
        self.controller.clone()
    }
    /// Ask for a snapshot now; the receiver gets its outcome.
    pub fn request_snapshot(
        &self,
        kind: SnapshotType,
    ) -> Receiver<Result<CompletedSnapshot, String>> {
        self.controller.request_snapshot(kind)
    }
    /// Records read by the sources so far.
    pub fn source_records(&self) -> u64 {
        self.controller.source_records()
    }
    /// Live checkpoint facts.
    pub fn progress(&self) -> JobProgress {
        self.controller.progress()
    }
    /// True once the attempt ended.
    pub fn is_finished(&self) -> bool {
        self.coordinator.is_finished()
    }
    /// Stop the attempt without a snapshot.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        let _ = self.controller.events.send(CoordinatorEvent::TaskFailed {
            task: TaskId {
                vertex: u32::MAX,
                subtask: 0,
            },
            reason: "cancelled by the user".into(),
        });
    }
    /// How much of the restored snapshot this process downloaded (`None`: nothing restored).
    pub fn restore_download(&self) -> Option<DownloadSummary> {
        self.restore_download
    }
    /// Wait for the attempt to end.
    pub fn join(self) -> Result<AttemptEnd, JobError> {
        let result = self.coordinator.join().unwrap_or_else(|_| {
            Err(CoordinatorError::TaskFailed {
                task: TaskId {
                    vertex: u32::MAX,
                    subtask: 0,
                },
                reason: "the checkpoint coordinator panicked".into(),
            })
        });
        if result.is_err() {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        for task in self.tasks {
            let _ = task.join();
        }
        Ok(result?)
    }
}

/// Start one attempt of `graph`. Blocks while the snapshot to restore is downloaded and verified.
pub fn start(
    graph: JobGraph,
    spec: AttemptSpec,
    runtime: &tokio::runtime::Handle,
) -> Result<JobHandle, JobError> {
    let attempt_started = Instant::now();
    let config = graph.config.clone();
    let p = config.parallelism;
    // Which subtasks run in this process: all of them, or this worker's block of a cluster.
    let placement = match &graph.cluster {
        Some(cluster) => Some((
            cluster.clone(),
            cluster.placement(p).map_err(JobError::Cluster)?,
        )),
        None => None,
    };
    // The key groups of those subtasks: a restore downloads only the files holding them.
    let scope = match &placement {
        Some((cluster, pl)) => RestoreScope {
            key_groups: key_groups_of_subtasks(
                pl.subtasks_of(cluster.worker()),
                config.max_parallelism,
                p,
            ),
        },
        None => RestoreScope::everything(config.max_parallelism),
    };
    let restore_data = match &spec.restore {
        Some((manifest, location)) => {
            let data = runtime.block_on(RestoreData::load(
                Arc::clone(&spec.store),
                manifest,
                location,
                scope.clone(),
            ))?;
            data.check_compatible(
                &graph.operator_ids,
                config.max_parallelism,
                manifest,
                location,
                spec.allow_non_restored_state,
            )?;
            Some(Arc::new(data))
        }
        None => None,
    };
    let first_checkpoint_id = spec
        .restore
        .as_ref()
        .map_or(1, |(m, _)| m.checkpoint_id + 1);
    let (events_tx, events_rx) = unbounded();
    let progress = Arc::new(Mutex::new(JobProgress {
        attempt_started: Some(attempt_started),
        ..JobProgress::default()
    }));
    let opening = Arc::new(OpenLatch::new(
        restore_data.is_some(),
        Arc::clone(&progress),
    ));
    let worker_of = |subtask: u32| {
        placement
            .as_ref()
            .map_or(0, |(_, pl)| pl.worker_of(subtask))
    };
    let this_worker = placement.as_ref().map_or(0, |(c, _)| c.worker());

    // Watermark alignment: a slot per aligned source subtask of the whole job (all workers).
    let hub = Arc::new(AlignmentHub::new(
        graph
            .vertices
            .iter()
            .enumerate()
            .filter_map(|(v, vertex)| {
                let alignment = vertex.alignment.clone().filter(|_| vertex.is_source)?;
                let tasks = (0..vertex.bodies.len() as u32)
                    .map(|subtask| TaskId {
                        vertex: v as u32,
                        subtask,
                    })
                    .collect();
                Some((alignment, tasks))
            })
            .collect(),
    ));

    let mut controls = Vec::new();
    let mut local_controls = HashMap::new();
    let mut remote_tasks = Vec::new();
    let mut all = Vec::new();
    let mut sources = Vec::new();
    let mut metrics = Vec::new();
    let mut envs = Vec::new();
    for (v, vertex) in graph.vertices.into_iter().enumerate() {
        for (s, body) in vertex.bodies.into_iter().enumerate() {
            let id = TaskId {
                vertex: v as u32,
                subtask: s as u32,
            };
            all.push(id);
            if vertex.is_source {
                sources.push(id);
            }
            let worker = worker_of(s as u32);
            if worker != this_worker {
                // Runs on another worker: the coordinator reaches it over that worker's link.
                remote_tasks.push((id, worker));
                continue;
            }
            let (control_tx, control_rx) = unbounded();
            let task_metrics = Arc::new(TaskMetrics::default());
            let ctx = OperatorContext {
                incremental: config.checkpoints.incremental,
                ..OperatorContext::new(
                    config.name.clone(),
                    String::new(),
                    s as u32,
                    p,
                    config.max_parallelism,
                )
                .in_attempt(
                    spec.attempt,
                    spec.restore.as_ref().map(|(m, _)| m.checkpoint_id),
                )
            };
            let key_groups = ctx.key_groups.clone();
            let env = TaskEnv {
                id,
                ctx,
                control: control_rx,
                events: events_tx.clone(),
                cancelled: Arc::clone(&graph.cancelled),
                restored: match &restore_data {
                    Some(d) => RestoreView::new(Arc::clone(d), s as u32, p, key_groups)?,
                    None => RestoreView::empty(),
                },
                uploads: UploadQueue::start(
                    Arc::clone(&spec.store),
                    runtime,
                    events_tx.clone(),
                    config.checkpoints.compression,
                ),
                mode: config.checkpoints.mode,
                batch_size: config.batch_size,
                metrics: Arc::clone(&task_metrics),
                alignment: hub.source(id),
                opening: Arc::clone(&opening),
            };
            opening.add(); // before any task starts (they start after this loop)
            controls.push((id, ControlSender::Local(control_tx.clone())));
            local_controls.insert(id, control_tx);
            metrics.push((id, vertex.is_source, task_metrics));
            envs.push((format!("{}#{}", vertex.name, s), body, env));
        }
    }

    let coordinator = match placement {
        // Another worker's part: the coordinator on worker 0 drives it over the control link.
        Some((cluster, _)) if !cluster.is_coordinator() => {
            let ended = cluster
                .start_member_links(
                    local_controls,
                    events_rx,
                    Arc::clone(&graph.cancelled),
                    Arc::clone(&hub),
                )
                .map_err(|e| JobError::Cluster(e.to_string()))?;
            let cancelled = Arc::clone(&graph.cancelled);
            std::thread::Builder::new()
                .name("coordinator-link".into())
                .spawn(move || wait_for_coordinator(&ended, &cancelled))
                .map_err(JobError::Spawn)?
        }
        placement => {
            let links = match &placement {
                Some((cluster, _)) => {
                    let (remote, links) = cluster
                        .start_coordinator_links(&remote_tasks, &events_tx, Arc::clone(&hub))
                        .map_err(|e| JobError::Cluster(e.to_string()))?;
                    controls.extend(remote);
                    Some(links)
                }
                None => None,
            };
            let setup = CoordinatorSetup {
                job_name: config.name.clone(),
                attempt: spec.attempt,
                first_checkpoint_id,
                parallelism: p,
                max_parallelism: config.max_parallelism,
                config: config.checkpoints.clone(),
                tasks: all,
                sources,
                controls,
                store: Arc::clone(&spec.store),
                runtime: runtime.clone(),
                progress: Arc::clone(&progress),
            };
            std::thread::Builder::new()
                .name("coordinator".into())
                .spawn(move || {
                    let result = run_coordinator(setup, events_rx);
                    if let Some(links) = links {
                        links.end_attempt(&result);
                    }
                    result
                })
                .map_err(JobError::Spawn)?
        }
    };

    let mut tasks = Vec::new();
    for (name, body, env) in envs {
        let events = env.events.clone();
        let id = env.id;
        let handle = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                let outcome = catch_unwind(AssertUnwindSafe(|| body(env)));
                let event = match outcome {
                    Ok(Ok(())) => CoordinatorEvent::TaskFinished(id),
                    Ok(Err(TaskError::Cancelled)) => return,
                    Ok(Err(e)) => CoordinatorEvent::TaskFailed {
                        task: id,
                        reason: e.to_string(),
                    },
                    Err(panic) => CoordinatorEvent::TaskFailed {
                        task: id,
                        reason: format!("panicked: {}", panic_message(&panic)),
                    },
                };
                if let CoordinatorEvent::TaskFailed { reason, .. } = &event {
                    tracing::error!(task = %id, task_name = %name, reason, "task failed");
                }
                let _ = events.send(event);
            })
            .map_err(JobError::Spawn)?;
        tasks.push(handle);
    }

    Ok(JobHandle {
        controller: JobController {
            events: events_tx,
            progress,
            metrics: Arc::new(metrics),
        },
        cancelled: graph.cancelled,
        coordinator,
        tasks,
        restore_download: restore_data.as_ref().map(|d| d.summary()),
    })
}

/// A worker other than 0: the attempt ends when the coordinator says so, when the link breaks, or
/// when this worker is cancelled.
fn wait_for_coordinator(
    ended: &Receiver<Result<AttemptEnd, String>>,
    cancelled: &std::sync::atomic::AtomicBool,
) -> Result<AttemptEnd, CoordinatorError> {
    loop {
        match ended.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(Ok(end)) => return Ok(end),
            Ok(Err(reason)) => return Err(CoordinatorError::Coordinator(reason)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(CoordinatorError::Coordinator(
                    "the control link ended without an outcome".into(),
                ))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(CoordinatorError::Cancelled);
                }
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
