//! The lifecycle decision of one StreamJob (pure: facts in, decision out, no client, no clock).
//!
//! A multi-step change (deploy, upgrade, suspend, resume, restart, delete) is first written to
//! `status.pendingChange` and only then acted on: the decision's status is written before its
//! actions run, so an operator killed at any point resumes the step it was in. Steps:
//! `snapshot` (stop-with-savepoint) -> `stopping` (delete the attempt's pods, wait until gone, back off
//! after failures) -> `starting` (a new attempt number above every attempt in storage, pods that
//! restore from an explicit snapshot) -> cleared once the new attempt's pods exist.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use streamjob_api::duration::parse_duration;
use streamjob_api::v1alpha1::{
    FailureInfo, JobPhase, JobState, OnDelete, PendingChange, SnapshotInfo, StreamJobSpec,
    StreamJobStatus, UpgradeMode,
};
use streamjob_checkpoint::decide::savepoint_history_plan;

use crate::build::AttemptPlan;
use crate::facts::{ObservedPod, PodPhase, SnapshotIndex, WorkerReport, WorkerState};
use crate::validate::Invalid;

/// Kinds of `pendingChange`.
pub mod kind {
    /// First attempt of a new job.
    pub const DEPLOY: &str = "deploy";
    /// The pod-affecting spec changed.
    pub const UPGRADE: &str = "upgrade";
    /// `state: suspended`.
    pub const SUSPEND: &str = "suspend";
    /// `state: running` after a suspend.
    pub const RESUME: &str = "resume";
    /// A failed attempt is replaced, or `restartNonce` changed.
    pub const RESTART: &str = "restart";
    /// The StreamJob is being deleted.
    pub const DELETE: &str = "delete";
    /// An upgrade did not become ready in time: back to the last stable spec.
    pub const ROLLBACK: &str = "rollback";
}

/// Steps of `pendingChange`.
pub mod step {
    /// Waiting for a stop-with-savepoint.
    pub const SNAPSHOT: &str = "snapshot";
    /// Deleting the old attempt's pods (then backing off after a failure).
    pub const STOPPING: &str = "stopping";
    /// The new attempt number is allocated; its pods are being created.
    pub const STARTING: &str = "starting";
}

/// `pendingChange.restoreFrom` meaning "start with empty state".
pub const RESTORE_NONE: &str = "none";

/// Bounds on every wait, so nothing waits forever.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest wait for a stop-with-savepoint before falling back to the latest checkpoint.
    pub savepoint: Duration,
    /// Longest a worker pod may take to start before the attempt counts as failed.
    pub start: Duration,
    /// Longest an upgraded spec may take to reach Running before it is rolled back to the last
    /// stable spec (`None`: never roll back).
    pub rollback: Option<Duration>,
    /// Longest a deletion waits for its final savepoint and pod shutdown before the finalizer is removed.
    pub delete: Duration,
    /// Requeue while a change is in progress.
    pub busy_poll: Duration,
    /// Requeue while the job runs (checkpoint progress, periodic savepoints).
    pub running_poll: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            savepoint: Duration::from_secs(300),
            start: Duration::from_secs(300),
            rollback: Some(Duration::from_secs(300)),
            delete: Duration::from_secs(120),
            busy_poll: Duration::from_secs(1),
            running_poll: Duration::from_secs(10),
        }
    }
}

/// Everything the decision looks at.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The desired spec.
    pub spec: &'a StreamJobSpec,
    /// `metadata.generation`.
    pub generation: i64,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Status as last written.
    pub status: &'a StreamJobStatus,
    /// [`crate::hash::pod_spec_hash`] of `spec`.
    pub spec_hash: &'a str,
    /// Root of the job's snapshots (`StreamJobSpec::storage_url`).
    pub storage_url: &'a str,
    /// What validation found (empty: valid).
    pub invalid: &'a [Invalid],
    /// Worker pods of the job (every attempt).
    pub pods: &'a [ObservedPod],
    /// Worker 0 of the current attempt, when it answered.
    pub report: Option<&'a WorkerReport>,
    /// Snapshot index; `None` when storage could not be read this time.
    pub index: Option<&'a SnapshotIndex>,
    /// Why storage could not be read.
    pub storage_error: Option<&'a str>,
    /// Now, unix milliseconds.
    pub now_ms: u64,
    /// Bounds on waits.
    pub limits: &'a Limits,
}

/// A Kubernetes event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, for humans.
    pub message: String,
}

/// What to do after the status is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create (server-side apply) the objects of an attempt.
    StartAttempt(AttemptPlan),
    /// Delete these worker pods.
    DeletePods(Vec<String>),
    /// Ask worker 0 for a savepoint; record it with [`record_savepoint`].
    Savepoint {
        /// Stop the job right after.
        stop: bool,
        /// Why (`upgrade`, `suspend`, `delete`, `manual`, `schedule`).
        reason: &'static str,
        /// The `savepointTriggerNonce` this answers.
        nonce: Option<i64>,
    },
    /// Ask worker 0 for a checkpoint (`checkpointTriggerNonce`).
    Checkpoint {
        /// The nonce this answers.
        nonce: i64,
    },
    /// Delete these snapshot folders (relative to the storage root) from storage.
    DeleteSnapshots(Vec<String>),
    /// Remove the finalizer: the StreamJob may go.
    RemoveFinalizer,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone)]
