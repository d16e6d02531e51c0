//! Job configuration: parallelism, key groups and checkpointing, with the same knobs as Flink's
//! `StreamExecutionEnvironment` / `CheckpointConfig`:
//!
//! ```
//! use std::time::Duration;
//! use streamjob_engine::config::{CheckpointConfig, CheckpointingMode};
//! // env.enableCheckpointing(5000); setCheckpointingMode(EXACTLY_ONCE); setMinPauseBetweenCheckpoints(2000);
//! // setCheckpointTimeout(10000); setMaxConcurrentCheckpoints(1)
//! let checkpoints = CheckpointConfig::enabled(Duration::from_millis(5000))
//!     .with_mode(CheckpointingMode::ExactlyOnce)
//!     .with_min_pause(Duration::from_millis(2000))
//!     .with_timeout(Duration::from_millis(10000))
//!     .with_max_concurrent(1);
//! assert_eq!(checkpoints.max_concurrent, 1);
//! ```
//!
//! and Flink's `WatermarkStrategy.withWatermarkAlignment(group, maxDrift, updateInterval)`:
//!
//! ```
//! use std::time::Duration;
//! use streamjob_engine::config::WatermarkAlignment;
//! let alignment = WatermarkAlignment::new("nexmark", Duration::from_secs(10))
//!     .with_update_interval(Duration::from_millis(200));
//! assert_eq!(alignment.max_drift_ms(), 10_000);
//! ```

use std::time::Duration;

/// Exactly-once (aligned barriers) or at-least-once (no alignment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointingMode {
    /// Align barriers at tasks with several inputs: each record affects state exactly once.
    #[default]
    ExactlyOnce,
    /// Do not align: lower latency; records may be applied twice after a failure.
    AtLeastOnce,
}

/// Checkpoint schedule and guarantees.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// Time between checkpoint starts; `None` disables periodic checkpoints.
    pub interval: Option<Duration>,
    /// Alignment mode.
    pub mode: CheckpointingMode,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Minimum pause between the end of one checkpoint and the start of the next.
    pub min_pause: Duration,
    /// Checkpoints in flight at once.
    pub max_concurrent: usize,
    /// Consecutive failed checkpoints tolerated before the job attempt fails.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept in storage.
    pub retained: usize,
    /// Upload only changed key groups and reference the rest.
    pub incremental: bool,
    /// How keyed state is compressed in snapshot files.
    pub compression: SnapshotCompression,
}

/// Compression of keyed state in snapshot files (Flink `execution.checkpointing.snapshot-compression`).
/// Each key group is compressed on its own, off the task threads, and stored raw when compressing
/// does not make it at least a tenth smaller. A restore reads either, whatever the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotCompression {
    /// Stored as encoded.
    #[default]
    None,
    /// LZ4 (block format): fast to write and read, a modest ratio.
    Lz4,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: None,
            mode: CheckpointingMode::ExactlyOnce,
            timeout: Duration::from_secs(60),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: 3,
            retained: 3,
            incremental: false,
            compression: SnapshotCompression::None,
        }
    }
}

impl CheckpointConfig {
    /// Checkpoints disabled (savepoints can still be triggered).
    pub fn disabled() -> Self {
        Self::default()
    }
    /// Periodic checkpoints every `interval` (Flink `enableCheckpointing(ms)`).
    pub fn enabled(interval: Duration) -> Self {
        Self {
            interval: Some(interval),
            ..Self::default()
        }
    }
    /// Flink `setCheckpointingMode`.
    pub fn with_mode(mut self, mode: CheckpointingMode) -> Self {
        self.mode = mode;
        self
    }
    /// Flink `setMinPauseBetweenCheckpoints`.
    pub fn with_min_pause(mut self, pause: Duration) -> Self {
        self.min_pause = pause;
        self
    }
    /// Flink `setCheckpointTimeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Flink `setMaxConcurrentCheckpoints`.
    pub fn with_max_concurrent(mut self, max: usize) -> Self {
        self.max_concurrent = max.max(1);
        self
    }
    /// Flink `setTolerableCheckpointFailureNumber`.
    pub fn with_tolerable_failures(mut self, failures: u32) -> Self {
        self.tolerable_failures = failures;
        self
    }
    /// Completed checkpoints to retain (Flink `state.checkpoints.num-retained`).
    pub fn with_retained(mut self, retained: usize) -> Self {
        self.retained = retained.max(1);
        self
    }
    /// Compress keyed state in snapshot files (Flink `execution.checkpointing.snapshot-compression`).
    pub fn with_compression(mut self, compression: SnapshotCompression) -> Self {
        self.compression = compression;
        self
    }
    /// Incremental checkpoints (Flink `state.backend.incremental`).
    pub fn with_incremental(mut self, incremental: bool) -> Self {
        self.incremental = incremental;
        self
    }
}

