//! `StreamJobSpec`: what the user asks for. Every field's `///` doc becomes its CRD description, and the
//! `#[schemars(...)]` bounds become schema validation the API server enforces (no CEL: the test API
//! server is v1.20). Checks the schema cannot express live in the operator's validate step.

// kube's printcolumn(...) repeats `type_ = ...` per column, which clippy mistakes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::StreamJobStatus;
use crate::duration::DURATION_PATTERN;

/// Default image for worker pods.
pub const DEFAULT_IMAGE: &str = "streamjob/streamjob:0.1.0";

/// Desired state of a streaming job: what to run, how wide, how to snapshot it, and how to carry its
/// state across upgrades and failures.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "streamjob.io",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    singular = "streamjob",
    shortname = "sj",
    namespaced,
    status = "StreamJobStatus",
    derive = "PartialEq",
    doc = "A stateful streaming job with checkpoints, savepoints and automatic recovery, run by the streamjob operator.",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase of the job"
    ),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".spec.parallelism",
        description = "Desired number of worker subtasks"
    ),
    printcolumn(
        name = "Last Checkpoint",
        type_ = "date",
        json_path = ".status.lastCheckpoint.completedAt",
        description = "When the latest checkpoint completed"
    ),
    printcolumn(
        name = "Restarts",
        type_ = "integer",
        json_path = ".status.restarts",
        description = "Automatic restarts after failures"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobSpec {
    /// Container image of the workers. Any image built from the streamjob Dockerfile works; custom jobs
    /// bring their own image with `job.entrypoint`.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Image pull policy of the worker containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Number of parallel subtasks per operator. Changing it rescales the job through a savepoint (or
    /// the latest checkpoint, per `upgradeMode`). Exposed through the scale subresource
    /// (`kubectl scale sj/NAME --replicas N`).
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,

    /// Number of worker pods that share the subtasks (each runs a contiguous block of subtasks of
    /// every operator; records between pods travel over TCP). Worker 0 also hosts the job
    /// coordinator. At most `parallelism` pods are used. Changing it restarts the job like an upgrade.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = 1024))]
    pub workers: i32,

    /// Number of key groups: the upper bound for `parallelism` and the unit in which keyed state is
    /// redistributed on rescale. Cannot change once the job has state.
    #[serde(default = "default_max_parallelism")]
    #[schemars(range(min = 1, max = 32768))]
    pub max_parallelism: i32,

    /// Which job to run and its parameters.
    pub job: JobSpec,

    /// Periodic checkpoints, run by the job itself so they continue while the operator is down.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,

    /// Savepoints: periodic schedule, history retention, and what happens on delete.
    #[serde(default)]
    pub savepoint: SavepointSpec,

    /// Where checkpoints and savepoints are stored.
    pub storage: StorageSpec,

    /// How state is carried across an upgrade (any change to image, parallelism, job, resources or
    /// pod template).
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,

    /// With `upgradeMode: last-state`, the newest checkpoint may be at most this old (for example
    /// `10m`); otherwise a savepoint is taken first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_checkpoint_age: Option<String>,

    /// Desired run state: `running`, or `suspended` (savepoint taken, pods removed; back to `running`
    /// restores from it).
    #[serde(default)]
    pub state: JobState,

    /// Change this number to take a savepoint now (any new value triggers one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,

    /// Change this number to take a checkpoint now (any new value triggers one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_trigger_nonce: Option<i64>,

    /// Change this number to restart the job from its latest checkpoint as a new attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,

    /// Snapshot to start the very first attempt from, as a full URL (`s3://bucket/prefix/...` or
    /// `file:///...`) of a savepoint or checkpoint directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub initial_savepoint_path: Option<String>,

    /// Allow restoring a snapshot that holds state for operators the job no longer has (that state is
    /// dropped). Without it such a restore fails.
    #[serde(default)]
    pub allow_non_restored_state: bool,

    /// How failed attempts are restarted.
    #[serde(default)]
    pub restart_policy: RestartPolicySpec,

    /// Compute resources of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// A pod template merged into every worker pod (labels, annotations, node selector, tolerations,
    /// extra env, sidecars...). The worker container is the one named `worker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::v1alpha1::schema::preserve_unknown_object")]
    pub pod_template: Option<PodTemplate>,

    /// Service account of the worker pods. Workers need no Kubernetes API access; set this only for
    /// cloud identity (for example IRSA for S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// A pod template as the user wrote it, kept as JSON: the schema cannot check it (see `podTemplate`),
/// so whatever the API server stored must still be readable, and a template that is not a valid
/// `PodTemplateSpec` is reported by the operator's validation instead of making the whole StreamJob
/// unreadable.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(transparent)]
pub struct PodTemplate(pub serde_json::Value);

impl PodTemplate {
    /// The template as a `PodTemplateSpec`, or why it is not one.
    pub fn parse(&self) -> Result<PodTemplateSpec, serde_json::Error> {
        PodTemplateSpec::deserialize(&self.0)
    }
}

impl Default for PodTemplate {
    fn default() -> Self {
        Self(serde_json::Value::Object(serde_json::Map::new()))
    }
}

impl From<PodTemplateSpec> for PodTemplate {
    fn from(template: PodTemplateSpec) -> Self {
        Self(serde_json::to_value(template).unwrap_or_default())
    }
}

/// Which job the workers run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Name of a built-in job: `windowed-count`, `word-count`, `nexmark-q0`, `nexmark-q1`,
    /// `nexmark-q2`, `nexmark-q5`, `nexmark-q7`, `nexmark-q8`, `sequence-check`, `large-state` (the operator reports
    /// unknown names). Leave empty when `entrypoint` runs a custom job from a user image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub name: Option<String>,

    /// Parameters of the job, by name (strings or 32-bit integers), for example `events: 1000000`.
    /// Write larger numbers as strings (`events: "10000000000"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::v1alpha1::schema::job_params")]
    pub params: BTreeMap<String, IntOrString>,

    /// Command of a custom job binary in a user image, built against the streamjob engine library. It
    /// must accept the `worker` arguments the operator passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,

    /// Extra arguments for the custom job binary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// Periodic checkpoint configuration (Flink: `enableCheckpointing`, `setCheckpointTimeout`, ...).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Time between the starts of two periodic checkpoints, for example `10s`.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: String,

    /// A checkpoint not complete after this long is aborted (the previous one stays good).
    #[serde(default = "default_checkpoint_timeout")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: String,

    /// Minimum pause between the end of one checkpoint and the start of the next.
    #[serde(default = "default_min_pause")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub min_pause: String,

    /// How many checkpoints may be in flight at once.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 16))]
    pub max_concurrent: i32,

    /// `exactly-once` aligns barriers at operators with several inputs; `at-least-once` does not (lower
    /// latency, records may be replayed after a failure).
    #[serde(default)]
    pub mode: CheckpointMode,

    /// How many completed checkpoints to keep in storage.
    #[serde(default = "default_retained")]
    #[schemars(range(min = 1, max = 100))]
    pub retained: i32,

    /// Upload only the keyed state that changed since the previous checkpoint and reference the
    /// rest (files of earlier checkpoints). Key groups are rewritten in full now and then, spread
    /// over checkpoints, so restores read short chains. Savepoints are always full.
    #[serde(default)]
    pub incremental: bool,

    /// Compress keyed state in checkpoints and savepoints: `none` or `lz4` (fast, a modest ratio;
    /// Flink's `snapshot-compression`). Each key group is compressed on its own, off the task
    /// threads, and kept raw when that saves less than a tenth. Restores read either whatever this
    /// says, but a streamjob older than this field cannot restore compressed snapshots.
    #[serde(default)]
    pub compression: SnapshotCompression,

    /// How many consecutive checkpoint failures the job tolerates before it fails the attempt.
    #[serde(default = "default_tolerable_failures")]
    #[schemars(range(min = 0, max = 1000))]
    pub tolerable_failures: i32,
}

/// Compression of keyed state in snapshot files.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotCompression {
    /// Stored as encoded.
    #[default]
    None,
    /// LZ4 block compression per key group.
    Lz4,
}

