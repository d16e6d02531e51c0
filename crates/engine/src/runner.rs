//! Runs a job to its end in one process, restarting failed attempts from the latest complete and
//! verified checkpoint with exponential backoff (Flink's default restart strategy). Each attempt is
//! recorded in storage before it starts (create-if-absent), which fences every older attempt.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use streamjob_checkpoint::attempts::{
    read_attempts, start_attempt, AttemptError, AttemptRecord, SnapshotRef,
};
use streamjob_checkpoint::catalog::{find_restore_point, read_manifest, CatalogError, VerifyLevel};
use streamjob_checkpoint::decide::next_attempt;
use streamjob_checkpoint::layout::SnapshotLayout;
use streamjob_checkpoint::manifest::Manifest;
use streamjob_checkpoint::store::SnapshotStore;

use crate::config::JobConfig;
use crate::coordinator::{AttemptEnd, CompletedSnapshot};
use crate::job::{self, AttemptSpec, JobError, JobHandle};
use crate::stream::StreamEnv;

/// Why a job could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Snapshot storage failed.
    #[error("snapshot storage failed: {0}")]
    Catalog(#[from] CatalogError),
    /// The attempt could not be recorded.
    #[error(transparent)]
    Attempt(#[from] AttemptError),
    /// The job graph could not be built.
    #[error("failed to build the job: {0}")]
    Build(String),
    /// `--from` does not name a snapshot folder.
    #[error("{0:?} is not a snapshot folder: expected .../checkpoints/<attempt>-<id> or .../savepoints/<name>")]
    BadSnapshotPath(String),
    /// Too many failures.
    #[error("the job failed {restarts} times in a row without completing a checkpoint; last failure: {last}")]
    GaveUp { restarts: u32, last: String },
    /// The job cannot start from the requested snapshot.
    #[error("cannot start the job: {0}")]
    Fatal(JobError),
}

/// Restart behaviour and where to start.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Consecutive failed attempts (without a completed checkpoint in between) before giving up.
    pub max_restarts: u32,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Snapshot folder (key relative to the store root) to start from, instead of the latest.
    pub restore_from: Option<String>,
    /// Drop state of operators the job no longer has.
    pub allow_non_restored_state: bool,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            restore_from: None,
            allow_non_restored_state: false,
        }
    }
}

/// What the monitor wants after looking at a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorAction {
    /// Keep running.
    Continue,
    /// Stop the job (no snapshot).
    Cancel,
}

/// How the job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Bounded input processed and committed.
    Finished { attempts: u64, restarts: u32 },
    /// Stopped with a savepoint.
    Stopped {
        savepoint: CompletedSnapshot,
        restarts: u32,
    },
    /// Cancelled by the monitor.
    Cancelled { restarts: u32 },
}

/// Facts about the attempt being started, for logs and progress.
#[derive(Debug, Clone)]
pub struct AttemptInfo {
    /// Attempt number.
    pub attempt: u64,
    /// Where it restores from, and what was skipped (corrupt or fenced snapshots).
    pub restore_summary: String,
    /// Location of the snapshot restored, if any.
    pub restored_from: Option<String>,
}

/// Which snapshot an attempt starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreChoice {
    /// The newest usable checkpoint or savepoint (verified at this level).
    Latest(VerifyLevel),
    /// This snapshot folder (key relative to the job root).
    Snapshot(String),
    /// Empty state.
    Empty,
}

