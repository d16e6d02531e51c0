//! Sources and sinks: the Nexmark generator, a text (words) generator, a per-key sequence generator,
//! the two-phase-commit sinks to a folder (`file_sink`) and to S3 (`s3_sink`) and a discarding sink.

pub mod discard;
pub mod file_sink;
pub mod generator;
pub mod nexmark;
pub mod s3_sink;
pub mod sequence;
pub mod words;