pub struct Decision {
    /// Status to write before any action.
    pub status: StreamJobStatus,
    /// Actions, in order.
    pub actions: Vec<Action>,
    /// Events to record.
    pub events: Vec<Note>,
    /// When to look again (besides watch events).
    pub requeue: Duration,
}

impl Decision {
    fn note(&mut self, warning: bool, reason: &'static str, message: impl Into<String>) {
        self.events.push(Note {
            warning,
            reason,
            message: message.into(),
        });
    }
    fn poll(&mut self, after: Duration) {
        self.requeue = self.requeue.min(after);
    }
}

/// Milliseconds since the epoch of a Kubernetes time.
pub fn time_ms(t: &Time) -> u64 {
    t.0.as_millisecond().max(0) as u64
}

/// A Kubernetes time from milliseconds since the epoch.
pub fn ms_time(ms: u64) -> Time {
    Time(jiff::Timestamp::from_millisecond(ms as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

fn current_attempt(status: &StreamJobStatus) -> Option<u64> {
    status.job_attempt.map(|a| a.max(0) as u64)
}

/// The folder relative to `storage_url` of a snapshot location (full URL, or already relative).
pub fn relative_dir(storage_url: &str, location: &str) -> String {
    let root = storage_url.trim_end_matches('/');
    location
        .strip_prefix(root)
        .map(|rest| rest.trim_start_matches('/'))
        .unwrap_or(location)
        .trim_end_matches('/')
        .to_string()
}

fn full_location(storage_url: &str, dir: &str) -> String {
    if dir.contains("://") || dir.starts_with('/') {
        dir.to_string()
    } else {
        format!("{}/{dir}", storage_url.trim_end_matches('/'))
    }
}

/// Backoff before attempt number `failures + 1` after `failures` consecutive failures.
pub fn restart_backoff(spec: &StreamJobSpec, failures: i32) -> Duration {
    let initial =
        parse_duration(&spec.restart_policy.backoff.initial).unwrap_or(Duration::from_secs(1));
    let max = parse_duration(&spec.restart_policy.backoff.max).unwrap_or(Duration::from_secs(60));
    let exp = failures.saturating_sub(1).clamp(0, 20) as u32;
    initial.saturating_mul(1u32 << exp).min(max)
}

/// Decide the next step of a StreamJob.
pub fn decide(input: &Input<'_>) -> Decision {
    let mut d = Decision {
        status: input.status.clone(),
        actions: Vec::new(),
        events: Vec::new(),
        requeue: input.limits.running_poll * 6,
    };
    if input.deleting {
        deleting(input, &mut d);
        set_conditions(input, &mut d);
        return d;
    }
    if !input.invalid.is_empty() {
        invalid_spec(input, &mut d);
        set_conditions(input, &mut d);
        return d;
    }
    d.status.observed_generation = Some(input.generation);
    refresh_snapshots(input, &mut d);
    match d.status.pending_change.clone() {
        Some(pending) => advance(input, &mut d, pending),
        None => steady(input, &mut d),
    }
    prune_savepoints(input, &mut d);
    if let Some(err) = input.storage_error {
        let message = format!(
            "snapshot storage {} cannot be read: {err}; check the bucket, its endpoint and the credentials; retrying",
            input.storage_url
        );
        if input.status.message.as_deref() != Some(message.as_str()) {
            d.note(true, "StorageUnavailable", message.clone());
        }
        d.status.message = Some(message);
        d.poll(input.limits.running_poll);
    }
    set_conditions(input, &mut d);
    d
}

fn invalid_spec(input: &Input<'_>, d: &mut Decision) {
    let message = format!(
        "invalid spec (generation {}): {}; running pods are left as they are until the spec is fixed",
        input.generation,
        input
            .invalid
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    if d.status.message.as_deref() != Some(message.as_str()) {
        d.note(true, "InvalidSpec", message.clone());
    }
    if d.status.phase.is_none() {
        d.status.phase = Some(JobPhase::Failed);
    }
    d.status.message = Some(message);
}

/// Snapshot facts from storage (and the worker, which may be a moment ahead) into status.
fn refresh_snapshots(input: &Input<'_>, d: &mut Decision) {
    let status = &mut d.status;
    if let Some(index) = input.index {
        status.last_checkpoint = index.last_checkpoint.clone();
        let previous = std::mem::take(&mut status.savepoints);
        status.savepoints = index
            .savepoints
            .iter()
            .map(|s| {
                let mut info = s.info.clone();
                if let Some(old) = previous.iter().find(|o| o.location == info.location) {
                    info.reason = old.reason.clone();
                }
                info
            })
            .collect();
        status.last_savepoint = status.savepoints.first().cloned();
    }
    if let Some(reported) = input.report.and_then(|r| r.last_checkpoint.as_ref()) {
        if status
            .last_checkpoint
            .as_ref()
            .is_none_or(|c| c.id < reported.id)
        {
            status.last_checkpoint = Some(reported.clone());
        }
    }
    let attempt = status.job_attempt;
    if status.consecutive_failures > 0
        && attempt.is_some()
        && status.last_checkpoint.as_ref().map(|c| c.attempt) == attempt
    {
        status.consecutive_failures = 0;
    }
}

fn prune_savepoints(input: &Input<'_>, d: &mut Decision) {
    let Some(index) = input.index else { return };
    let spec = &input.spec.savepoint;
    let protected: Option<String> = d
        .status
        .pending_change
        .as_ref()
        .and_then(|p| p.restore_from.as_deref())
        .map(|l| relative_dir(input.storage_url, l));
    let candidates: Vec<(String, u64)> = index
        .savepoints
        .iter()
        .filter(|s| Some(&s.dir) != protected.as_ref())
        .map(|s| {
            (
                s.dir.clone(),
                s.info.completed_at.as_ref().map_or(0, time_ms),
            )
        })
        .collect();
    let max_age = spec
        .history_max_age
        .as_deref()
        .and_then(|a| parse_duration(a).ok())
        .map(|a| a.as_millis() as u64);
    let mut delete = savepoint_history_plan(
        &candidates,
        spec.history_max_count.max(1) as usize,
        max_age,
        input.now_ms,
    );
    // The newest savepoint is the restore point of a resume: never delete it, whatever the policy.
    if let Some(newest) = index.savepoints.first() {
        delete.retain(|dir| dir != &newest.dir);
    }
    if delete.is_empty() {
        return;
    }
    d.status.savepoints.retain(|s| {
        !delete
            .iter()
            .any(|dir| relative_dir(input.storage_url, &s.location) == *dir)
    });
    d.status.last_savepoint = d.status.savepoints.first().cloned();
    d.note(
        false,
        "SavepointsDeleted",
        format!(
            "savepoint history (max {} {}) deletes {}",
            spec.history_max_count,
            spec.history_max_age
                .as_deref()
                .map(|a| format!(", max age {a}"))
                .unwrap_or_default(),
            delete.join(", ")
        ),
    );
    d.actions.push(Action::DeleteSnapshots(delete));
}

fn phase_of(kind: &str) -> JobPhase {
    match kind {
        kind::DEPLOY | kind::RESUME => JobPhase::Deploying,
        kind::UPGRADE | kind::ROLLBACK => JobPhase::Upgrading,
        kind::SUSPEND => JobPhase::Suspending,
        kind::RESTART => JobPhase::Restarting,
        _ => JobPhase::Deleting,
    }
}

fn begin(
    input: &Input<'_>,
    d: &mut Decision,
    kind: &str,
    step: &str,
    restore_from: Option<String>,
) {
    // What the new attempt runs: the current spec, except after a rollback (the last stable spec,
    // until the spec changes).
    let stable = stable_spec_hash(&d.status);
    let target = if kind == kind::ROLLBACK
        || (kind != kind::UPGRADE
            && d.status.rolled_back_spec_hash.as_deref() == Some(input.spec_hash))
    {
        stable.unwrap_or_else(|| input.spec_hash.to_string())
    } else {
        input.spec_hash.to_string()
    };
    if kind == kind::UPGRADE && d.status.last_stable_spec.is_some() {
        d.status.unproven_since = Some(ms_time(input.now_ms));
    }
    let pending = PendingChange {
        kind: kind.to_string(),
        step: step.to_string(),
        target_generation: Some(input.generation),
        target_spec_hash: Some(target),
        restore_from,
        savepoint_request: None,
        started_at: Some(ms_time(input.now_ms)),
    };
    d.status.pending_change = Some(pending.clone());
    d.status.phase = Some(phase_of(kind));
    advance(input, d, pending);
}

/// The last spec that reached Running, if recorded and readable.
pub fn stable_spec(status: &StreamJobStatus) -> Option<StreamJobSpec> {
    status
        .last_stable_spec
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok())
}

fn stable_spec_hash(status: &StreamJobStatus) -> Option<String> {
    stable_spec(status).map(|s| crate::hash::pod_spec_hash(&s))
}

fn live_pods<'p>(input: &Input<'p>) -> impl Iterator<Item = &'p ObservedPod> {
    input.pods.iter().filter(|p| !p.terminating)
}

fn current_pods<'p>(input: &Input<'p>, attempt: Option<u64>) -> Vec<&'p ObservedPod> {
    input
        .pods
        .iter()
        .filter(|p| attempt.is_some() && p.attempt == attempt)
        .collect()
}