/// Watermark alignment of a source (Flink FLIP-182): the source subtasks of one group share the
/// minimum of their watermarks, and a subtask whose watermark is more than `max_drift` ahead of that
/// minimum stops reading until the others caught up. This bounds how far apart in event time the
/// inputs of a downstream operator can be, so windows and timers between the slowest and the fastest
/// source do not pile up in state. It never changes results, only when records are read.
///
/// Within one process the minimum is exact (shared atomics); across worker processes each worker
/// reports its subtasks' watermarks over the control link every `update_interval` (Flink's
/// `updateInterval`) and, sooner, whenever a watermark moved a quarter of `max_drift`: in real time
/// a subtask may see the others up to one interval late, and a catch-up (event time far ahead of
/// wall time) is not paced to one drift per interval. A
/// finished (bounded) source counts as `+inf` and never holds the others back. A source that never
/// emits watermarks would hold its group back forever: align only event-time sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkAlignment {
    /// Sources (of any vertex) with the same group name align with each other.
    pub group: String,
    /// How far (event time) a subtask may run ahead of the group's minimum watermark.
    pub max_drift: Duration,
    /// How often watermarks travel between worker processes (Flink `updateInterval`).
    pub update_interval: Duration,
}

impl WatermarkAlignment {
    /// Default update interval across processes (Flink's default is 1 s; ours is shorter because
    /// generators replay event time much faster than wall time).
    pub const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_millis(200);

    /// Align with the sources of `group`, at most `max_drift` ahead of the slowest.
    pub fn new(group: impl Into<String>, max_drift: Duration) -> Self {
        Self {
            group: group.into(),
            max_drift,
            update_interval: Self::DEFAULT_UPDATE_INTERVAL,
        }
    }
    /// How often watermarks are exchanged between worker processes (at least 1 ms).
    pub fn with_update_interval(mut self, interval: Duration) -> Self {
        self.update_interval = interval.max(Duration::from_millis(1));
        self
    }
    /// The drift in event-time milliseconds.
    pub fn max_drift_ms(&self) -> i64 {
        i64::try_from(self.max_drift.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Everything a job run needs besides its graph.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Job name (used in manifests and logs).
    pub name: String,
    /// Subtasks per operator.
    pub parallelism: u32,
    /// Key groups (upper bound of parallelism; unit of state redistribution).
    pub max_parallelism: u32,
    /// Checkpointing.
    pub checkpoints: CheckpointConfig,
    /// Records per batch on the wire.
    pub batch_size: usize,
    /// Batches buffered per channel before the sender blocks (backpressure).
    pub channel_capacity: usize,
}

impl JobConfig {
    /// A configuration with the given name and parallelism and defaults for the rest.
    pub fn new(name: impl Into<String>, parallelism: u32) -> Self {
        Self {
            name: name.into(),
            parallelism: parallelism.max(1),
            max_parallelism: 128,
            checkpoints: CheckpointConfig::default(),
            batch_size: 1024,
            channel_capacity: 16,
        }
    }
    /// Set the number of key groups.
    pub fn with_max_parallelism(mut self, max_parallelism: u32) -> Self {
        self.max_parallelism = max_parallelism.max(1);
        self
    }
    /// Set checkpointing.
    pub fn with_checkpoints(mut self, checkpoints: CheckpointConfig) -> Self {
        self.checkpoints = checkpoints;
        self
    }
}
