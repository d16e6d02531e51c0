//! Exactly-once under failure, rescaling through savepoints, and corrupt snapshots, in local mode with
//! a real file store: the committed output must equal the failure-free run exactly (no loss, no
//! duplicates), compared line by line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use streamjob_checkpoint::file_store::FileStore;
use streamjob_checkpoint::layout::SnapshotLayout;
use streamjob_checkpoint::manifest::Manifest;
use streamjob_checkpoint::store::SnapshotStore;
use streamjob_engine::config::{CheckpointConfig, JobConfig, SnapshotCompression};
use streamjob_engine::connectors::file_sink::{committed_files, FileSink};
use streamjob_engine::connectors::nexmark::{Event, NexmarkConfig, NexmarkSource};
use streamjob_engine::operators::window::{Count, WindowAssigner, WindowResult};
use streamjob_engine::runner::{run_with_restarts, MonitorAction, RunOutcome, RunnerOptions};
use streamjob_engine::stream::StreamEnv;
use streamjob_engine::types::SnapshotType;

const EVENTS: u64 = 120_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(parallelism: u32, interval_ms: u64) -> JobConfig {
    JobConfig::new("windowed-count", parallelism)
        .with_max_parallelism(32)
        .with_checkpoints(
            CheckpointConfig::enabled(Duration::from_millis(interval_ms))
                .with_timeout(Duration::from_secs(20)),
        )
}

fn incremental_config(parallelism: u32, interval_ms: u64) -> JobConfig {
    let mut config = config(parallelism, interval_ms);
    config.checkpoints = config.checkpoints.with_incremental(true);
    config
}

/// Completed checkpoint manifests in a file store folder, oldest first.
fn checkpoint_manifests(snap: &Path) -> Vec<(String, Manifest)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(snap.join("checkpoints")) else {
        return out;
    };
    for entry in entries {
        let dir = entry.unwrap().path();
        if let Ok(bytes) = std::fs::read(dir.join("_manifest.json")) {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            out.push((name, Manifest::from_json(&bytes).unwrap()));
        }
    }
    out.sort_by_key(|(_, m)| (m.attempt, m.checkpoint_id));
    out
}

/// Checkpoints whose manifest references a state file of an earlier checkpoint folder.
fn incremental_manifests(snap: &Path) -> usize {
    checkpoint_manifests(snap)
        .iter()
        .filter(|(name, m)| {
            m.files()
                .any(|f| !f.key.starts_with(&format!("checkpoints/{name}/")))
        })
        .count()
}

/// Checkpoints that reference files an earlier attempt wrote (the chain adopted on restore).
fn adopting_manifests(snap: &Path) -> usize {
    checkpoint_manifests(snap)
        .iter()
        .filter(|(_, m)| {
            m.files().any(|f| {
                SnapshotLayout::dir_of_key(&f.key)
                    .and_then(|d| SnapshotLayout::parse_checkpoint_name(&d.name))
                    .is_some_and(|(attempt, _)| attempt < m.attempt)
            })
        })
        .count()
}

/// A fault hook that panics once, at a record count divisible by 1000, after `ready()` holds.
fn fail_once_when(ready: impl Fn() -> bool + Send + Sync + 'static) -> Arc<dyn Fn() + Send + Sync> {
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    Arc::new(move || {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) && !failed.load(Ordering::Relaxed) && ready() {
            failed.store(true, Ordering::Relaxed);
            panic!("injected failure");
        }
    })
}

