//! Sources and sinks: the Nexmark generator, a text (words) generator, a per-key sequence generator,
//! the two-phase-commit file sink and a discarding sink.

pub mod discard;
pub mod file_sink;
pub mod generator;
pub mod nexmark;
pub mod sequence;
pub mod words;
