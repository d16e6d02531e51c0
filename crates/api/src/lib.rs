//! The `StreamJob` API (`streamjob.io/v1alpha1`): the custom resource types, their defaults and the
//! names (labels, finalizer, field manager) that every other crate shares.
//!
//! This crate is pure data: no client, no I/O. The operator validates what the schema cannot express
//! (see `streamjob-operator`); the CRD YAML in `crds/streamjob.yaml` is generated from these types by
//! `streamjob crd`.

pub mod duration;
pub mod v1alpha1;

/// API group of every streamjob resource.
pub const GROUP: &str = "streamjob.io";
/// Finalizer the operator puts on a StreamJob to take a final savepoint and clean up S3 on delete.
pub const FINALIZER: &str = "streamjob.io/finalizer";
/// Field manager name used for every server-side apply made by the operator.
pub const FIELD_MANAGER: &str = "streamjob-operator";
/// Label carrying the StreamJob name on every object the operator creates for it.
pub const LABEL_JOB: &str = "streamjob.io/job";
/// Label carrying the job attempt number on worker pods.
pub const LABEL_ATTEMPT: &str = "streamjob.io/attempt";
/// Label carrying the worker index (0 hosts the job coordinator) on worker pods.
pub const LABEL_WORKER_INDEX: &str = "streamjob.io/worker-index";
/// Standard label naming the component (`worker`).
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Standard label naming the manager of an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Names of the built-in jobs a worker can run by `spec.job.name` (the operator validates against
/// this list without linking the engine).
pub const BUILTIN_JOBS: &[&str] = &[
    "windowed-count",
    "word-count",
    "nexmark-q0",
    "nexmark-q1",
    "nexmark-q2",
    "nexmark-q5",
    "nexmark-q7",
    "nexmark-q8",
    "sequence-check",
    "large-state",
];
