//! Snapshot protocol: layout, manifests, checksums, retention, stores. Shared by worker and operator;
//! knows nothing of Kubernetes or of the engine.
//!
//! # How a snapshot is written (worker, job coordinator)
//! 1. An attempt starts: [`start_attempt`] writes `attempts/<n>.json` create-if-absent; a second
//!    process for the same attempt is fenced ([`AttemptError::AttemptTaken`]).
//! 2. On a barrier each subtask writes its state with [`write_state_file`] (or
//!    [`write_shared_state_file`] for incremental, content-addressed files) at keys built by
//!    [`SnapshotLayout`], and reports the returned [`FileRef`]s (size + CRC-32C).
//! 3. When every subtask acknowledged, the coordinator builds a [`Manifest`] and calls
//!    [`commit_manifest`]: create-if-absent, last, refused if a newer attempt exists.
//! 4. [`apply_retention`] deletes what [`retention_plan`] allows.
//!
//! # How a restore point is chosen (operator or worker)
//! 1. The catalog reads facts: [`read_attempts`], [`list_snapshots`] (manifest checksum, every
//!    file present with the recorded size).
//! 2. [`select_restore`] (pure) picks the newest usable snapshot by checkpoint id, skipping
//!    incomplete, corrupt and fenced (zombie) ones, and says why; [`find_restore_point`] does
//!    both and, at [`VerifyLevel::Deep`], downloads and checks the chosen snapshot's files.
//! 3. The new attempt records its restore point and numbers checkpoints from its id + 1.
//!
//! A snapshot is complete iff its manifest exists and every file it lists verifies.
//!
//! # Stores
//! [`SnapshotStore`] is the only storage seam: [`MemoryStore`] (tests, fault injection),
//! [`FileStore`] (local mode), `S3Store` (feature `s3`), [`PrefixedStore`] (per-job scope).
//! [`open_store`] turns a URL (`s3://bucket/prefix`, `file:///dir`, a path) into a store.

pub mod attempts;
pub mod catalog;
pub mod conformance;
pub mod decide;
pub mod file_store;
pub mod layout;
pub mod manifest;
pub mod memory_store;
pub mod prefixed_store;
#[cfg(feature = "s3")]
pub mod s3_config;
#[cfg(feature = "s3")]
pub mod s3_store;
pub mod segments;
pub mod state_file;
pub mod store;
pub mod url;

pub use attempts::{
    newest_attempt, read_attempts, start_attempt, AttemptError, AttemptRecord, SnapshotRef,
};
pub use catalog::{
    apply_retention, apply_savepoint_history, commit_manifest, delete_snapshot_dir,
    find_restore_point, list_snapshots, read_manifest, verify_deep, CatalogError, VerifyLevel,
};
pub use decide::{
    fenced_by, next_attempt, retention_plan, savepoint_history_plan, select_restore,
    RestoreDecision, RestorePoint, RetentionInput, RetentionPlan, SkipReason, Skipped,
    SnapshotFacts,
};
pub use file_store::FileStore;
pub use layout::{LayoutError, SnapshotDir, SnapshotLayout};
pub use manifest::{
    FileContents, FileRef, Manifest, ManifestError, OperatorState, SnapshotKind, SubtaskState,
    MANIFEST_FORMAT_VERSION,
};
pub use memory_store::MemoryStore;
pub use prefixed_store::{child, job_store, PrefixedStore};
#[cfg(feature = "s3")]
pub use s3_config::{S3Config, StaticCredentials, DEFAULT_REGION};
#[cfg(feature = "s3")]
pub use s3_store::S3Store;
pub use segments::Segments;
pub use state_file::{
    file_ref, read_state_file, write_shared_state_file, write_state_file, VerifyError,
};
pub use store::{ObjectInfo, PutOutcome, SnapshotStore, StoreError};
pub use url::{open_store, S3Options, StoreUrl, UrlError};