fn worker_running(input: &Input<'_>, attempt: Option<u64>) -> bool {
    let pods = current_pods(input, attempt);
    !pods.is_empty()
        && pods
            .iter()
            .all(|p| p.phase == PodPhase::Running && !p.terminating)
        && input
            .report
            .is_some_and(|r| Some(r.attempt) == attempt && r.state == WorkerState::Running)
}

fn worker_stopped(input: &Input<'_>, attempt: Option<u64>) -> bool {
    let pods = current_pods(input, attempt);
    (!pods.is_empty() && pods.iter().all(|p| p.phase == PodPhase::Succeeded))
        || input.report.is_some_and(|r| {
            Some(r.attempt) == attempt
                && matches!(r.state, WorkerState::Stopped | WorkerState::Finished)
        })
}

fn elapsed(input: &Input<'_>, pending: &PendingChange) -> Duration {
    let started = pending.started_at.as_ref().map_or(input.now_ms, time_ms);
    Duration::from_millis(input.now_ms.saturating_sub(started))
}

/// Carry a pending change one step further.
fn advance(input: &Input<'_>, d: &mut Decision, mut pending: PendingChange) {
    let attempt = current_attempt(&d.status);
    d.poll(input.limits.busy_poll);
    if pending.step == step::SNAPSHOT {
        if worker_stopped(input, attempt) {
            // Stopped with its savepoint; if the operator missed the answer, the savepoint is the
            // newest snapshot and the index finds it.
            if pending.restore_from.is_none() {
                pending.restore_from = input
                    .index
                    .and_then(|i| i.restore_point.as_ref())
                    .map(|s| s.info.location.clone());
            }
            pending.step = step::STOPPING.into();
        } else if !worker_running(input, attempt) && !worker_starting(input, attempt) {
            d.note(
                true,
                "SavepointImpossible",
                format!(
                    "no running worker of attempt {} to take the {} savepoint; the new attempt restores from the latest checkpoint",
                    attempt.unwrap_or(0),
                    pending.kind
                ),
            );
            pending.restore_from = None;
            pending.step = step::STOPPING.into();
        } else if elapsed(input, &pending) > input.limits.savepoint {
            d.note(
                true,
                "SavepointTimeout",
                format!(
                    "the {} savepoint did not complete within {:?}; the new attempt restores from the latest checkpoint",
                    pending.kind, input.limits.savepoint
                ),
            );
            pending.restore_from = None;
            pending.step = step::STOPPING.into();
        } else if worker_running(input, attempt) {
            d.actions.push(Action::Savepoint {
                stop: true,
                reason: reason_of(&pending.kind),
                nonce: None,
            });
            d.status.pending_change = Some(pending);
            return;
        } else {
            // Still starting: a savepoint needs running tasks.
            d.status.pending_change = Some(pending);
            return;
        }
    }
    if pending.step == step::STOPPING {
        let live: Vec<String> = live_pods(input).map(|p| p.name.clone()).collect();
        if !live.is_empty() {
            d.actions.push(Action::DeletePods(live));
            d.status.pending_change = Some(pending);
            return;
        }
        if !input.pods.is_empty() {
            // Terminating: wait until they are gone, so two attempts never run side by side.
            if pending.kind == kind::DELETE && elapsed(input, &pending) > input.limits.delete {
                d.note(
                    true,
                    "DeleteTimeout",
                    "worker pods did not stop in time; removing the finalizer anyway (the pods are garbage-collected)",
                );
                d.actions.push(Action::RemoveFinalizer);
            }
            d.status.pending_change = Some(pending);
            return;
        }
        match pending.kind.as_str() {
            kind::DELETE => {
                d.actions.push(Action::RemoveFinalizer);
                d.status.pending_change = Some(pending);
                return;
            }
            kind::SUSPEND => {
                d.status.pending_change = None;
                d.status.phase = Some(JobPhase::Suspended);
                let from = pending
                    .restore_from
                    .clone()
                    .or_else(|| d.status.last_savepoint.as_ref().map(|s| s.location.clone()));
                d.status.message = Some(match &from {
                    Some(loc) => format!("suspended; resumes from {loc}"),
                    None => "suspended; resumes from the latest checkpoint".to_string(),
                });
                d.note(
                    false,
                    "Suspended",
                    d.status.message.clone().unwrap_or_default(),
                );
                d.requeue = input.limits.running_poll * 6;
                return;
            }
            _ => {}
        }
        // A restart after a failure waits (an attempt that checkpointed waits the initial backoff).
        let after_failure = pending.kind == kind::RESTART
            && d.status.last_failure.as_ref().and_then(|f| f.time.as_ref())
                == pending.started_at.as_ref();
        if after_failure {
            let wait = restart_backoff(input.spec, d.status.consecutive_failures.max(1));
            let since = elapsed(input, &pending);
            if since < wait {
                d.status.message = Some(format!(
                    "restarting after a failure; next attempt in {:.1}s",
                    (wait - since).as_secs_f64()
                ));
                d.status.pending_change = Some(pending);
                d.poll(wait - since);
                return;
            }
        }
        let Some(index) = input.index else {
            // The attempt number must be above every attempt in storage: wait until it can be read.
            d.status.pending_change = Some(pending);
            d.poll(input.limits.running_poll);
            return;
        };
        let restore_location = match pending.restore_from.as_deref() {
            Some(RESTORE_NONE) => None,
            Some(location) => Some(full_location(input.storage_url, location)),
            None => index
                .restore_point
                .as_ref()
                .map(|s| s.info.location.clone())
                .or_else(|| d.status.restored_from.clone()),
        };
        if pending.restore_from.is_none() && !index.skipped.is_empty() {
            d.note(true, "SnapshotsSkipped", index.skipped.join("; "));
        }
        let next = attempt.unwrap_or(0).max(index.newest_attempt) + 1;
        pending.step = step::STARTING.into();
        pending.restore_from = Some(
            restore_location
                .clone()
                .unwrap_or_else(|| RESTORE_NONE.to_string()),
        );
        d.status.job_attempt = Some(next as i64);
        d.status.running_spec_hash = pending.target_spec_hash.clone();
        d.status.restored_from = restore_location;
        let last_stable = pending.target_spec_hash.as_deref() != Some(input.spec_hash);
        d.status.parallelism = Some(if last_stable {
            stable_spec(&d.status).map_or(input.spec.parallelism, |s| s.parallelism)
        } else {
            input.spec.parallelism
        });
        d.status.pending_change = Some(pending.clone());
        d.note(
            false,
            "AttemptStarting",
            format!(
                "starting attempt {next} ({}) from {}",
                pending.kind,
                d.status.restored_from.as_deref().unwrap_or("empty state")
            ),
        );
    }
    if pending.step == step::STARTING {
        let attempt = current_attempt(&d.status).unwrap_or(1);
        let last_stable = pending.target_spec_hash.as_deref() != Some(input.spec_hash)
            && d.status.last_stable_spec.is_some();
        let workers = if last_stable {
            stable_spec(&d.status).map_or(1, |s| s.effective_workers())
        } else {
            input.spec.effective_workers()
        } as usize;
        let pods = current_pods(input, Some(attempt));
        let coordinator = pods.iter().find(|p| p.worker == Some(0));
        // Done once every worker's pod exists; a worker 0 that already failed or is stuck without
        // an IP is left to the health checks of the running state (they restart the attempt).
        let coordinator_gone = coordinator.is_some_and(|p| {
            p.terminating || p.phase == PodPhase::Failed || p.phase == PodPhase::Succeeded
        });
        let stuck = coordinator.is_some_and(|p| p.ip.is_none())
            && elapsed(input, &pending) > input.limits.start;
        if pods.len() >= workers || coordinator_gone || stuck {
            d.status.pending_change = None;
            d.status.phase = Some(JobPhase::Deploying);
            d.status.message = Some(format!("attempt {attempt} is starting"));
            return;
        }
        // The other workers join worker 0 at its pod IP: create them once it has one.
        let coordinator_ip = match coordinator {
            Some(pod) => match &pod.ip {
                Some(ip) => Some(ip.clone()),
                None => {
                    d.status.message = Some(format!(
                        "attempt {attempt}: waiting for worker 0 to get a pod IP before its {} other workers are created",
                        workers - 1
                    ));
                    d.status.pending_change = Some(pending);
                    return;
                }
            },
            None => None,
        };
        let restore = match pending.restore_from.as_deref() {
            None | Some(RESTORE_NONE) => RESTORE_NONE.to_string(),
            Some(location) => relative_dir(input.storage_url, location),
        };
        d.actions.push(Action::StartAttempt(AttemptPlan {
            attempt,
            restore,
            last_stable,
            coordinator_ip,
        }));
        d.status.pending_change = Some(pending);
    }
}

