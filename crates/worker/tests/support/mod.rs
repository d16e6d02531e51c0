//! Helpers of the built-in job tests: run a job by name in local mode (real file store,
//! checkpoints every 50 ms), read its committed output, compare multisets of lines.

pub mod reference;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streamjob_checkpoint::file_store::FileStore;
use streamjob_checkpoint::store::SnapshotStore;
use streamjob_engine::config::{CheckpointConfig, JobConfig};
use streamjob_engine::connectors::file_sink::committed_files;
use streamjob_engine::runner::{run_with_restarts, MonitorAction, RunOutcome, RunnerOptions};
use streamjob_engine::types::SnapshotType;
use streamjob_worker::jobs::{build_with_fault, validate, FaultHook, JobParams};

pub fn params(job: &str, values: &[(&str, &str)], output: &Path) -> JobParams {
    let mut map: BTreeMap<String, String> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert("output".into(), output.display().to_string());
    JobParams::new(job, map)
}

pub fn config(parallelism: u32) -> JobConfig {
    JobConfig::new("builtin-test", parallelism)
        .with_max_parallelism(32)
        .with_checkpoints(
            CheckpointConfig::enabled(Duration::from_millis(50))
                .with_timeout(Duration::from_secs(20)),
        )
}

/// How a run went.
pub struct Run {
    pub restarts: u32,
    /// Attempts that restored a checkpoint (rather than starting empty).
    pub restored: u32,
}

/// Run `job` to its end; `fault(attempt)` gives each attempt's fault hook.
pub fn run_job(
    job: &str,
    values: &[(&str, &str)],
    parallelism: u32,
    dir: &Path,
    fault: impl Fn(u64) -> Option<FaultHook>,
) -> Run {
    match run_job_with(job, values, parallelism, dir, fault, None, None) {
        (RunOutcome::Finished { restarts, .. }, restored) => Run { restarts, restored },
        (other, _) => panic!("{job}: {other:?}"),
    }
}

/// Run `job` from `restore_from` (a snapshot folder; default: the latest checkpoint), stopping with
/// a savepoint once the sources read `stop_after` records.
pub fn run_job_with(
    job: &str,
    values: &[(&str, &str)],
    parallelism: u32,
    dir: &Path,
    fault: impl Fn(u64) -> Option<FaultHook>,
    restore_from: Option<String>,
    stop_after: Option<u64>,
) -> (RunOutcome, u32) {
    let output = dir.join("out");
    let params = params(job, values, &output);
    validate(&params, parallelism).expect("valid parameters");
    let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(dir.join("snap")).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let attempt = AtomicU64::new(0);
    let mut restored = 0;
    let mut stop_requested = None;
    let options = RunnerOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        restore_from,
        ..RunnerOptions::default()
    };
    let outcome = run_with_restarts(
        &config(parallelism),
        |env| {
            let hook = fault(attempt.fetch_add(1, Ordering::SeqCst));
            build_with_fault(&params, env, hook).map_err(|e| e.to_string())
        },
        store,
        &options,
        runtime.handle(),
        |info| restored += u32::from(info.restored_from.is_some()),
        |handle| {
            if stop_requested.is_none() && stop_after.is_some_and(|n| handle.source_records() >= n)
            {
                stop_requested =
                    Some(handle.request_snapshot(SnapshotType::Savepoint { stop: true }));
            }
            MonitorAction::Continue
        },
    )
    .unwrap();
    (outcome, restored)
}

pub fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for file in committed_files(&dir.join("out")).unwrap() {
        let text = std::fs::read_to_string(file).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// Equal as multisets, with a readable difference.
pub fn assert_same_lines(what: &str, mut expected: Vec<String>, actual: Vec<String>) {
    expected.sort();
    if expected == actual {
        return;
    }
    let count = |lines: &[String]| {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        for l in lines {
            *m.entry(l.clone()).or_default() += 1;
        }
        m
    };
    let (e, a) = (count(&expected), count(&actual));
    let missing: Vec<_> = e
        .iter()
        .filter(|(l, n)| a.get(*l).copied().unwrap_or(0) < **n)
        .map(|(l, _)| l)
        .take(5)
        .collect();
    let extra: Vec<_> = a
        .iter()
        .filter(|(l, n)| e.get(*l).copied().unwrap_or(0) < **n)
        .map(|(l, _)| l)
        .take(5)
        .collect();
    panic!(
        "{what}: expected {} lines, got {}; missing {missing:?}; extra or repeated {extra:?}",
        expected.len(),
        actual.len()
    );
}

/// A hook panicking at the `threshold`-th record of an attempt (`None`: never).
pub fn panic_after(threshold: Option<u64>) -> Option<FaultHook> {
    let seen = Arc::new(AtomicU64::new(0));
    let hook: FaultHook = Arc::new(move || {
        if let Some(t) = threshold {
            if seen.fetch_add(1, Ordering::Relaxed) == t {
                panic!("injected failure after {t} records");
            }
        }
    });
    Some(hook)
}

/// No fault hook at all (the production job graph).
pub fn no_fault(_: u64) -> Option<FaultHook> {
    None
}
