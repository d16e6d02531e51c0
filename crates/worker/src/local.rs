//! Local mode: `streamjob run FILE` runs the job of a StreamJob manifest in this process, with
//! checkpoints in a folder (or S3), automatic restarts from the latest checkpoint, a progress line,
//! and Ctrl-C for stop-with-savepoint (a second Ctrl-C cancels).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use streamjob_api::duration::parse_duration;
use streamjob_api::v1alpha1::{CheckpointMode, SnapshotCompression, StreamJob};
use streamjob_checkpoint::url::{open_store, S3Options};
use streamjob_engine::config::{CheckpointConfig, CheckpointingMode, JobConfig};
use streamjob_engine::coordinator::SnapshotFigures;
use streamjob_engine::runner::{
    run_with_restarts, MonitorAction, RunOutcome, RunnerError, RunnerOptions,
};
use streamjob_engine::types::SnapshotType;

use crate::jobs::{self, JobParams, JobSpecError};

/// Why local mode could not run the job.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The manifest could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The manifest is not a StreamJob.
    #[error("{path} is not a valid StreamJob manifest: {reason}")]
    Parse { path: String, reason: String },
    /// A value is invalid.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The job name or parameters are wrong.
    #[error(transparent)]
    Job(#[from] JobSpecError),
    /// Storage could not be opened.
    #[error("cannot open snapshot storage {url}: {reason}")]
    Storage { url: String, reason: String },
    /// The job failed.
    #[error(transparent)]
    Run(#[from] RunnerError),
    /// The async runtime could not start.
    #[error("failed to start the I/O runtime: {0}")]
    Runtime(std::io::Error),
}

/// Command-line options of `streamjob run`.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// The manifest.
    pub manifest: PathBuf,
    /// Snapshot storage URL (overrides `spec.storage`).
    pub checkpoint_dir: Option<String>,
    /// Snapshot folder to start from (relative to the storage root, or a full URL under it).
    pub from: Option<String>,
    /// Parallelism override.
    pub parallelism: Option<u32>,
    /// `spec.job.params` overrides.
    pub set: Vec<(String, String)>,
    /// Print a progress line every second.
    pub progress: bool,
}

/// A job ready to run locally.
#[derive(Debug, Clone)]
pub struct LocalJob {
    /// Engine configuration.
    pub config: JobConfig,
    /// Job name and parameters.
    pub params: JobParams,
    /// Snapshot storage URL (job root).
    pub storage_url: String,
    /// S3 settings from `spec.storage.s3` (endpoint, region, path style); the environment fills in
    /// what the spec leaves out, credentials included.
    pub s3: S3Options,
    /// Restart behaviour.
    pub runner: RunnerOptions,
}

fn duration(field: &str, value: &str) -> Result<Duration, LocalError> {
    parse_duration(value).map_err(|e| LocalError::Invalid(format!("{field}: {e}")))
}