/// Checkpointing guarantee.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// Barriers are aligned: every record affects state exactly once.
    #[default]
    ExactlyOnce,
    /// Barriers are not aligned: faster, but records may be applied twice after a failure.
    AtLeastOnce,
}

/// Savepoint configuration.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointSpec {
    /// Take a savepoint this often (for example `6h`); unset means no periodic savepoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub periodic_interval: Option<String>,

    /// Keep at most this many savepoints in the history; older ones are deleted from storage.
    #[serde(default = "default_history_max_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub history_max_count: i32,

    /// Delete savepoints older than this from storage (for example `720h`); the newest is always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub history_max_age: Option<String>,

    /// What to do when the StreamJob is deleted: `savepoint` takes a final savepoint first (bounded in
    /// time), `none` stops the job at once.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// Action on delete.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnDelete {
    /// Take a final savepoint before the workers are removed.
    #[default]
    Savepoint,
    /// Remove the workers without a savepoint.
    None,
}

/// Snapshot storage: exactly one of `s3` or `path`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// An S3 (or S3-compatible) bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3StorageSpec>,

    /// A folder on the workers' file system (`file:///...` or an absolute path): for tests and local
    /// mode; every worker must see the same folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
}

/// S3 bucket settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3StorageSpec {
    /// Bucket name.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,

    /// Key prefix under which this job's snapshots live (`<prefix>/<namespace>/<job>/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9!_.*'()/-]{0,512}$"))]
    pub prefix: Option<String>,

    /// Region of the bucket (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,64}$"))]
    pub region: Option<String>,

    /// Endpoint URL of an S3-compatible server (for example `http://minio:9000`); unset means AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,

    /// Use path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    #[serde(default)]
    pub force_path_style: bool,

    /// Secret holding the access keys; unset means the standard AWS credential chain of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,
}