/// Worker pods of the running attempt, from the spec it runs: the current one, or the last stable
/// one after a rollback; `None` when that spec is not known.
fn running_workers(input: &Input<'_>, status: &StreamJobStatus) -> Option<usize> {
    let workers = if status.running_spec_hash.as_deref() == Some(input.spec_hash) {
        input.spec.effective_workers()
    } else {
        stable_spec(status)
            .filter(|s| {
                status.running_spec_hash.as_deref() == Some(crate::hash::pod_spec_hash(s).as_str())
            })?
            .effective_workers()
    };
    Some(workers as usize)
}

fn worker_starting(input: &Input<'_>, attempt: Option<u64>) -> bool {
    let pods = current_pods(input, attempt);
    !pods.is_empty()
        && pods
            .iter()
            .all(|p| !p.terminating && matches!(p.phase, PodPhase::Pending | PodPhase::Running))
}

fn reason_of(kind: &str) -> &'static str {
    match kind {
        kind::UPGRADE => "upgrade",
        kind::SUSPEND => "suspend",
        kind::DELETE => "delete",
        _ => "manual",
    }
}

/// No change in progress: look for what starts one, and keep status current.
fn steady(input: &Input<'_>, d: &mut Decision) {
    let spec = input.spec;
    let attempt = current_attempt(&d.status);
    let phase = d.status.phase;

    // Pods of older attempts (left by a crash between steps) never run beside the current one.
    let stale: Vec<String> = live_pods(input)
        .filter(|p| p.attempt != attempt)
        .map(|p| p.name.clone())
        .collect();
    if !stale.is_empty() {
        d.actions.push(Action::DeletePods(stale));
    }

    if spec.state == JobState::Suspended {
        if attempt.is_none() || phase == Some(JobPhase::Suspended) {
            d.status.phase = Some(JobPhase::Suspended);
            return;
        }
        if worker_running(input, attempt) {
            begin(input, d, kind::SUSPEND, step::SNAPSHOT, None);
        } else {
            begin(input, d, kind::SUSPEND, step::STOPPING, None);
        }
        return;
    }

    let Some(attempt_no) = attempt else {
        d.status.handled_nonces.savepoint = spec.savepoint_trigger_nonce;
        d.status.handled_nonces.checkpoint = spec.checkpoint_trigger_nonce;
        d.status.handled_nonces.restart = spec.restart_nonce;
        let from = spec
            .initial_savepoint_path
            .clone()
            .unwrap_or_else(|| RESTORE_NONE.to_string());
        begin(input, d, kind::DEPLOY, step::STOPPING, Some(from));
        return;
    };

    if phase == Some(JobPhase::Suspended) {
        let from = d.status.last_savepoint.as_ref().map(|s| s.location.clone());
        begin(input, d, kind::RESUME, step::STOPPING, from);
        return;
    }

    let rolled_back = d.status.rolled_back_spec_hash.as_deref() == Some(input.spec_hash);
    if !rolled_back {
        d.status.rolled_back_spec_hash = None;
    }
    let hash_changed =
        d.status.running_spec_hash.as_deref() != Some(input.spec_hash) && !rolled_back;
    let restart_requested =
        spec.restart_nonce.is_some() && spec.restart_nonce != d.status.handled_nonces.restart;
    if matches!(phase, Some(JobPhase::Failed) | Some(JobPhase::Finished)) {
        if hash_changed || restart_requested {
            d.status.consecutive_failures = 0;
            d.status.handled_nonces.restart = spec.restart_nonce;
            let kind = if hash_changed {
                kind::UPGRADE
            } else {
                kind::RESTART
            };
            let from = if spec.upgrade_mode == UpgradeMode::Stateless && hash_changed {
                Some(RESTORE_NONE.to_string())
            } else {
                None
            };
            begin(input, d, kind, step::STOPPING, from);
        }
        return;
    }

    if let Some(since) = d.status.unproven_since.as_ref().map(time_ms) {
        let stable = stable_spec_hash(&d.status);
        let limit = input.limits.rollback;
        if let (Some(limit), Some(stable)) = (limit, stable) {
            let running_unproven = d.status.running_spec_hash.as_deref() != Some(stable.as_str());
            if running_unproven && input.now_ms.saturating_sub(since) > limit.as_millis() as u64 {
                let message = format!(
                    "generation {} did not reach Running within {limit:?}; rolling back to the last stable spec (fix the spec to try again)",
                    input.generation
                );
                d.note(true, "RollingBack", message.clone());
                d.status.message = Some(message);
                d.status.rolled_back_spec_hash = Some(input.spec_hash.to_string());
                d.status.unproven_since = None;
                d.status.consecutive_failures = 0;
                return begin(input, d, kind::ROLLBACK, step::STOPPING, None);
            }
        }
    }

    // Health of the current attempt.
    let pods = current_pods(input, attempt);
    let failed = pods.iter().find(|p| p.phase == PodPhase::Failed);
    let deleted = pods.iter().find(|p| p.terminating);
    if let Some(pod) = failed {
        let message = format!(
            "worker pod {} of attempt {attempt_no} failed: {}",
            pod.name,
            pod.failure.as_deref().unwrap_or("exited with an error")
        );
        return failure(input, d, Some(&pod.name), "PodFailed", message);
    }
    if let Some(pod) = deleted {
        let message = format!(
            "worker pod {} of attempt {attempt_no} is being deleted by someone else",
            pod.name
        );
        return failure(input, d, Some(&pod.name), "PodDeleted", message);
    }
    if pods.is_empty() {
        let message = format!("the worker pods of attempt {attempt_no} are gone");
        return failure(input, d, None, "PodDeleted", message);
    }
    if let Some(workers) = running_workers(input, &d.status).filter(|w| pods.len() < *w) {
        let message = format!(
            "attempt {attempt_no} runs on {workers} workers but only {} of their pods exist",
            pods.len()
        );
        return failure(input, d, None, "PodDeleted", message);
    }
    if let Some(report) = input.report.filter(|r| r.attempt == attempt_no) {
        if report.state == WorkerState::Failed {
            let message = format!(
                "attempt {attempt_no} failed: {}",
                report.failure.as_deref().unwrap_or("unknown error")
            );
            return failure(input, d, Some(&pods[0].name), "JobFailed", message);
        }
    }
    let start_limit = input.limits.start.as_millis() as u64;
    if let Some(pod) = pods.iter().find(|p| {
        p.phase == PodPhase::Pending
            && p.created_ms
                .is_some_and(|c| input.now_ms.saturating_sub(c) > start_limit)
    }) {
        let message = format!(
            "worker pod {} of attempt {attempt_no} did not start within {:?}: {}",
            pod.name,
            input.limits.start,
            pod.failure.as_deref().unwrap_or("still pending")
        );
        return failure(input, d, Some(&pod.name), "StartTimeout", message);
    }
    if pods.iter().all(|p| p.phase == PodPhase::Succeeded) {
        d.status.phase = Some(JobPhase::Finished);
        d.status.message = Some(format!(
            "the job finished (attempt {attempt_no}); its output is committed"
        ));
        d.note(
            false,
            "JobFinished",
            d.status.message.clone().unwrap_or_default(),
        );
        return;
    }

    if hash_changed {
        return upgrade(input, d, attempt);
    }
    if restart_requested {
        d.status.handled_nonces.restart = spec.restart_nonce;
        d.note(
            false,
            "RestartRequested",
            "restartNonce changed: restarting from the latest checkpoint",
        );
        return begin(input, d, kind::RESTART, step::STOPPING, None);
    }

    let running = worker_running(input, attempt);
    if running {
        if d.status.phase != Some(JobPhase::Running) {
            d.status.phase = Some(JobPhase::Running);
            d.status.unproven_since = None;
            if !rolled_back {
                d.status.last_stable_spec = serde_json::to_string(spec).ok();
            } else {
                d.note(
                    true,
                    "RolledBack",
                    "running the last stable spec; the rolled-back spec is not tried again until it changes",
                );
            }
            d.note(
                false,
                "Running",
                format!(
                    "attempt {attempt_no} runs at parallelism {}{}",
                    spec.parallelism,
                    d.status
                        .restored_from
                        .as_deref()
                        .map(|r| format!(", restored from {r}"))
                        .unwrap_or_default()
                ),
            );
        }
        d.status.message = Some(if rolled_back {
            format!(
                "attempt {attempt_no} runs the last stable spec: the upgrade to generation {} was rolled back because it did not reach Running; change the spec to try again",
                input.generation
            )
        } else {
            format!("attempt {attempt_no} running")
        });
        if spec.savepoint_trigger_nonce.is_some()
            && spec.savepoint_trigger_nonce != d.status.handled_nonces.savepoint
        {
            d.actions.push(Action::Savepoint {
                stop: false,
                reason: "manual",
                nonce: spec.savepoint_trigger_nonce,
            });
        } else if let Some(nonce) = spec
            .checkpoint_trigger_nonce
            .filter(|n| Some(*n) != d.status.handled_nonces.checkpoint)
        {
            d.actions.push(Action::Checkpoint { nonce });
        } else if periodic_savepoint_due(input, d) {
            d.actions.push(Action::Savepoint {
                stop: false,
                reason: "schedule",
                nonce: None,
            });
        }
        d.poll(input.limits.running_poll);
    } else {
        d.status.phase = Some(JobPhase::Deploying);
        d.poll(input.limits.busy_poll * 2);
    }
}

