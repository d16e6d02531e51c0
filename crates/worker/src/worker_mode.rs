//! `streamjob worker`: one job attempt in a pod. The operator decides the attempt number and the
//! snapshot to restore and passes them in; the worker records the attempt (fencing older ones), runs
//! the job with its periodic checkpoints, serves the control API, and exits: 0 when the job finished
//! or stopped with a savepoint, non-zero when the attempt failed (the operator starts a new one).
//!
//! A job can run on several workers (`--workers N`): worker 0 records the attempt, chooses the
//! snapshot and hosts the job coordinator; workers 1..N join it at `--coordinator`, learn the attempt
//! and the snapshot from it, and exchange records with every other worker over TCP. One worker that
//! fails or disappears fails the attempt on all of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamjob_checkpoint::catalog::VerifyLevel;
use streamjob_checkpoint::url::open_store;
use streamjob_engine::cluster::{ClusterBinding, ClusterError, ClusterSpec};
use streamjob_engine::coordinator::AttemptEnd;
use streamjob_engine::job::{self, AttemptSpec};
use streamjob_engine::runner::{begin_attempt, RestoreChoice};
use streamjob_engine::stream::StreamEnv;

use crate::control_api::{router, ControlState, RunState};
use crate::jobs;
use crate::local::{prepare, LocalError, LocalOptions};

/// Why a worker could not run its attempt.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The job description is invalid.
    #[error(transparent)]
    Job(#[from] LocalError),
    /// The attempt could not be recorded or its snapshot chosen.
    #[error(transparent)]
    Attempt(#[from] streamjob_engine::runner::RunnerError),
    /// The attempt failed to start or while running.
    #[error(transparent)]
    Run(#[from] streamjob_engine::job::JobError),
    /// The control API could not listen.
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The I/O runtime could not start.
    #[error("failed to start the I/O runtime: {0}")]
    Runtime(std::io::Error),
    /// Storage could not be opened.
    #[error("cannot open snapshot storage {url}: {reason}")]
    Storage { url: String, reason: String },
    /// The workers of the attempt could not form.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// This worker's place among the workers of a multi-worker attempt.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This worker's index (0 hosts the job coordinator).
    pub worker: u32,
    /// Workers of the attempt.
    pub workers: u32,
    /// Address of the exchange port (data channels, control links).
    pub listen: SocketAddr,
    /// `host:port` other workers use to reach this one.
    pub advertise: String,
    /// Worker 0's exchange address (`host:port`), for workers 1..N.
    pub coordinator: Option<String>,
    /// How long forming the attempt may take.
    pub form_timeout: Duration,
}

/// Options of `streamjob worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The StreamJob manifest rendered by the operator (spec.job, parallelism, checkpoint, storage).
    pub job: LocalOptions,
    /// Attempt number assigned by the operator (`None`: the next free one).
    pub attempt: Option<u64>,
    /// `latest`, `none`, or a snapshot folder relative to the job's storage root.
    pub restore: String,
    /// Control API address.
    pub listen: SocketAddr,
    /// Bearer token for mutating control calls.
    pub token: Option<String>,
    /// The worker's place in a multi-worker attempt (`None`: one worker runs every subtask).
    pub cluster: Option<ClusterOptions>,
}

/// How the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Finished or stopped with a savepoint.
    Done,
    /// Terminated by a signal (the pod is being deleted).
    Terminated,
}