/// Reference to a Secret in the job's namespace holding S3 access keys.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,

    /// Key of the access key id in the Secret (default `AWS_ACCESS_KEY_ID`).
    #[serde(default = "default_access_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub access_key_id_key: String,

    /// Key of the secret access key in the Secret (default `AWS_SECRET_ACCESS_KEY`).
    #[serde(default = "default_secret_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_access_key_key: String,
}

/// How state is carried across an upgrade.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    /// Stop with a savepoint; the new version restores from it.
    #[default]
    Savepoint,
    /// Restore from the latest complete checkpoint (a savepoint if it is older than `maxCheckpointAge`).
    LastState,
    /// Start the new version with empty state.
    Stateless,
}

/// Desired run state.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// The job runs.
    #[default]
    Running,
    /// The job is stopped with a savepoint and its pods are removed.
    Suspended,
}

/// Image pull policy (as in a Pod).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not present.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// Restart strategy for failed attempts: exponential backoff with a cap.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicySpec {
    /// Give up (phase Failed) after this many consecutive failed attempts without a completed checkpoint
    /// in between.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_restarts: i32,

    /// Backoff between restarts.
    #[serde(default)]
    pub backoff: BackoffSpec,
}

/// Exponential backoff bounds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    /// First delay (doubles after each failure).
    #[serde(default = "default_backoff_initial")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub initial: String,

    /// Largest delay.
    #[serde(default = "default_backoff_max")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max: String,
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}
fn default_parallelism() -> i32 {
    1
}
fn default_workers() -> i32 {
    1
}
fn default_max_parallelism() -> i32 {
    128
}
fn default_checkpoint_interval() -> String {
    "10s".to_string()
}
fn default_checkpoint_timeout() -> String {
    "60s".to_string()
}
fn default_min_pause() -> String {
    "0s".to_string()
}
fn default_max_concurrent() -> i32 {
    1
}
fn default_retained() -> i32 {
    3
}
fn default_tolerable_failures() -> i32 {
    3
}
fn default_history_max_count() -> i32 {
    10
}
fn default_access_key_key() -> String {
    "AWS_ACCESS_KEY_ID".to_string()
}
fn default_secret_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_string()
}
fn default_max_restarts() -> i32 {
    10
}
fn default_backoff_initial() -> String {
    "1s".to_string()
}
fn default_backoff_max() -> String {
    "60s".to_string()
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval: default_checkpoint_interval(),
            timeout: default_checkpoint_timeout(),
            min_pause: default_min_pause(),
            max_concurrent: default_max_concurrent(),
            mode: CheckpointMode::default(),
            retained: default_retained(),
            incremental: false,
            compression: SnapshotCompression::default(),
            tolerable_failures: default_tolerable_failures(),
        }
    }
}

