//! Operator-facing commands of the `streamjob` binary, also run as `kubectl streamjob` (a
//! `kubectl-streamjob` link to the binary): `jobs`, `snapshots`, `savepoint`, `suspend`, `resume`,
//! `describe`. Links the api and checkpoint crates and kube, never the engine or the operator.
//!
//! Every decision is pure and tested on fixtures without a client:
//! - `format`: ages, sizes, aligned tables, the `jobs` table.
//! - `describe`: the text of `describe` (status, savepoint history, last failure, Warning events).
//! - `snapshots`: status and storage merged into one list, and which snapshot a restore would use.
//! - `progress`: when a `--wait` is done, still waiting (and the progress line), or failed.
//!
//! `commands` is the I/O edge: it reads the API server and the snapshot storage, patches the
//! spec (merge patch, guarded by resourceVersion) and polls with the pure functions above.

pub mod commands;
pub mod describe;
pub mod format;
pub mod progress;
pub mod snapshots;

#[cfg(test)]
mod fixtures;

pub use commands::{CliError, Cmd};
