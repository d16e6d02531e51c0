//! The StreamJob controller. Reconcile is a named pipeline: observe (API and S3) -> validate (pure)
//! -> build desired objects (pure) -> apply (server-side apply) -> status. This crate links the api
//! and checkpoint crates, never the engine.
//!
//! Landed so far: `validate` (the pure checks of what the CRD schema cannot express) and `build`
//! (the desired objects of a job attempt).

pub mod build;
pub mod validate;