fn periodic_savepoint_due(input: &Input<'_>, d: &Decision) -> bool {
    let Some(every) = input
        .spec
        .savepoint
        .periodic_interval
        .as_deref()
        .and_then(|i| parse_duration(i).ok())
    else {
        return false;
    };
    let last = d
        .status
        .last_savepoint
        .as_ref()
        .and_then(|s| s.completed_at.as_ref())
        .map(time_ms);
    // Counted from the last savepoint, or from when the current attempt last reached Running.
    let since = last.or_else(|| {
        d.status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .map(|c| time_ms(&c.last_transition_time))
    });
    since.is_some_and(|t| input.now_ms.saturating_sub(t) >= every.as_millis() as u64)
}

fn upgrade(input: &Input<'_>, d: &mut Decision, attempt: Option<u64>) {
    let spec = input.spec;
    let running = worker_running(input, attempt);
    let latest = input.index.and_then(|i| i.restore_point.as_ref());
    let (step, from, how) = match spec.upgrade_mode {
        UpgradeMode::Stateless => (
            step::STOPPING,
            Some(RESTORE_NONE.to_string()),
            "stateless: the new attempt starts with empty state".to_string(),
        ),
        UpgradeMode::Savepoint if running => (
            step::SNAPSHOT,
            None,
            "taking a savepoint, then restoring from it".to_string(),
        ),
        UpgradeMode::Savepoint => (
            step::STOPPING,
            None,
            "the job is not running, so no savepoint: restoring from the latest checkpoint".into(),
        ),
        UpgradeMode::LastState => {
            let max_age = spec
                .max_checkpoint_age
                .as_deref()
                .and_then(|a| parse_duration(a).ok());
            let age = latest
                .and_then(|l| l.info.completed_at.as_ref())
                .map(|t| Duration::from_millis(input.now_ms.saturating_sub(time_ms(t))));
            let too_old = match (max_age, age) {
                (Some(max), Some(age)) => age > max,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if too_old && running {
                (
                    step::SNAPSHOT,
                    None,
                    "the latest checkpoint is older than maxCheckpointAge: taking a savepoint"
                        .into(),
                )
            } else {
                (
                    step::STOPPING,
                    None,
                    "restoring from the latest checkpoint".to_string(),
                )
            }
        }
    };
    d.note(
        false,
        "UpgradeStarted",
        format!(
            "spec generation {} changed the workers (parallelism {}): {how}",
            input.generation, spec.parallelism
        ),
    );
    begin(input, d, kind::UPGRADE, step, from);
}

fn failure(
    input: &Input<'_>,
    d: &mut Decision,
    pod: Option<&str>,
    reason: &'static str,
    message: String,
) {
    let status = &mut d.status;
    status.restarts += 1;
    status.consecutive_failures += 1;
    status.last_failure = Some(FailureInfo {
        time: Some(ms_time(input.now_ms)),
        attempt: status.job_attempt.unwrap_or(0),
        pod: pod.map(str::to_string),
        reason: reason.to_string(),
        message: Some(message.clone()),
    });
    d.note(true, reason, message.clone());
    let max = input.spec.restart_policy.max_restarts;
    if d.status.consecutive_failures > max {
        d.status.phase = Some(JobPhase::Failed);
        d.status.message = Some(format!(
            "gave up after {} consecutive failed attempts (restartPolicy.maxRestarts = {max}); last: {message}. Fix the cause, then change the spec or restartNonce",
            d.status.consecutive_failures
        ));
        d.note(true, "GaveUp", d.status.message.clone().unwrap_or_default());
        let live: Vec<String> = live_pods(input).map(|p| p.name.clone()).collect();
        if !live.is_empty() {
            d.actions.push(Action::DeletePods(live));
        }
        return;
    }
    d.status.message = Some(message);
    begin(input, d, kind::RESTART, step::STOPPING, None);
}

fn deleting(input: &Input<'_>, d: &mut Decision) {
    d.status.phase = Some(JobPhase::Deleting);
    let pending = match d.status.pending_change.clone() {
        Some(p) if p.kind == kind::DELETE => p,
        _ => {
            let attempt = current_attempt(&d.status);
            let savepoint = input.spec.savepoint.on_delete == OnDelete::Savepoint
                && worker_running(input, attempt);
            let p = PendingChange {
                kind: kind::DELETE.into(),
                step: if savepoint {
                    step::SNAPSHOT
                } else {
                    step::STOPPING
                }
                .into(),
                target_generation: Some(input.generation),
                target_spec_hash: None,
                restore_from: None,
                savepoint_request: None,
                started_at: Some(ms_time(input.now_ms)),
            };
            d.status.pending_change = Some(p.clone());
            p
        }
    };
    if pending.step == step::SNAPSHOT && elapsed(input, &pending) > input.limits.delete {
        d.note(
            true,
            "DeleteSavepointTimeout",
            format!(
                "the final savepoint did not complete within {:?}; deleting without it",
                input.limits.delete
            ),
        );
        let mut p = pending;
        p.step = step::STOPPING.into();
        return advance(input, d, p);
    }
    advance(input, d, pending);
}

fn set_conditions(input: &Input<'_>, d: &mut Decision) {
    let now = ms_time(input.now_ms);
    let phase = d.status.phase;
    let (ready, ready_reason) = match phase {
        _ if !input.invalid.is_empty() => (false, "InvalidSpec"),
        Some(JobPhase::Running) => (true, "Running"),
        Some(JobPhase::Suspended) => (false, "Suspended"),
        Some(JobPhase::Finished) => (false, "Finished"),
        Some(JobPhase::Failed) => (false, "Failed"),
        Some(JobPhase::Deleting) => (false, "Deleting"),
        Some(JobPhase::Upgrading) => (false, "Upgrading"),
        Some(JobPhase::Restarting) => (false, "Restarting"),
        Some(JobPhase::Suspending) => (false, "Suspending"),
        _ => (false, "Deploying"),
    };
    let message = d
        .status
        .message
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| ready_reason.to_string());
    set_condition(
        &mut d.status.conditions,
        "Ready",
        ready,
        ready_reason,
        &message,
        input.generation,
        &now,
    );
    let progressing = d.status.pending_change.as_ref();
    set_condition(
        &mut d.status.conditions,
        "Progressing",
        progressing.is_some(),
        progressing.map_or("Idle", |p| match p.kind.as_str() {
            kind::DEPLOY => "Deploying",
            kind::UPGRADE => "Upgrading",
            kind::SUSPEND => "Suspending",
            kind::RESUME => "Resuming",
            kind::RESTART => "Restarting",
            kind::ROLLBACK => "RollingBack",
            _ => "Deleting",
        }),
        &progressing
            .map(|p| format!("{} step {}", p.kind, p.step))
            .unwrap_or_else(|| "no change in progress".to_string()),
        input.generation,
        &now,
    );
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: &Time,
) {
    let status = if value { "True" } else { "False" };
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(generation),
        last_transition_time: transition,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Record the answer to an [`Action::Savepoint`] in `status`; returns the event to record.
pub fn record_savepoint(
    status: &mut StreamJobStatus,
    result: Result<SnapshotInfo, String>,
    stop: bool,
    reason: &'static str,
    nonce: Option<i64>,
) -> Note {
    match result {
        Ok(mut info) => {
            info.reason = Some(reason.to_string());
            status.savepoints.retain(|s| s.location != info.location);
            status.savepoints.insert(0, info.clone());
            status.last_savepoint = Some(info.clone());
            if let Some(n) = nonce {
                status.handled_nonces.savepoint = Some(n);
            }
            if stop {
                if let Some(p) = status
                    .pending_change
                    .as_mut()
                    .filter(|p| p.step == step::SNAPSHOT)
                {
                    p.restore_from = Some(info.location.clone());
                    p.step = step::STOPPING.into();
                }
            }
            Note {
                warning: false,
                reason: "SavepointCompleted",
                message: format!(
                    "{reason} savepoint {} completed in {} ms ({} bytes) at {}",
                    info.id, info.duration_ms, info.size_bytes, info.location
                ),
            }
        }
        Err(e) => Note {
            warning: true,
            reason: "SavepointFailed",
            message: format!("{reason} savepoint failed: {e}; retrying"),
        },
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
