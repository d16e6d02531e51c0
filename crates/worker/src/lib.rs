//! A job run outside the operator's concerns: the built-in jobs (`jobs`), and local mode (`local`):
//! the same StreamJob manifest a user would `kubectl apply`, run in one process with snapshots in a
//! folder, restarts from the latest checkpoint, and a live progress line; and worker mode
//! (`worker_mode`): one attempt in a pod with the HTTP control API (`control_api`) the operator uses.

pub mod control_api;
pub mod jobs;
pub mod local;
pub mod worker_mode;