/// Turn a manifest plus command-line overrides into a runnable job (pure apart from reading the file).
pub fn prepare(options: &LocalOptions) -> Result<LocalJob, LocalError> {
    let path = options.manifest.display().to_string();
    let text = std::fs::read_to_string(&options.manifest).map_err(|source| LocalError::Read {
        path: path.clone(),
        source,
    })?;
    let job: StreamJob = serde_yaml::from_str(&text).map_err(|e| LocalError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    prepare_job(&job, options)
}

/// Like [`prepare`] for an already parsed StreamJob.
pub fn prepare_job(job: &StreamJob, options: &LocalOptions) -> Result<LocalJob, LocalError> {
    let spec = &job.spec;
    let name = job.metadata.name.clone().unwrap_or_else(|| "job".into());
    let parallelism = options.parallelism.map_or(spec.parallelism, |p| p as i32);
    if parallelism < 1 || parallelism > spec.max_parallelism {
        return Err(LocalError::Invalid(format!(
            "parallelism {parallelism} must be between 1 and maxParallelism ({})",
            spec.max_parallelism
        )));
    }
    let job_name = spec.job.name.clone().ok_or_else(|| {
        LocalError::Invalid(
            "spec.job.name is required in local mode (custom entrypoints run in your own image)"
                .into(),
        )
    })?;
    let mut params: BTreeMap<String, String> = spec
        .job
        .params
        .keys()
        .filter_map(|k| spec.job.param(k).map(|v| (k.clone(), v)))
        .collect();
    for (k, v) in &options.set {
        params.insert(k.clone(), v.clone());
    }
    // An `s3://` output reaches S3 with the snapshots' settings (same endpoint, region, path style).
    let s3 = spec
        .storage
        .s3
        .as_ref()
        .map(s3_settings)
        .unwrap_or_default();
    let params = JobParams::new(&job_name, params).with_s3(s3.clone());
    jobs::validate(&params, parallelism as u32)?;

    let c = &spec.checkpoint;
    let checkpoints = CheckpointConfig::enabled(duration("checkpoint.interval", &c.interval)?)
        .with_timeout(duration("checkpoint.timeout", &c.timeout)?)
        .with_min_pause(duration("checkpoint.minPause", &c.min_pause)?)
        .with_max_concurrent(c.max_concurrent.max(1) as usize)
        .with_mode(match c.mode {
            CheckpointMode::ExactlyOnce => CheckpointingMode::ExactlyOnce,
            CheckpointMode::AtLeastOnce => CheckpointingMode::AtLeastOnce,
        })
        .with_retained(c.retained.max(1) as usize)
        .with_tolerable_failures(c.tolerable_failures.max(0) as u32)
        .with_incremental(c.incremental)
        .with_compression(match c.compression {
            SnapshotCompression::None => streamjob_engine::config::SnapshotCompression::None,
            SnapshotCompression::Lz4 => streamjob_engine::config::SnapshotCompression::Lz4,
        });
    let config = JobConfig::new(name.clone(), parallelism as u32)
        .with_max_parallelism(spec.max_parallelism as u32)
        .with_checkpoints(checkpoints);

    let namespace = job
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let storage_url = match &options.checkpoint_dir {
        Some(dir) => dir.clone(),
        None => spec.storage_url(&namespace, &name),
    };
    let backoff = &spec.restart_policy.backoff;
    let runner = RunnerOptions {
        max_restarts: spec.restart_policy.max_restarts.max(0) as u32,
        backoff_initial: duration("restartPolicy.backoff.initial", &backoff.initial)?,
        backoff_max: duration("restartPolicy.backoff.max", &backoff.max)?,
        restore_from: options
            .from
            .as_ref()
            .map(|f| relative_snapshot_path(f, &storage_url)),
        allow_non_restored_state: spec.allow_non_restored_state,
    };
    Ok(LocalJob {
        config,
        params,
        storage_url,
        s3,
        runner,
    })
}

/// The S3 client settings a manifest's `storage.s3` gives (no credentials: those come from the
/// environment, where the operator puts the job's Secret, or the standard AWS chain).
pub fn s3_settings(s3: &streamjob_api::v1alpha1::S3StorageSpec) -> S3Options {
    S3Options {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        // `false` is also the field's default: leave it to S3_FORCE_PATH_STYLE then.
        force_path_style: s3.force_path_style.then_some(true),
        ..S3Options::default()
    }
}

/// `--from` may be a full URL/path under the storage root or a folder relative to it.
fn relative_snapshot_path(from: &str, storage_url: &str) -> String {
    let strip = |s: &str| {
        s.trim_start_matches("file://")
            .trim_end_matches('/')
            .to_string()
    };
    let from_clean = strip(from);
    let root = strip(storage_url);
    let absolute_root = Path::new(&root)
        .canonicalize()
        .map(|p| p.display().to_string())
        .unwrap_or(root.clone());
    for r in [&root, &absolute_root] {
        if let Some(rest) = from_clean.strip_prefix(r.as_str()) {
            return rest.trim_start_matches('/').to_string();
        }
    }
    from_clean
}

static SIGNALS: AtomicU8 = AtomicU8::new(0);

/// Figures of a local run, for benchmarks (`streamjob run --stats-json FILE`).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStats {
    /// Job name.
    pub job: String,
    /// Subtasks per operator.
    pub parallelism: u32,
    /// Number of the last attempt.
    pub attempt: u64,
    /// Failed attempts that were restarted.
    pub restarts: u32,
    /// Records the sources of the last attempt read.
    pub source_records: u64,
    /// Last attempt, from its tasks starting (after restore) to its end, final checkpoint and sink
    /// commit included; process start-up and restore are not.
    pub run_millis: u64,
    /// Last attempt, if it restored a snapshot: from its start until every task had loaded its
    /// restored state (choosing and downloading the snapshot, verifying, decoding, loading).
    pub restore_millis: Option<u64>,
    /// Of `restore_millis`, the part before the tasks started: choosing the files this process
    /// needs, downloading, verifying and decoding them (the rest is the tasks loading the state).
    pub restore_download_millis: Option<u64>,
    /// Last attempt, from its tasks starting until every source emitted its last record.
    pub input_millis: Option<u64>,
    /// CPU time the whole process used over `run_millis` (every thread), when the clock could be
    /// read: `cpu_millis / run_millis` is how many cores the run kept busy.
    pub cpu_millis: Option<u64>,
    /// Completed snapshots of the last attempt, in completion order.
    pub checkpoints: Vec<SnapshotFigures>,
    /// What watermark alignment did to the sources of the last attempt.
    pub alignment: streamjob_engine::watermark_alignment::AlignmentSummary,
}

/// Run a prepared job to its end.
pub fn run(job: LocalJob, progress: bool) -> Result<RunOutcome, LocalError> {
    run_with_stats(job, progress).map(|(outcome, _)| outcome)
}