/// Decide the attempt number (the given one, or the next free one) and the snapshot to restore,
/// then record the attempt in storage (create-if-absent), fencing every older attempt. Returns the
/// attempt, the manifest and location to restore, and a summary for logs and status.
pub async fn begin_attempt(
    store: &dyn SnapshotStore,
    attempt: Option<u64>,
    choice: RestoreChoice,
) -> Result<(u64, Option<(Manifest, String)>, String), RunnerError> {
    let attempts = read_attempts(store).await.map_err(CatalogError::from)?;
    let snapshots = streamjob_checkpoint::catalog::list_snapshots(store).await?;
    let attempt = attempt.unwrap_or_else(|| next_attempt(&attempts, &snapshots));
    let (restore, summary) = match choice {
        RestoreChoice::Snapshot(dir) => {
            let (dir, _, _) = SnapshotLayout::parse_dir(&dir)
                .ok_or_else(|| RunnerError::BadSnapshotPath(dir.clone()))?;
            let manifest = read_manifest(store, &dir).await?;
            let location = store.location(&dir.path());
            let summary = format!("restoring {location} (given)");
            (Some((manifest, location)), summary)
        }
        RestoreChoice::Latest(level) => {
            let decision = find_restore_point(store, level).await?;
            let summary = decision.summary();
            let restore = decision.chosen.map(|c| {
                let location = store.location(&c.dir);
                (c.manifest, location)
            });
            (restore, summary)
        }
        RestoreChoice::Empty => (None, "starting with empty state (as requested)".to_string()),
    };
    let record = AttemptRecord {
        attempt,
        started_at_ms: now_ms(),
        restored_from: restore
            .as_ref()
            .map(|(m, location): &(Manifest, String)| SnapshotRef {
                attempt: m.attempt,
                checkpoint_id: m.checkpoint_id,
                location: location.clone(),
            }),
    };
    start_attempt(store, &record).await?;
    Ok((attempt, restore, summary))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run `build`'s job until it finishes, is stopped, or fails more than `max_restarts` times in a row.
/// `on_attempt` hears about each attempt; `monitor` is called about every 100 ms while it runs.
pub fn run_with_restarts<B, M>(
    config: &JobConfig,
    build: B,
    store: Arc<dyn SnapshotStore>,
    options: &RunnerOptions,
    runtime: &tokio::runtime::Handle,
    mut on_attempt: impl FnMut(&AttemptInfo),
    mut monitor: M,
) -> Result<RunOutcome, RunnerError>
where
    B: Fn(&StreamEnv) -> Result<(), String>,
    M: FnMut(&JobHandle) -> MonitorAction,
{
    let mut restarts = 0u32;
    let mut consecutive = 0u32;
    let mut backoff = options.backoff_initial;
    let mut explicit = options.restore_from.clone();
    // After a snapshot failed to load, verify candidates deeply (download + CRC) to skip corrupt ones.
    let mut level = VerifyLevel::Shallow;
    loop {
        // Decide the attempt number and the snapshot to restore, then record the attempt.
        let choice = match explicit.take() {
            Some(dir) => RestoreChoice::Snapshot(dir),
            None => RestoreChoice::Latest(level),
        };
        let begun = runtime.block_on(begin_attempt(store.as_ref(), None, choice.clone()));
        let (attempt, restore, summary) = match begun {
            Ok(v) => v,
            // Storage trouble while choosing the snapshot or recording the attempt: retry with
            // backoff like a failed attempt (the next try picks a fresh attempt number).
            Err(e @ (RunnerError::Catalog(_) | RunnerError::Attempt(AttemptError::Store(_)))) => {
                consecutive += 1;
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "cannot read snapshot storage; retrying");
                if consecutive > options.max_restarts {
                    return Err(e);
                }
                if let RestoreChoice::Snapshot(dir) = choice {
                    explicit = Some(dir);
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(options.backoff_max);
                continue;
            }
            Err(e) => return Err(e),
        };
        let info = AttemptInfo {
            attempt,
            restore_summary: summary,
            restored_from: restore.as_ref().map(|(_, l)| l.clone()),
        };
        tracing::info!(attempt, restore = %info.restore_summary, "starting job attempt");
        on_attempt(&info);

        let env = StreamEnv::new(config.clone());
        build(&env).map_err(RunnerError::Build)?;
        let graph = env.into_graph();
        let started = Instant::now();
        let spec = AttemptSpec {
            attempt,
            store: Arc::clone(&store),
            restore,
            allow_non_restored_state: options.allow_non_restored_state,
        };
        let outcome = match job::start(graph, spec, runtime) {
            Ok(handle) => {
                let mut cancelled = false;
                while !handle.is_finished() {
                    if !cancelled && monitor(&handle) == MonitorAction::Cancel {
                        handle.cancel();
                        cancelled = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let completed_any = handle.progress().completed > 0;
                let result = handle.join();
                if cancelled {
                    return Ok(RunOutcome::Cancelled { restarts });
                }
                (result, completed_any)
            }
            Err(e @ JobError::Restore(_)) => {
                // A snapshot that fails to load is corrupt: the next attempt skips it only if the
                // catalog sees it as unusable; a given (explicit) snapshot is fatal.
                if options.restore_from.is_some() && restarts == 0 {
                    return Err(RunnerError::Fatal(e));
                }
                level = VerifyLevel::Deep;
                (Err(e), false)
            }
            Err(e) => (Err(e), false),
        };
        match outcome {
            (Ok(AttemptEnd::Finished), _) => {
                return Ok(RunOutcome::Finished {
                    attempts: attempt,
                    restarts,
                })
            }
            (Ok(AttemptEnd::Stopped(savepoint)), _) => {
                return Ok(RunOutcome::Stopped {
                    savepoint,
                    restarts,
                })
            }
            (Err(e), completed_any) => {
                restarts += 1;
                if completed_any || started.elapsed() > options.backoff_max * 2 {
                    consecutive = 0;
                    backoff = options.backoff_initial;
                }
                consecutive += 1;
                tracing::warn!(attempt, error = %e, restarts, backoff_ms = backoff.as_millis() as u64, "job attempt failed; restarting from the latest checkpoint");
                if consecutive > options.max_restarts {
                    return Err(RunnerError::GaveUp {
                        restarts: consecutive - 1,
                        last: e.to_string(),
                    });
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(options.backoff_max);
            }
        }
    }
}
