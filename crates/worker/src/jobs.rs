//! Built-in jobs, runnable by name with parameters (`spec.job.name`, `spec.job.params`).
//! Parameters are validated before anything runs; unknown names and bad values are clear errors.
//! This file holds the parameters and the name -> job table; the larger jobs live in `jobs/`.
//!
//! The event-time jobs (`windowed-count`, `nexmark-q5`, `q7`, `q8`) align the watermarks of their
//! source subtasks (Flink's watermark alignment): a subtask more than `max-drift` of event time ahead
//! of the slowest one pauses until it caught up. Without it, source subtasks that run at different
//! speeds (they do: threads share cores) drift apart, the downstream watermark is the slowest one's,
//! and every window between the slowest and the fastest stays in state, growing with the run. The
//! default drift is the job's `window`: then at most about one window per key more is open than in a
//! run with a single source subtask, while the sources still run free within a whole window (a
//! smaller drift saves little state, since one window per key is open anyway, and pauses more).
//! `max-drift: off` disables alignment. Results never depend on it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use streamjob_engine::config::WatermarkAlignment;
use streamjob_engine::connectors::file_sink::FileSink;
use streamjob_engine::connectors::nexmark::{Bid, Event, NexmarkConfig, NexmarkSource};
use streamjob_engine::connectors::s3_sink::{S3Options, S3Output, S3SinkError};
use streamjob_engine::connectors::sequence::{SequenceRecord, SequenceSource};
use streamjob_engine::operators::window::{Count, WindowAssigner, WindowResult};
use streamjob_engine::stream::{DataStream, StreamEnv};
use streamjob_engine::types::Data;

/// Where a job's results go.
#[derive(Debug, Clone)]
pub(crate) enum ResultSink {
    /// The exactly-once (two-phase-commit) file sink, into this folder.
    Files(PathBuf),
    /// The exactly-once (two-phase-commit) S3 sink, under this `s3://bucket/prefix`.
    S3(S3Output),
    /// Nowhere (benchmarks without output I/O).
    Discard,
}

impl ResultSink {
    /// The sink operator of one subtask; `format` writes one record as a line.
    pub(crate) fn operator<T: Data>(
        &self,
        format: impl Fn(&T, &mut String) + Send + 'static,
    ) -> Box<dyn streamjob_engine::operator::StreamOperator<T, ()>> {
        match self {
            ResultSink::Files(dir) => Box::new(FileSink::new(dir.clone(), format)),
            ResultSink::S3(output) => Box::new(output.sink(format)),
            ResultSink::Discard => Box::new(streamjob_engine::connectors::discard::DiscardSink),
        }
    }
}

mod highest_bid;
mod hot_items;
pub mod large_state;
mod new_users;
pub mod sequence_check;
mod word_count;

/// A job that cannot be built from its name and parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    /// No built-in job has this name.
    #[error("unknown job {name:?}; built-in jobs: {}", BUILTIN_JOBS.join(", "))]
    UnknownJob { name: String },
    /// A parameter is missing.
    #[error("job {job} needs parameter {param:?} ({hint})")]
    Missing {
        job: String,
        param: String,
        hint: String,
    },
    /// A parameter has a bad value.
    #[error("job {job}: parameter {param}={value:?} is invalid: {reason}")]
    Invalid {
        job: String,
        param: String,
        value: String,
        reason: String,
    },
    /// A parameter this job does not take.
    #[error("job {job} does not take parameter {param:?}; it takes: {known}")]
    Unknown {
        job: String,
        param: String,
        known: String,
    },
}

/// Names of the built-in jobs (defined in the api crate so the operator can validate them).
pub use streamjob_api::BUILTIN_JOBS;

/// Parameters of a job, as strings (from the manifest, overridden by `--set`).
#[derive(Debug, Clone, Default)]
pub struct JobParams {
    job: String,
    values: BTreeMap<String, String>,
    /// S3 settings of an `s3://` output (the snapshots' `storage.s3` ones; the environment fills in
    /// the rest).
    s3: S3Options,
}

