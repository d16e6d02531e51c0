//! The StreamJob controller. Reconcile is a named pipeline: observe (API and S3) -> validate (pure)
//! -> build desired objects (pure) -> apply (server-side apply) -> status. This crate links the api
//! and checkpoint crates, never the engine.
//!
//! Landed so far: `validate`, the pure checks of what the CRD schema cannot express.

pub mod validate;