/// Nexmark bids -> count per auction per 1 s window -> 2PC file sink; `chaos` may panic per record.
fn build(
    env: &StreamEnv,
    output: &Path,
    rate: Option<u64>,
    chaos: Arc<dyn Fn() + Send + Sync>,
) -> Result<(), String> {
    let output = output.to_path_buf();
    env.source("nexmark", move |_| {
        Box::new(NexmarkSource::new(
            NexmarkConfig::default(),
            Some(EVENTS),
            8,
            rate,
        ))
    })
    .flat_map("bids", |e: Event| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
    .map("chaos", move |b| {
        chaos();
        b
    })
    .key_by(|b| b.auction)
    .window(WindowAssigner::tumbling(1000), |b| b.date_time)
    .aggregate("count", Count)
    .map("chaos-after-window", |r: WindowResult<u64, u64>| r)
    .sink("sink", move |_| {
        Box::new(FileSink::new(
            output.clone(),
            |r: &WindowResult<u64, u64>, line: &mut String| {
                let _ = write!(line, "{},{},{}", r.key, r.start, r.value);
            },
        ))
    });
    Ok(())
}

fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for file in committed_files(dir).unwrap() {
        lines.extend(
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .map(str::to_string),
        );
    }
    lines.sort();
    lines
}

fn no_chaos() -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(|| {})
}

fn reference(tmp: &Path) -> Vec<String> {
    let out = tmp.join("reference-out");
    let store: Arc<dyn SnapshotStore> =
        Arc::new(FileStore::new(tmp.join("reference-snap")).unwrap());
    let rt = runtime();
    let outcome = run_with_restarts(
        &config(2, 100),
        |env| build(env, &out, None, no_chaos()),
        store,
        &RunnerOptions::default(),
        rt.handle(),
        |_| {},
        |_| MonitorAction::Continue,
    )
    .unwrap();
    assert!(
        matches!(outcome, RunOutcome::Finished { restarts: 0, .. }),
        "{outcome:?}"
    );
    let lines = output_lines(&out);
    assert!(
        lines.len() > 100,
        "the reference run produced too little output: {}",
        lines.len()
    );
    lines
}

/// Run the job from snapshot folder `dir` (no failures) until its input ends.
fn resume_to_the_end(
    config: &JobConfig,
    dir: String,
    store: Arc<dyn SnapshotStore>,
    out: &Path,
    rt: &tokio::runtime::Runtime,
) {
    let options = RunnerOptions {
        restore_from: Some(dir),
        ..RunnerOptions::default()
    };
    let outcome = run_with_restarts(
        config,
        |env| build(env, out, None, no_chaos()),
        store,
        &options,
        rt.handle(),
        |_| {},
        |_| MonitorAction::Continue,
    )
    .unwrap();
    assert!(
        matches!(outcome, RunOutcome::Finished { .. }),
        "{outcome:?}"
    );
}

fn assert_same_output(expected: &[String], actual: &[String]) {
    let count = |lines: &[String]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for l in lines {
            *m.entry(l.clone()).or_default() += 1;
        }
        m
    };
    let (e, a) = (count(expected), count(actual));
    let lost: Vec<_> = e.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
    let duplicated: Vec<_> = a.iter().filter(|(_, &n)| n > 1).take(5).collect();
    let unexpected: Vec<_> = a.keys().filter(|k| !e.contains_key(*k)).take(5).collect();
    assert!(
        lost.is_empty() && duplicated.is_empty() && unexpected.is_empty() && expected.len() == actual.len(),
        "output differs from the failure-free run: expected {} lines, got {}; lost {lost:?}; duplicated {duplicated:?}; unexpected {unexpected:?}",
        expected.len(),
        actual.len()
    );
}

#[test]
fn exactly_once_through_random_operator_failures() {
    random_operator_failures(false);
}

#[test]
fn incremental_checkpoints_are_exactly_once_through_random_operator_failures() {
    random_operator_failures(true);
}

