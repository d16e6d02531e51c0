//! `StreamJobStatus`: what the operator observed and decided. Written only by the operator (status
//! subresource, server-side apply). Holds what a restarted operator needs to resume an interrupted step.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a StreamJob.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,

    /// Standard conditions: `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of the current job attempt; snapshots and sink commits of older attempts are fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_attempt: Option<i64>,

    /// Current number of worker subtasks (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,

    /// Label selector of the worker pods (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// The newest completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<SnapshotInfo>,

    /// The newest completed savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SnapshotInfo>,

    /// Savepoint history, newest first, within `savepoint.historyMaxCount` / `historyMaxAge`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoints: Vec<SnapshotInfo>,

    /// Location of the snapshot the current attempt restored from (unset: started empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,

    /// Automatic restarts after failures, over the job's lifetime.
    #[serde(default)]
    pub restarts: i32,

    /// Failed attempts in a row without a completed checkpoint (compared with `restartPolicy.maxRestarts`).
    #[serde(default)]
    pub consecutive_failures: i32,

    /// The most recent failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureInfo>,

    /// Human-readable summary of the current state or of what the user must fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// A multi-step change in progress (upgrade, suspend, restart, delete), written before anything is
    /// stopped so a restarted operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_change: Option<PendingChange>,

    /// Hash of the pod-affecting spec the running attempt was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_spec_hash: Option<String>,

    /// The last spec (as JSON) that reached Running: the rollback target of a failed upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_spec: Option<String>,

    /// When the running spec was deployed by an upgrade that has not reached Running yet; an
    /// upgrade unproven for longer than the operator's rollback deadline is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unproven_since: Option<Time>,

    /// Hash of a spec whose upgrade was rolled back: it is not tried again until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_spec_hash: Option<String>,

    /// Trigger nonces already acted upon.
    #[serde(default)]
    pub handled_nonces: HandledNonces,
}

/// Lifecycle phase of a StreamJob.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum JobPhase {
    /// Accepted, nothing started yet.
    Pending,
    /// Worker pods are starting.
    Deploying,
    /// All workers run the job.
    Running,
    /// An upgrade is in progress (savepoint, then new pods).
    Upgrading,
    /// A failed attempt is being replaced by a new one.
    Restarting,
    /// A savepoint is being taken before the pods are removed.
    Suspending,
    /// Stopped with a savepoint; no pods.
    Suspended,
    /// A bounded job finished.
    Finished,
    /// Gave up after `restartPolicy.maxRestarts`, or the spec is invalid.
    Failed,
    /// Being deleted.
    Deleting,
}

/// A completed checkpoint or savepoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// Checkpoint id (monotonic within the job).
    pub id: i64,
    /// Job attempt that wrote it.
    #[serde(default)]
    pub attempt: i64,
    /// Full location of the snapshot directory (`s3://...` or `file://...`).
    pub location: String,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Total bytes of state it references.
    #[serde(default)]
    pub size_bytes: i64,
    /// Time from trigger to completion.
    #[serde(default)]
    pub duration_ms: i64,
    /// Why it was taken (`periodic`, `upgrade`, `suspend`, `manual`, `delete`, `schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A failure of a job attempt.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureInfo {
    /// When it was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Attempt that failed.
    #[serde(default)]
    pub attempt: i64,
    /// Pod that failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Short machine-readable reason (`PodFailed`, `PodDeleted`, `ProcessExited`, `CheckpointFailures`...).
    pub reason: String,
    /// What happened, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A multi-step change the operator has committed to; see `StreamJobStatus::pending_change`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingChange {
    /// What kind of change: `deploy`, `upgrade`, `suspend`, `resume`, `restart`, `rollback`, `delete`.
    pub kind: String,
    /// Current step: `snapshot` (waiting for the savepoint), `stopping`, `starting`.
    pub step: String,
    /// Generation of the spec being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_generation: Option<i64>,
    /// Hash of the pod-affecting spec being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_spec_hash: Option<String>,
    /// Snapshot the new attempt will restore from, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
    /// Savepoint request id sent to the workers (to find its result after a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_request: Option<String>,
    /// When the change started (deadline for rollback and bounded waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

/// Nonces already handled (see the `*TriggerNonce` spec fields).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandledNonces {
    /// Last handled `savepointTriggerNonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<i64>,
    /// Last handled `checkpointTriggerNonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<i64>,
    /// Last handled `restartNonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<i64>,
}
