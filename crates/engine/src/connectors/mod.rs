//! Sources and sinks: the Nexmark generator, a text (words) generator, a per-key sequence generator,
//! the two-phase-commit sinks to a folder (`file_sink`) and to S3 (`s3_sink`) and a discarding sink.

pub mod discard;
pub mod file_sink;
pub mod generator;
pub mod nexmark;
pub mod s3_sink;
pub mod sequence;
pub mod words;

/// Whether `subtask` (of `parallelism`) cleans up what a sink subtask `owner` of an earlier attempt
/// left (rolled-back output, abandoned in-progress files or uploads): its own index, and subtask 0
/// also the indices beyond the current parallelism (rescaled down). Each owner has exactly one.
pub(crate) fn cleans_up(owner: u32, subtask: u32, parallelism: u32) -> bool {
    owner == subtask || (subtask == 0 && owner >= parallelism)
}