fn random_operator_failures(incremental: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    let job_config = if incremental {
        incremental_config(2, 40)
    } else {
        config(2, 40)
    };
    for seed in [1u64, 2, 3] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let out = tmp.path().join(format!("out-{seed}"));
        let store: Arc<dyn SnapshotStore> =
            Arc::new(FileStore::new(tmp.path().join(format!("snap-{seed}"))).unwrap());
        // Each of the first `failures` attempts panics after a random number of records (small
        // enough that every failing attempt still has that many records left after its restore).
        let failures = 3u64;
        let thresholds: Vec<u64> = (0..failures)
            .map(|_| rng.random_range(1_000..25_000))
            .collect();
        eprintln!("seed {seed}: failures after {thresholds:?} records");
        let attempt = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let rt = runtime();
        let options = RunnerOptions {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..RunnerOptions::default()
        };
        let outcome = run_with_restarts(
            &job_config,
            |env| {
                let n = attempt.fetch_add(1, Ordering::SeqCst);
                seen.store(0, Ordering::SeqCst);
                let threshold = thresholds.get(n as usize).copied();
                let seen = Arc::clone(&seen);
                build(
                    env,
                    &out,
                    Some(150_000),
                    Arc::new(move || {
                        if let Some(t) = threshold {
                            if seen.fetch_add(1, Ordering::Relaxed) == t {
                                panic!("injected failure after {t} records");
                            }
                        }
                    }),
                )
            },
            Arc::clone(&store),
            &options,
            rt.handle(),
            |_| {},
            |_| MonitorAction::Continue,
        )
        .unwrap();
        match outcome {
            RunOutcome::Finished { restarts, .. } => {
                assert_eq!(restarts, failures as u32, "seed {seed}")
            }
            other => panic!("seed {seed}: {other:?}"),
        }
        assert_same_output(&expected, &output_lines(&out));
        let chained = incremental_manifests(&tmp.path().join(format!("snap-{seed}")));
        if incremental {
            assert!(
                chained > 0,
                "seed {seed}: no checkpoint referenced an earlier one's files"
            );
        } else {
            assert_eq!(
                chained, 0,
                "seed {seed}: full checkpoints must be self-contained"
            );
        }
    }
}

#[test]
fn rescale_through_savepoint_gives_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    for new_parallelism in [1u32, 4] {
        let out = tmp.path().join(format!("out-{new_parallelism}"));
        let snap = tmp.path().join(format!("snap-{new_parallelism}"));
        let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(&snap).unwrap());
        let rt = runtime();
        // Run at parallelism 2, stop with a savepoint part-way.
        let started = Instant::now();
        let mut reply = None;
        let outcome = run_with_restarts(
            &config(2, 100),
            |env| build(env, &out, Some(60_000), no_chaos()),
            Arc::clone(&store),
            &RunnerOptions::default(),
            rt.handle(),
            |_| {},
            |handle| {
                if reply.is_none() && started.elapsed() > Duration::from_millis(700) {
                    reply = Some(handle.request_snapshot(SnapshotType::Savepoint { stop: true }));
                }
                MonitorAction::Continue
            },
        )
        .unwrap();
        let RunOutcome::Stopped { savepoint, .. } = outcome else {
            panic!("expected a stop with savepoint, got {outcome:?}");
        };
        let partial = output_lines(&out);
        assert!(
            partial.len() < expected.len(),
            "the savepoint came too late to test anything"
        );
        // Resume at another parallelism from the savepoint.
        let dir = savepoint
            .location
            .rsplit_once("/savepoints/")
            .map(|(_, name)| format!("savepoints/{name}"))
            .unwrap();
        resume_to_the_end(&config(new_parallelism, 100), dir, store, &out, &rt);
        assert_same_output(&expected, &output_lines(&out));
    }
}

