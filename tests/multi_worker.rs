//! A job attempt split over several real `streamjob worker` processes that exchange records over
//! TCP: the committed output equals a single-process run, and a worker killed at any time (one
//! running subtasks, or worker 0 with the coordinator) fails the whole attempt, after which a new
//! attempt restores every worker from the latest checkpoint without loss or duplicates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, output_lines, status, wait_for, BIN};
const TOKEN: &str = "test-token";

fn manifest(dir: &Path, name: &str, parallelism: u32, rate: u64) -> PathBuf {
    manifest_with(dir, name, parallelism, rate, false)
}

fn manifest_with(
    dir: &Path,
    name: &str,
    parallelism: u32,
    rate: u64,
    incremental: bool,
) -> PathBuf {
    let path = dir.join(format!("{name}-{parallelism}.yaml"));
    let text = format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\nspec:\n  parallelism: {parallelism}\n  maxParallelism: 32\n  job:\n    name: windowed-count\n    params: {{events: 200000, rate: {rate}, splits: 8, window: 1s, output: {out}}}\n  checkpoint: {{interval: 150ms, incremental: {incremental}}}\n  storage: {{path: {snap}}}\n",
        out = dir.join("out").display(),
        snap = dir.join("snap").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

struct Worker {
    child: Child,
    control: u16,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `workers` processes of `attempt`; worker 0 listens on the first exchange port.
fn start_attempt(job: &Path, workers: u32, attempt: u64, restore: &str) -> Vec<Worker> {
    let exchange: Vec<u16> = (0..workers).map(|_| free_port()).collect();
    (0..workers)
        .map(|w| {
            let control = free_port();
            let mut cmd = Command::new(BIN);
            cmd.args(["worker", "--job-file"])
                .arg(job)
                .args(["--attempt", &attempt.to_string(), "--restore", restore])
                .args(["--listen", &format!("127.0.0.1:{control}")])
                .args(["--worker-index", &w.to_string()])
                .args(["--workers", &workers.to_string()])
                .args([
                    "--exchange-listen",
                    &format!("127.0.0.1:{}", exchange[w as usize]),
                ])
                .args(["--form-timeout-seconds", "30"])
                .env("STREAMJOB_CONTROL_TOKEN", TOKEN)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if w > 0 {
                cmd.args(["--coordinator", &format!("127.0.0.1:{}", exchange[0])]);
            }
            Worker {
                child: cmd.spawn().expect("start streamjob worker"),
                control,
            }
        })
        .collect()
}

fn wait_exit(worker: &mut Worker, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(code) = worker.child.try_wait().unwrap() {
            return code;
        }
        assert!(
            Instant::now() < deadline,
            "a worker did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reference(tmp: &Path) -> Vec<String> {
    let dir = tmp.join("reference");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new(BIN)
        .arg("run")
        .arg(manifest(&dir, "ref", 2, 0))
        .arg("--quiet")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let lines = output_lines(&dir.join("out"));
    assert!(lines.len() > 100);
    lines
}

/// The most subtasks of operator `id` found in one checkpoint of `snap`.
fn most_subtasks_in_a_checkpoint(snap: &Path, id: &str) -> usize {
    let mut most = 0;
    for dir in std::fs::read_dir(snap.join("checkpoints")).unwrap() {
        let Ok(text) = std::fs::read_to_string(dir.unwrap().path().join("_manifest.json")) else {
            continue;
        };
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        for operator in manifest["operators"].as_array().unwrap() {
            if operator["operatorId"] == id {
                most = most.max(operator["subtasks"].as_array().unwrap().len());
            }
        }
    }
    most
}

#[test]
fn three_workers_commit_exactly_the_single_process_output() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    let dir = tmp.path().join("three");
    std::fs::create_dir_all(&dir).unwrap();
    let job = manifest(&dir, "three", 4, 100_000);

    let mut workers = start_attempt(&job, 3, 1, "none");
    wait_for("worker 1 to run", Duration::from_secs(30), || {
        status(workers[1].control).is_some_and(|s| s["state"] == "running")
    });
    let member = status(workers[1].control).unwrap();
    assert_eq!(
        (member["worker"].clone(), member["workers"].clone()),
        (1.into(), 3.into())
    );
    assert_eq!(member["attempt"], 1);
    // Watermark alignment, as each worker reports it while the job runs (and briefly after).
    let mut pauses = vec![0u64; workers.len()];
    let mut max_drift_ms = 0i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while workers
        .iter_mut()
        .any(|w| w.child.try_wait().unwrap().is_none())
    {
        assert!(Instant::now() < deadline, "the workers did not finish");
        for (i, w) in workers.iter().enumerate() {
            if let Some(s) = status(w.control) {
                pauses[i] = pauses[i].max(s["alignment"]["pauses"].as_u64().unwrap());
                max_drift_ms = max_drift_ms.max(s["alignment"]["maxDriftMs"].as_i64().unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in workers.iter_mut() {
        let code = wait_exit(w, Duration::from_secs(120));
        assert!(code.success(), "a worker failed: {code:?}");
    }
    assert_eq!(output_lines(&dir.join("out")), expected);
    // Sources waited for the others' watermarks to arrive over the control links: until a remote
    // subtask's first report arrives it counts as "no watermark yet", so the worker whose source
    // emits the first watermark of the attempt always pauses (reports go out within milliseconds
    // now, so a worker that starts later may find the others' watermarks already there and never
    // pause). And no source read beyond the drift (the 1 s window) plus one batch (1,024 events of
    // a subtask with at least one of the 8 splits: at most 8,192 event indices of 100 µs).
    assert!(
        pauses.iter().any(|&p| p > 0),
        "pauses per worker: {pauses:?}"
    );
    assert!(max_drift_ms <= 1_000 + 820, "drift {max_drift_ms} ms");
    // The 4 window subtasks (spread over 3 processes) all acknowledged into one checkpoint.
    assert_eq!(
        most_subtasks_in_a_checkpoint(&dir.join("snap"), "count-per-auction"),
        4
    );
}

#[test]
fn a_killed_worker_fails_the_attempt_and_the_next_attempt_restores_exactly() {
    killed_workers(false);
}

/// The same with incremental checkpoints: tasks on both workers build on their earlier files, and
/// each restore reads the chains the coordinator on worker 0 recorded.
#[test]
fn incremental_checkpoints_across_workers_restore_exactly() {
    killed_workers(true);
}

/// Manifests of completed checkpoints that list a file of an earlier checkpoint folder.
fn incremental_manifests(snap: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(snap.join("checkpoints")) else {
        return 0;
    };
    entries
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let text = std::fs::read_to_string(dir.join("_manifest.json")).ok()?;
            let own = format!("checkpoints/{}/", dir.file_name()?.to_string_lossy());
            let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
            let refs_earlier = manifest["operators"]
                .as_array()?
                .iter()
                .flat_map(|o| o["subtasks"].as_array().cloned().unwrap_or_default())
                .flat_map(|s| s["files"].as_array().cloned().unwrap_or_default())
                .any(|f| f["key"].as_str().is_some_and(|k| !k.starts_with(&own)));
            refs_earlier.then_some(())
        })
        .count()
}

fn killed_workers(incremental: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    let dir = tmp.path().join("kill");
    std::fs::create_dir_all(&dir).unwrap();
    let job = manifest_with(&dir, "kill", 4, 50_000, incremental);
    let out = dir.join("out");

    // Attempt 1: kill worker 1 (subtasks only) after two checkpoints; worker 0 must fail.
    let mut first = start_attempt(&job, 2, 1, "none");
    wait_for("two checkpoints", Duration::from_secs(60), || {
        status(first[0].control).is_some_and(|s| s["lastCheckpoint"]["id"].as_u64() >= Some(2))
    });
    first[1].child.kill().unwrap();
    let code = wait_exit(&mut first[0], Duration::from_secs(30));
    assert!(!code.success(), "worker 0 ended well after losing worker 1");
    let after_first = output_lines(&out).len();
    assert!(
        after_first < expected.len(),
        "killed too late to test anything"
    );

    // Attempt 2: kill worker 0 (the coordinator); worker 1 must fail on its own.
    let mut second = start_attempt(&job, 2, 2, "latest");
    wait_for("a checkpoint of attempt 2", Duration::from_secs(60), || {
        status(second[0].control).is_some_and(|s| {
            s["restoredFrom"]
                .as_str()
                .is_some_and(|r| r.contains("/checkpoints/000001-"))
                && s["lastCheckpoint"]["attempt"] == 2
        })
    });
    // Each worker downloaded only the files with its own key groups (and the list state).
    for (index, w) in second.iter().enumerate() {
        let download = status(w.control).expect("status of attempt 2")["restoreDownload"].clone();
        let (files, downloaded, skipped) = (
            download["files"].as_u64().unwrap_or(0),
            download["downloaded"].as_u64().unwrap_or(0),
            download["skippedBytes"].as_u64().unwrap_or(0),
        );
        assert!(
            downloaded > 0 && downloaded < files && skipped > 0,
            "worker {index} downloaded {downloaded} of {files} files, skipping {skipped} bytes: {download}"
        );
    }
    second[0].child.kill().unwrap();
    let code = wait_exit(&mut second[1], Duration::from_secs(30));
    assert!(!code.success(), "worker 1 ended well after losing worker 0");

    // Attempt 3 runs to the end; the output is exactly the failure-free one.
    let mut third = start_attempt(&job, 2, 3, "latest");
    for w in third.iter_mut() {
        let code = wait_exit(w, Duration::from_secs(120));
        assert!(code.success(), "attempt 3 failed: {code:?}");
    }
    assert_eq!(output_lines(&out), expected);
    let chained = incremental_manifests(&dir.join("snap"));
    if incremental {
        assert!(
            chained > 0,
            "no checkpoint listed an earlier checkpoint's file"
        );
    } else {
        assert_eq!(chained, 0, "full checkpoints list only their own files");
    }
}