impl Default for SavepointSpec {
    fn default() -> Self {
        Self {
            periodic_interval: None,
            history_max_count: default_history_max_count(),
            history_max_age: None,
            on_delete: OnDelete::default(),
        }
    }
}

impl Default for RestartPolicySpec {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            backoff: BackoffSpec::default(),
        }
    }
}

impl Default for BackoffSpec {
    fn default() -> Self {
        Self {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

impl StreamJobSpec {
    /// A spec with every default and the given built-in job and storage path: the starting point of
    /// fixtures and of local mode.
    pub fn builtin(job_name: &str, storage_path: &str) -> Self {
        Self {
            image: default_image(),
            image_pull_policy: None,
            parallelism: default_parallelism(),
            workers: default_workers(),
            max_parallelism: default_max_parallelism(),
            job: JobSpec {
                name: Some(job_name.to_string()),
                ..JobSpec::default()
            },
            checkpoint: CheckpointSpec::default(),
            savepoint: SavepointSpec::default(),
            storage: StorageSpec {
                s3: None,
                path: Some(storage_path.to_string()),
            },
            upgrade_mode: UpgradeMode::default(),
            max_checkpoint_age: None,
            state: JobState::default(),
            savepoint_trigger_nonce: None,
            checkpoint_trigger_nonce: None,
            restart_nonce: None,
            initial_savepoint_path: None,
            allow_non_restored_state: false,
            restart_policy: RestartPolicySpec::default(),
            resources: None,
            pod_template: None,
            service_account_name: None,
        }
    }
}

impl StreamJobSpec {
    /// Worker pods an attempt runs: `workers`, but never more than `parallelism` (a pod without a
    /// subtask would idle) and at least one.
    pub fn effective_workers(&self) -> u32 {
        self.workers.clamp(1, self.parallelism.max(1)) as u32
    }

    /// Root of the job's snapshots: `spec.storage.path` as given, or
    /// `s3://<bucket>/[<prefix>/]<namespace>/<name>`, or (no storage set) the local default
    /// `streamjob-data/<namespace>/<name>/snapshots`. Workers and the operator both use this, so they
    /// always agree on where a job's checkpoints and savepoints are.
    pub fn storage_url(&self, namespace: &str, name: &str) -> String {
        match (&self.storage.path, &self.storage.s3) {
            (Some(path), _) => path.clone(),
            (None, Some(s3)) => {
                let prefix = s3.prefix.as_deref().unwrap_or("").trim_matches('/');
                let root = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                format!("s3://{}/{root}{namespace}/{name}", s3.bucket)
            }
            (None, None) => format!("streamjob-data/{namespace}/{name}/snapshots"),
        }
    }
}

impl JobSpec {
    /// A job parameter as text (integers are rendered in decimal).
    pub fn param(&self, key: &str) -> Option<String> {
        self.params.get(key).map(|value| match value {
            IntOrString::Int(i) => i.to_string(),
            IntOrString::String(s) => s.clone(),
        })
    }
}