#[test]
fn corrupt_newest_checkpoint_is_skipped_on_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    let out = tmp.path().join("out");
    let snap = tmp.path().join("snap");
    let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(&snap).unwrap());
    let rt = runtime();
    let attempt = Arc::new(AtomicU64::new(0));
    let corrupted = Arc::new(std::sync::Mutex::new(None::<String>));
    let options = RunnerOptions {
        backoff_initial: Duration::from_millis(10),
        ..RunnerOptions::default()
    };
    let mut infos = Vec::new();
    let outcome = run_with_restarts(
        &config(2, 50),
        |env| {
            let n = attempt.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::new(AtomicU64::new(0));
            build(
                env,
                &out,
                Some(100_000),
                Arc::new(move || {
                    // The first attempt fails after two thirds of the records.
                    if n == 0 && seen.fetch_add(1, Ordering::Relaxed) == EVENTS * 2 / 3 * 46 / 50 {
                        panic!("injected failure");
                    }
                }),
            )
        },
        Arc::clone(&store),
        &options,
        rt.handle(),
        |info| {
            // Before the second attempt restores, corrupt a state file of the newest checkpoint.
            if info.attempt == 2 && corrupted.lock().unwrap().is_none() {
                let checkpoints = snap.join("checkpoints");
                let mut dirs: Vec<_> = std::fs::read_dir(&checkpoints)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.join("_manifest.json").exists())
                    .collect();
                dirs.sort();
                let newest = dirs.last().expect("a completed checkpoint").clone();
                let state = newest.join("count").join("0000.state");
                let mut bytes = std::fs::read(&state).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0xff;
                std::fs::write(&state, bytes).unwrap();
                *corrupted.lock().unwrap() =
                    Some(newest.file_name().unwrap().to_string_lossy().to_string());
            }
            infos.push(info.clone());
        },
        |_| MonitorAction::Continue,
    )
    .unwrap();
    assert!(
        matches!(outcome, RunOutcome::Finished { .. }),
        "{outcome:?}"
    );
    let corrupted = corrupted
        .lock()
        .unwrap()
        .clone()
        .expect("a checkpoint was corrupted");
    // Some attempt reported the corrupt checkpoint as skipped and restored an older one.
    assert!(
        infos.iter().any(|i| i.restore_summary.contains(&corrupted)
            && !i
                .restored_from
                .as_deref()
                .unwrap_or("")
                .contains(&corrupted)),
        "no attempt reported skipping {corrupted}: {infos:?}"
    );
    assert_same_output(&expected, &output_lines(&out));
}

#[test]
fn exactly_once_through_snapshot_upload_and_restore_failures() {
    snapshot_upload_and_restore_failures(false, SnapshotCompression::None);
}

#[test]
fn incremental_checkpoints_are_exactly_once_through_upload_and_restore_failures() {
    snapshot_upload_and_restore_failures(true, SnapshotCompression::None);
}

/// The same with LZ4-compressed state files: the restores read them back exactly.
#[test]
fn compressed_incremental_checkpoints_are_exactly_once_through_upload_and_restore_failures() {
    snapshot_upload_and_restore_failures(true, SnapshotCompression::Lz4);
}

fn snapshot_upload_and_restore_failures(incremental: bool, compression: SnapshotCompression) {
    use streamjob_checkpoint::memory_store::MemoryStore;
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    let out = tmp.path().join("out");
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn SnapshotStore> = memory.clone();
    let rt = runtime();
    let options = RunnerOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..RunnerOptions::default()
    };
    let attempt = Arc::new(AtomicU64::new(0));
    let mut ticks = 0u64;
    let mut failed_checkpoints = 0u64;
    let mut job_config = if incremental {
        incremental_config(2, 30)
    } else {
        config(2, 30)
    };
    job_config.checkpoints = job_config.checkpoints.with_compression(compression);
    let outcome = run_with_restarts(
        &job_config,
        |env| {
            let n = attempt.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::new(AtomicU64::new(0));
            build(
                env,
                &out,
                Some(100_000),
                Arc::new(move || {
                    // The first attempt fails mid-way, so the second one must restore.
                    if n == 0 && seen.fetch_add(1, Ordering::Relaxed) == 40_000 {
                        panic!("injected failure");
                    }
                }),
            )
        },
        store,
        &options,
        rt.handle(),
        |info| {
            if info.attempt == 2 {
                // The restore's first read fails: that attempt fails and the next one restores.
                memory.fail_next_gets(1);
            }
        },
        |handle| {
            ticks += 1;
            if ticks.is_multiple_of(3) {
                // Every ~300 ms the next two uploads fail: those checkpoints are aborted.
                memory.fail_next_puts(2);
            }
            failed_checkpoints = failed_checkpoints.max(handle.progress().failed);
            MonitorAction::Continue
        },
    )
    .unwrap();
    let RunOutcome::Finished { restarts, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        restarts >= 2,
        "expected the injected task failure and restore failure, got {restarts} restarts"
    );
    assert!(
        failed_checkpoints > 0,
        "no checkpoint failed: upload faults were not exercised"
    );
    assert_same_output(&expected, &output_lines(&out));
    // The state files are in the format the setting asks for (format 3 carries a codec per key
    // group), so the restores above read what compression wrote.
    let formats: BTreeSet<u8> = rt.block_on(async {
        let mut formats = BTreeSet::new();
        for object in memory.list("checkpoints/").await.unwrap() {
            if object.key.ends_with(".state") {
                let bytes = memory.get(&object.key).await.unwrap();
                if bytes.starts_with(b"SJSF") {
                    formats.insert(bytes[4]);
                }
            }
        }
        formats
    });
    let want = match compression {
        SnapshotCompression::None => 2,
        SnapshotCompression::Lz4 => 3,
    };
    assert_eq!(formats, BTreeSet::from([want]), "state file formats");
}

