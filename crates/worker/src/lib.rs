//! A job run outside the operator's concerns: the built-in jobs (`jobs`), and local mode (`local`):
//! the same StreamJob manifest a user would `kubectl apply`, run in one process with snapshots in a
//! folder, restarts from the latest checkpoint, and a live progress line; and worker mode
//! (`worker_mode`): one attempt in a pod with the HTTP control API (`control_api`) the operator uses.
//! `verify` checks the committed output of the `sequence-check` job (the chaos suite's verdict).

pub mod control_api;
pub mod jobs;
pub mod local;
pub mod verify;
pub mod worker_mode;