impl JobParams {
    /// Name of the job.
    pub fn job(&self) -> &str {
        &self.job
    }
    /// Parameters of job `job`.
    pub fn new(job: &str, values: BTreeMap<String, String>) -> Self {
        Self {
            job: job.to_string(),
            values,
            s3: S3Options::default(),
        }
    }
    /// With the S3 settings (endpoint, region, path style, keys) an `s3://` output uses; unset
    /// fields come from the environment (`S3_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...).
    pub fn with_s3(mut self, s3: S3Options) -> Self {
        self.s3 = s3;
        self
    }
    fn check_known(&self, known: &[&str]) -> Result<(), JobSpecError> {
        for key in self.values.keys() {
            if !known.contains(&key.as_str()) {
                return Err(JobSpecError::Unknown {
                    job: self.job.clone(),
                    param: key.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }
    fn u64_or(&self, key: &str, default: u64) -> Result<u64, JobSpecError> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|e: std::num::ParseIntError| JobSpecError::Invalid {
                    job: self.job.clone(),
                    param: key.into(),
                    value: v.clone(),
                    reason: e.to_string(),
                }),
        }
    }
    fn duration_ms_or(&self, key: &str, default_ms: i64) -> Result<i64, JobSpecError> {
        Ok(self.duration_ms(key)?.unwrap_or(default_ms))
    }
    fn duration_ms(&self, key: &str) -> Result<Option<i64>, JobSpecError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => streamjob_api::duration::parse_duration(v)
                .map(|d| d.as_millis() as i64)
                .map_err(|e| JobSpecError::Invalid {
                    job: self.job.clone(),
                    param: key.into(),
                    value: v.clone(),
                    reason: e.to_string(),
                })
                .and_then(|ms| {
                    if ms > 0 {
                        Ok(Some(ms))
                    } else {
                        Err(JobSpecError::Invalid {
                            job: self.job.clone(),
                            param: key.into(),
                            value: v.clone(),
                            reason: "must be positive".into(),
                        })
                    }
                }),
        }
    }
    /// Where results go: `sink: file` (default) writes them exactly once into `output`, a folder
    /// (the file sink) or `s3://bucket/prefix` (the S3 sink, with the S3 settings of the job's
    /// storage); `sink: discard` drops them (benchmarks), and `output` is not needed.
    fn output(&self) -> Result<ResultSink, JobSpecError> {
        match self.values.get("sink").map(String::as_str) {
            None | Some("file") => {}
            Some("discard") => return Ok(ResultSink::Discard),
            Some(other) => {
                return Err(self.invalid(
                    "sink",
                    format!("{other:?} is not a sink; use `file` (default) or `discard`"),
                ))
            }
        }
        let value = self
            .values
            .get("output")
            .ok_or_else(|| JobSpecError::Missing {
                job: self.job.clone(),
                param: "output".into(),
                hint: "the folder or s3://bucket/prefix committed results are written to (or set sink=discard)".into(),
            })?;
        if value.starts_with("s3://") {
            return S3Output::parse(value, self.s3.clone().with_env_defaults())
                .map(ResultSink::S3)
                .map_err(|e| {
                    self.invalid(
                        "output",
                        match e {
                            S3SinkError::InvalidUrl { reason, .. } => reason,
                            other => other.to_string(),
                        },
                    )
                });
        }
        let path = value.strip_prefix("file://").unwrap_or(value);
        if path.is_empty() {
            return Err(self.invalid("output", "empty path"));
        }
        if path.contains("://") {
            return Err(self.invalid(
                "output",
                "unsupported scheme; use a folder path, file:///path or s3://bucket/prefix",
            ));
        }
        Ok(ResultSink::Files(PathBuf::from(path)))
    }
    fn invalid(&self, param: &str, reason: impl Into<String>) -> JobSpecError {
        JobSpecError::Invalid {
            job: self.job.clone(),
            param: param.into(),
            value: self.values.get(param).cloned().unwrap_or_default(),
            reason: reason.into(),
        }
    }
}

/// Watermark alignment group of the Nexmark source.
const ALIGNMENT_GROUP: &str = "nexmark";

/// `max-drift`: a duration, or `off`; `default_ms` (the job's window) when absent.
fn alignment(
    params: &JobParams,
    default_ms: i64,
) -> Result<Option<WatermarkAlignment>, JobSpecError> {
    let drift_ms = match params.values.get("max-drift").map(|v| v.trim()) {
        Some("off") => return Ok(None),
        Some(_) => params.duration_ms("max-drift")?.unwrap_or(default_ms),
        None => default_ms,
    };
    Ok(Some(WatermarkAlignment::new(
        ALIGNMENT_GROUP,
        std::time::Duration::from_millis(drift_ms.max(0) as u64),
    )))
}

/// Parameters of the tumbling-window event-time jobs (windowed-count, nexmark-q7, nexmark-q8).
const WINDOWED_PARAMS: &[&str] = &[
    "events",
    "rate",
    "splits",
    "window",
    "max-drift",
    "output",
    "sink",
];

/// Source parameters shared by the generator jobs (`events`, `rate`, `splits`).
struct SourceParams {
    events: Option<u64>,
    splits: u32,
    rate: Option<u64>,
}