/// Restores an incremental checkpoint (not a savepoint) at another parallelism: each new subtask
/// gathers its key groups' images and changes from the old subtasks' chains.
#[test]
fn incremental_checkpoint_restores_at_another_parallelism() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    for new_parallelism in [1u32, 3] {
        let out = tmp.path().join(format!("out-{new_parallelism}"));
        let snap = tmp.path().join(format!("snap-{new_parallelism}"));
        let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(&snap).unwrap());
        let rt = runtime();
        let options = |restore_from: Option<String>| RunnerOptions {
            max_restarts: 0,
            restore_from,
            ..RunnerOptions::default()
        };
        // Run at parallelism 2 until several incremental checkpoints completed, then fail hard
        // (no restarts) so the checkpoints stay as they are.
        let snap_for_chaos = snap.clone();
        let chaos = fail_once_when(move || incremental_manifests(&snap_for_chaos) >= 3);
        let outcome = run_with_restarts(
            &incremental_config(2, 40),
            |env| build(env, &out, Some(100_000), Arc::clone(&chaos)),
            Arc::clone(&store),
            &options(None),
            rt.handle(),
            |_| {},
            |_| MonitorAction::Continue,
        );
        assert!(outcome.is_err(), "the first run should fail: {outcome:?}");
        let (name, newest) = checkpoint_manifests(&snap).pop().expect("a checkpoint");
        assert!(
            newest
                .files()
                .any(|f| !f.key.starts_with(&format!("checkpoints/{name}/"))),
            "the newest checkpoint {name} is not incremental"
        );
        assert!(
            output_lines(&out).len() < expected.len(),
            "the failure came too late"
        );
        // Restore it at the new parallelism; its incremental checkpoints build on the restored
        // files (each new subtask lists files of old subtasks that also hold other groups). Fail
        // again once one such checkpoint completed.
        let snap_for_chaos = snap.clone();
        let chaos = fail_once_when(move || adopting_manifests(&snap_for_chaos) >= 1);
        let outcome = run_with_restarts(
            &incremental_config(new_parallelism, 40),
            |env| build(env, &out, Some(100_000), Arc::clone(&chaos)),
            Arc::clone(&store),
            &options(Some(format!("checkpoints/{name}"))),
            rt.handle(),
            |_| {},
            |_| MonitorAction::Continue,
        );
        assert!(
            outcome.is_err(),
            "no checkpoint of the restored attempt built on the restored files: {outcome:?}"
        );
        let (name, newest) = checkpoint_manifests(&snap).pop().expect("a checkpoint");
        assert_eq!(
            newest.parallelism, new_parallelism,
            "the newest checkpoint {name} is the restored attempt's"
        );
        assert!(
            output_lines(&out).len() < expected.len(),
            "the second failure came too late"
        );
        // And restore that one at parallelism 2 again, to the end: exactly the reference output.
        resume_to_the_end(
            &incremental_config(2, 40),
            format!("checkpoints/{name}"),
            store,
            &out,
            &rt,
        );
        assert_same_output(&expected, &output_lines(&out));
    }
}