/// Run a prepared job to its end and report its figures.
pub fn run_with_stats(job: LocalJob, progress: bool) -> Result<(RunOutcome, RunStats), LocalError> {
    use std::io::IsTerminal as _;
    let progress = progress && std::io::stderr().is_terminal();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("streamjob-io")
        .build()
        .map_err(LocalError::Runtime)?;
    let store = runtime
        .block_on(open_store(
            &job.storage_url,
            job.s3.clone().with_env_defaults(),
        ))
        .map_err(|e| LocalError::Storage {
            url: job.storage_url.clone(),
            reason: e.to_string(),
        })?;
    runtime.spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            SIGNALS.fetch_add(1, Ordering::SeqCst);
        }
    });
    let params = job.params.clone();
    let mut last_print = Instant::now();
    let last_records = Cell::new(0u64);
    let mut stop_requested: Option<crossbeam_reply::Reply> = None;
    let attempt_no = Cell::new(0u64);
    let controller: RefCell<Option<streamjob_engine::job::JobController>> = RefCell::new(None);
    eprintln!(
        "streamjob: running {} (parallelism {}), snapshots in {}",
        params_name(&params),
        job.config.parallelism,
        job.storage_url
    );
    let outcome = run_with_restarts(
        &job.config,
        |env| jobs::build(&params, env).map_err(|e| e.to_string()),
        store,
        &job.runner,
        runtime.handle(),
        |info| {
            attempt_no.set(info.attempt);
            last_records.set(0);
            controller.replace(None);
            eprintln!(
                "streamjob: attempt {}: {}",
                info.attempt, info.restore_summary
            );
        },
        |handle| {
            if controller.borrow().is_none() {
                controller.replace(Some(handle.controller()));
            }
            let signals = SIGNALS.load(Ordering::SeqCst);
            if signals >= 2 {
                eprintln!("\nstreamjob: cancelling without a savepoint");
                return MonitorAction::Cancel;
            }
            if signals == 1 && stop_requested.is_none() {
                eprintln!(
                    "\nstreamjob: Ctrl-C: stopping with a savepoint (Ctrl-C again to cancel)"
                );
                stop_requested =
                    Some(handle.request_snapshot(SnapshotType::Savepoint { stop: true }));
            }
            if let Some(reply) = &stop_requested {
                if let Ok(Err(reason)) = reply.try_recv() {
                    eprintln!("streamjob: savepoint failed ({reason}); the job keeps running");
                    SIGNALS.store(0, Ordering::SeqCst);
                    stop_requested = None;
                }
            }
            if progress && last_print.elapsed() >= Duration::from_secs(1) {
                let records = handle.source_records();
                let rate = (records.saturating_sub(last_records.get())) as f64
                    / last_print.elapsed().as_secs_f64();
                last_records.set(records);
                last_print = Instant::now();
                let p = handle.progress();
                let checkpoint = p.last_checkpoint.map_or("none yet".to_string(), |c| {
                    format!(
                        "#{} {} in {} ms",
                        c.id,
                        human_bytes(c.size_bytes),
                        c.duration.as_millis()
                    )
                });
                eprint!(
                    "\rattempt {} | {:>10.0} events/s | {:>12} events | last checkpoint {checkpoint}    ",
                    attempt_no.get(),
                    rate,
                    records
                );
                let _ = std::io::stderr().flush();
            }
            MonitorAction::Continue
        },
    )?;
    let ended = Instant::now();
    if progress {
        eprintln!();
    }
    let mut stats = RunStats {
        job: params.job().to_string(),
        parallelism: job.config.parallelism,
        attempt: attempt_no.get(),
        restarts: match &outcome {
            RunOutcome::Finished { restarts, .. }
            | RunOutcome::Stopped { restarts, .. }
            | RunOutcome::Cancelled { restarts } => *restarts,
        },
        ..RunStats::default()
    };
    if let Some(c) = controller.take() {
        let p = c.progress();
        stats.source_records = c.source_records();
        stats.alignment = c.alignment();
        if let Some(started) = p.run_started {
            stats.run_millis = p
                .run_ended
                .unwrap_or(ended)
                .duration_since(started)
                .as_millis() as u64;
            stats.input_millis = p
                .sources_finished
                .map(|f| f.duration_since(started).as_millis() as u64);
            let ended_cpu = p
                .run_ended_cpu
                .or_else(streamjob_engine::coordinator::process_cpu_time);
            stats.cpu_millis = p
                .run_started_cpu
                .zip(ended_cpu)
                .map(|(from, to)| to.saturating_sub(from).as_millis() as u64);
        }
        stats.restore_millis = p
            .attempt_started
            .zip(p.restored_at)
            .map(|(from, to)| to.saturating_duration_since(from).as_millis() as u64);
        if stats.restore_millis.is_some() {
            stats.restore_download_millis = p
                .attempt_started
                .zip(p.run_started)
                .map(|(from, to)| to.saturating_duration_since(from).as_millis() as u64);
        }
        stats.checkpoints = p.snapshots;
    }
    Ok((outcome, stats))
}

mod crossbeam_reply {
    pub type Reply = crossbeam_channel::Receiver<
        Result<streamjob_engine::coordinator::CompletedSnapshot, String>,
    >;
}

fn params_name(params: &JobParams) -> String {
    params.job().to_string()
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