fn source_params(params: &JobParams, parallelism: u32) -> Result<SourceParams, JobSpecError> {
    let events = params.u64_or("events", 0)?;
    let rate = params.u64_or("rate", 0)?;
    let splits = params.u64_or("splits", u64::from(parallelism.max(16)))?;
    if splits == 0 || splits > 1 << 16 {
        return Err(JobSpecError::Invalid {
            job: params.job.clone(),
            param: "splits".into(),
            value: splits.to_string(),
            reason: "must be between 1 and 65536".into(),
        });
    }
    Ok(SourceParams {
        events: (events > 0).then_some(events),
        splits: splits as u32,
        rate: (rate > 0).then_some(rate),
    })
}

/// Check a job's name and parameters without building it.
pub fn validate(params: &JobParams, parallelism: u32) -> Result<(), JobSpecError> {
    let env = StreamEnv::new(streamjob_engine::config::JobConfig::new(
        "validate",
        parallelism,
    ));
    build(params, &env)
}

/// Called once per source record by jobs built with [`build_with_fault`]: tests inject failures
/// (a panic fails the attempt) at chosen points with it.
pub type FaultHook = Arc<dyn Fn() + Send + Sync>;

/// Add the job named in `params` to `env`.
pub fn build(params: &JobParams, env: &StreamEnv) -> Result<(), JobSpecError> {
    build_with_fault(params, env, None)
}

/// Like [`build`], with `fault` called once per source record (jobs other than `windowed-count` and
/// `nexmark-q0`..`q2`). Without a hook the job graph is exactly the one [`build`] makes.
pub fn build_with_fault(
    params: &JobParams,
    env: &StreamEnv,
    fault: Option<FaultHook>,
) -> Result<(), JobSpecError> {
    let parallelism = env.config().parallelism;
    match params.job.as_str() {
        "windowed-count" => {
            params.check_known(WINDOWED_PARAMS)?;
            let source = source_params(params, parallelism)?;
            let window = params.duration_ms_or("window", 10_000)?;
            let aligned = alignment(params, window)?;
            let output = params.output()?;
            windowed_count(env, source, aligned, window, output);
            Ok(())
        }
        "nexmark-q0" | "nexmark-q1" | "nexmark-q2" => {
            params.check_known(&["events", "rate", "splits", "output", "sink"])?;
            let source = source_params(params, parallelism)?;
            let output = params.output()?;
            nexmark_simple(env, &params.job, source, output);
            Ok(())
        }
        "nexmark-q5" => {
            params.check_known(&[
                "events",
                "rate",
                "splits",
                "window",
                "slide",
                "max-drift",
                "output",
                "sink",
            ])?;
            let source = source_params(params, parallelism)?;
            let window = params.duration_ms_or("window", 10_000)?;
            let slide = params.duration_ms_or("slide", 2_000)?;
            if slide > window || window % slide != 0 {
                return Err(params.invalid(
                    "slide",
                    format!(
                        "the window ({window} ms) must be a multiple of the slide ({slide} ms)"
                    ),
                ));
            }
            let aligned = alignment(params, window)?;
            let output = params.output()?;
            let events = inject(nexmark_source(env, source, aligned), fault);
            hot_items::build(events, window, slide, output);
            Ok(())
        }
        "nexmark-q7" | "nexmark-q8" => {
            params.check_known(WINDOWED_PARAMS)?;
            let source = source_params(params, parallelism)?;
            let window = params.duration_ms_or("window", 10_000)?;
            let aligned = alignment(params, window)?;
            let output = params.output()?;
            let events = inject(nexmark_source(env, source, aligned), fault);
            if params.job == "nexmark-q7" {
                highest_bid::build(events, window, output);
            } else {
                new_users::build(events, window, output);
            }
            Ok(())
        }
        "word-count" => {
            params.check_known(&[
                "events",
                "rate",
                "splits",
                "vocabulary",
                "window",
                "output",
                "sink",
            ])?;
            let source = source_params(params, parallelism)?;
            let vocabulary = params.u64_or("vocabulary", 10_000)?;
            if vocabulary == 0 {
                return Err(params.invalid("vocabulary", "must be at least 1"));
            }
            let window = params.duration_ms("window")?;
            if source.events.is_none() && window.is_none() {
                return Err(params.invalid(
                    "events",
                    "an unbounded word count (events=0) emits only per window: set `window` too",
                ));
            }
            let output = params.output()?;
            word_count::build(env, source, vocabulary, window, output, fault);
            Ok(())
        }
        "sequence-check" => {
            params.check_known(&["keys", "events", "rate", "splits", "output", "sink"])?;
            let source = source_params(params, parallelism)?;
            let keys = params.u64_or("keys", 1000)?;
            if keys == 0 {
                return Err(params.invalid("keys", "must be at least 1"));
            }
            let output = params.output()?;
            sequence_check::build(env, source, keys, output, fault);
            Ok(())
        }
        "large-state" => {
            params.check_known(&[
                "keys",
                "value-bytes",
                "events",
                "rate",
                "splits",
                "output",
                "sink",
            ])?;
            let source = source_params(params, parallelism)?;
            let keys = params.u64_or("keys", 1_000_000)?;
            if keys == 0 {
                return Err(params.invalid("keys", "must be at least 1"));
            }
            let value_bytes = params.u64_or("value-bytes", 100)?;
            if value_bytes > 1 << 20 {
                return Err(params.invalid("value-bytes", "must be at most 1048576 (1 MiB)"));
            }
            let output = params.output()?;
            large_state::build(env, source, keys, value_bytes as usize, output, fault);
            Ok(())
        }
        other => Err(JobSpecError::UnknownJob {
            name: other.to_string(),
        }),
    }
}