/// Run the worker until its attempt ends.
pub fn run_worker(options: WorkerOptions) -> Result<WorkerExit, WorkerError> {
    let prepared = prepare(&options.job)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("streamjob-io")
        .build()
        .map_err(WorkerError::Runtime)?;
    let store = runtime
        .block_on(open_store(
            &prepared.storage_url,
            prepared.s3.clone().with_env_defaults(),
        ))
        .map_err(|e| WorkerError::Storage {
            url: prepared.storage_url.clone(),
            reason: e.to_string(),
        })?;
    let (worker, workers) = options
        .cluster
        .as_ref()
        .map_or((0, 1), |c| (c.worker, c.workers));
    let state = Arc::new(ControlState {
        job: prepared.config.name.clone(),
        attempt: AtomicU64::new(options.attempt.unwrap_or(0)),
        worker: (worker, workers),
        restored_from: Mutex::new(None),
        restore_download: Mutex::new(None),
        token: options.token.clone(),
        snapshot_timeout: prepared.config.checkpoints.timeout + Duration::from_secs(5),
        controller: Mutex::new(None),
        state: Mutex::new(RunState::Starting),
        failure: Mutex::new(None),
        final_progress: Mutex::new(None),
        final_alignment: Mutex::new(Default::default()),
    });

    // The control API answers health checks while the attempt forms and restores.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(options.listen))
        .map_err(|source| WorkerError::Listen {
            addr: options.listen,
            source,
        })?;
    let app = router(Arc::clone(&state));
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    let terminated = Arc::new(AtomicBool::new(false));
    {
        let terminated = Arc::clone(&terminated);
        runtime.spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                terminated.store(true, Ordering::SeqCst);
            }
        });
    }

    // Bind the exchange port before anything slow, so the other workers can already connect.
    let binding = match &options.cluster {
        Some(c) if c.workers > 1 => Some(ClusterBinding::bind(ClusterSpec {
            job: prepared.config.name.clone(),
            worker: c.worker,
            workers: c.workers,
            listen: c.listen,
            advertise: c.advertise.clone(),
            coordinator: c.coordinator.clone(),
            form_timeout: c.form_timeout,
        })?),
        _ => None,
    };
    let (attempt, restore, cluster) = match binding {
        Some(binding) if worker > 0 => {
            let (node, formed) = binding.join(options.attempt)?;
            let summary = match &formed.restore {
                Some((_, location)) => format!("restoring {location} (chosen by worker 0)"),
                None => "starting with empty state (chosen by worker 0)".to_string(),
            };
            tracing::info!(attempt = formed.attempt, worker, restore = %summary, "joined the attempt");
            (formed.attempt, formed.restore, Some(node))
        }
        binding => {
            let choice = match options.restore.as_str() {
                "latest" | "" => RestoreChoice::Latest(VerifyLevel::Deep),
                "none" => RestoreChoice::Empty,
                dir => RestoreChoice::Snapshot(dir.to_string()),
            };
            let (attempt, restore, summary) =
                runtime.block_on(begin_attempt(store.as_ref(), options.attempt, choice))?;
            tracing::info!(attempt, restore = %summary, "worker attempt recorded");
            let node = match binding {
                Some(b) => Some(b.form_as_coordinator(attempt, restore.clone())?),
                None => None,
            };
            (attempt, restore, node)
        }
    };
    state.attempt.store(attempt, Ordering::Relaxed);
    if let Ok(mut r) = state.restored_from.lock() {
        *r = restore.as_ref().map(|(_, l)| l.clone());
    }

    let env = match cluster {
        Some(node) => StreamEnv::distributed(prepared.config.clone(), node)
            .map_err(|e| WorkerError::Cluster(ClusterError::Layout(e)))?,
        None => StreamEnv::new(prepared.config.clone()),
    };
    jobs::build(&prepared.params, &env).map_err(LocalError::Job)?;
    let spec = AttemptSpec {
        attempt,
        store,
        restore,
        allow_non_restored_state: prepared.runner.allow_non_restored_state,
    };
    let handle = job::start(env.into_graph(), spec, runtime.handle())?;
    if let Ok(mut d) = state.restore_download.lock() {
        *d = handle.restore_download();
    }
    if let Ok(mut c) = state.controller.lock() {
        *c = Some(handle.controller());
    }
    if let Ok(mut s) = state.state.lock() {
        *s = RunState::Running;
    }
    let mut exit = WorkerExit::Done;
    while !handle.is_finished() {
        if terminated.load(Ordering::SeqCst) {
            tracing::warn!(
                attempt,
                "SIGTERM: cancelling the attempt (checkpoints already taken stay valid)"
            );
            handle.cancel();
            exit = WorkerExit::Terminated;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let progress = handle.progress();
    if let Ok(mut p) = state.final_progress.lock() {
        *p = Some(progress);
    }
    let alignment = handle.controller().alignment();
    if let Ok(mut a) = state.final_alignment.lock() {
        *a = alignment;
    }
    if alignment.pauses > 0 {
        tracing::info!(
            attempt,
            pauses = alignment.pauses,
            max_drift_ms = alignment.max_drift_ms,
            "watermark alignment paused source subtasks"
        );
    }
    if let Ok(mut c) = state.controller.lock() {
        *c = None;
    }
    let result = handle.join();
    let (run_state, outcome) = match result {
        Ok(AttemptEnd::Finished) => (RunState::Finished, Ok(exit)),
        Ok(AttemptEnd::Stopped(_)) => (RunState::Stopped, Ok(exit)),
        Err(e) => {
            if let Ok(mut f) = state.failure.lock() {
                *f = Some(e.to_string());
            }
            (
                RunState::Failed,
                if exit == WorkerExit::Terminated {
                    Ok(exit)
                } else {
                    Err(WorkerError::Run(e))
                },
            )
        }
    };
    if let Ok(mut s) = state.state.lock() {
        *s = run_state;
    }
    // Give a caller waiting on the stop-with-savepoint response and status pollers a moment.
    std::thread::sleep(Duration::from_millis(300));
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}
