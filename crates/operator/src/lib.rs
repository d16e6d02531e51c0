//! The StreamJob controller. Reconcile is a named pipeline: observe (API server, worker control
//! API, snapshot storage) -> validate (pure) -> decide (pure) -> write status -> apply. This crate
//! links the api and checkpoint crates, never the engine.
//!
//! - `validate`: what the CRD schema cannot check; `preflight`: what only the API server can (a dry
//!   run of a new spec's objects).
//! - `build`: the objects of one job attempt.
//! - `hash`: which spec changes are upgrades.
//! - `facts`, `observe`: what was observed, as plain data.
//! - `decide`: the lifecycle state machine (deploy, upgrade, suspend, resume, restart, delete).
//! - `reconcile`: one pass with I/O; `run`: the controller process; `leader`: Lease election.

pub mod build;
pub mod decide;
pub mod events;
pub mod facts;
pub mod hash;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod preflight;
pub mod reconcile;
pub mod run;
pub mod validate;
pub mod worker_client;
