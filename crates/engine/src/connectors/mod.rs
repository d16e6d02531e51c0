//! Sources and sinks: the Nexmark generator, a sentence generator, and the two-phase-commit file sink.

pub mod file_sink;
pub mod generator;
pub mod nexmark;