/// The stream, with the fault hook (if any) called once per record.
fn inject<T: Data>(stream: DataStream<T>, fault: Option<FaultHook>) -> DataStream<T> {
    match fault {
        None => stream,
        Some(fault) => stream.map("fault-injection", move |r| {
            fault();
            r
        }),
    }
}

/// The per-key sequence source (`keys` keys; record `i` is key `i % keys`, seq `i / keys`),
/// with the fault hook (if any).
fn sequence_records(
    env: &StreamEnv,
    source: SourceParams,
    keys: u64,
    fault: Option<FaultHook>,
) -> DataStream<SequenceRecord> {
    let records = env.source("sequence", move |_| {
        Box::new(SequenceSource::new(
            keys,
            source.events,
            source.splits,
            source.rate,
        ))
    });
    inject(records, fault)
}

fn nexmark_source(
    env: &StreamEnv,
    p: SourceParams,
    alignment: Option<WatermarkAlignment>,
) -> DataStream<Event> {
    env.source_with_alignment("nexmark", alignment, move |_| Box::new(nexmark(&p)))
}

/// One subtask's Nexmark source, every event.
fn nexmark(p: &SourceParams) -> NexmarkSource {
    NexmarkSource::new(NexmarkConfig::default(), p.events, p.splits, p.rate)
}

/// Nexmark bids -> count per auction per tumbling event-time window -> exactly-once file sink.
fn windowed_count(
    env: &StreamEnv,
    source: SourceParams,
    alignment: Option<WatermarkAlignment>,
    window_ms: i64,
    output: ResultSink,
) {
    nexmark_bids(env, source, alignment)
        .key_by(|b| b.auction)
        .window(WindowAssigner::tumbling(window_ms), |b| b.date_time)
        .aggregate("count-per-auction", Count)
        .sink("file-sink", move |_| {
            output.operator(|r: &WindowResult<u64, u64>, line: &mut String| {
                let _ = write!(line, "{},{},{},{}", r.key, r.start, r.end, r.value);
            })
        });
}

/// The bids of the Nexmark source, selected inside the source: every event is still generated,
/// read and counted, but only bids are put in batches (a `flat_map` after the source copied each
/// event once more into a batch of its own: a third of q0's time).
fn nexmark_bids(
    env: &StreamEnv,
    p: SourceParams,
    alignment: Option<WatermarkAlignment>,
) -> DataStream<Bid> {
    env.source_with_alignment("nexmark", alignment, move |_| {
        Box::new(nexmark(&p).selecting(|e: Event| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        }))
    })
}

/// Nexmark q0 (pass-through), q1 (currency conversion), q2 (selection) on bids.
fn nexmark_simple(env: &StreamEnv, query: &str, source: SourceParams, output: ResultSink) {
    let bids = nexmark_bids(env, source, None);
    let bids = match query {
        // q1: dollars to euros.
        "nexmark-q1" => bids.map("to-euro", |mut b| {
            b.price = b.price * 908 / 1000;
            b
        }),
        // q2: bids on a fixed set of auctions.
        "nexmark-q2" => bids.filter("select-auctions", |b| b.auction % 123 == 0),
        _ => bids,
    };
    bids.sink("file-sink", move |_| {
        output.operator(|b: &Bid, line: &mut String| {
            let _ = write!(
                line,
                "{},{},{},{},{}",
                b.auction, b.bidder, b.price, b.channel, b.date_time
            );
        })
    });
}
