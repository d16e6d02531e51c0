//! Real `streamjob worker` processes: the control API (status, auth, stop-with-savepoint), and
//! exactly-once output across a SIGKILLed worker and a restore, compared with a local-mode run of the
//! same job.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::{http, output_lines, start_worker, status, wait_for, BIN, TOKEN};

fn manifest(dir: &Path, name: &str, parallelism: u32, rate: u64) -> PathBuf {
    let path = dir.join(format!("{name}-{parallelism}.yaml"));
    let text = format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\nspec:\n  parallelism: {parallelism}\n  maxParallelism: 32\n  job:\n    name: windowed-count\n    params: {{events: 150000, rate: {rate}, splits: 8, window: 1s, output: {out}}}\n  checkpoint: {{interval: 150ms}}\n  storage: {{path: {snap}}}\n",
        out = dir.join("out").display(),
        snap = dir.join("snap").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn reference(tmp: &Path) -> Vec<String> {
    let dir = tmp.join("reference");
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new(BIN)
        .arg("run")
        .arg(manifest(&dir, "ref", 2, 0))
        .arg("--quiet")
        .status()
        .unwrap();
    assert!(status.success());
    let lines = output_lines(&dir.join("out"));
    assert!(lines.len() > 100);
    lines
}

#[test]
fn killed_worker_is_restored_without_loss_or_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    let dir = tmp.path().join("kill");
    std::fs::create_dir_all(&dir).unwrap();
    let job = manifest(&dir, "kill", 2, 60_000);

    let mut first = start_worker(&job, 1, "latest", &[]);
    wait_for("two checkpoints", Duration::from_secs(30), || {
        status(first.port).is_some_and(|s| s["lastCheckpoint"]["id"].as_u64().unwrap_or(0) >= 2)
    });
    first.child.kill().unwrap(); // SIGKILL: no cleanup at all
    first.child.wait().unwrap();
    let partial = output_lines(&dir.join("out"));
    assert!(
        partial.len() < expected.len(),
        "the worker was killed too late to test anything"
    );

    let mut second = start_worker(&job, 2, "latest", &[]);
    wait_for(
        "the restored attempt to run",
        Duration::from_secs(30),
        // "starting" answers before the restore is chosen; restoredFrom is known after it.
        || status(second.port).is_some_and(|s| s["state"] != "starting"),
    );
    let s = status(second.port).unwrap();
    assert_eq!(s["attempt"], 2);
    assert!(
        s["restoredFrom"]
            .as_str()
            .unwrap_or("")
            .contains("/checkpoints/000001-"),
        "{s}"
    );
    let code = second.child.wait().unwrap();
    assert!(code.success(), "the restored worker failed: {code:?}");
    assert_eq!(output_lines(&dir.join("out")), expected);
}

#[test]
fn control_api_stops_with_savepoint_and_a_new_attempt_resumes_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = reference(tmp.path());
    let dir = tmp.path().join("savepoint");
    std::fs::create_dir_all(&dir).unwrap();

    let mut first = start_worker(&manifest(&dir, "sp", 2, 60_000), 1, "none", &[]);
    wait_for("a checkpoint", Duration::from_secs(30), || {
        status(first.port).is_some_and(|s| s["lastCheckpoint"]["id"].as_u64().is_some())
    });
    assert_eq!(http(first.port, "GET", "/readyz", None).unwrap().0, 200);
    assert_eq!(http(first.port, "GET", "/healthz", None).unwrap().0, 200);
    let metrics = http(first.port, "GET", "/metrics", None).unwrap().1;
    assert!(
        metrics.contains("streamjob_checkpoints_completed_total"),
        "{metrics}"
    );
    assert_eq!(
        http(first.port, "POST", "/v1/savepoint?stop=true", None)
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        http(first.port, "POST", "/v1/savepoint?stop=true", Some("wrong"))
            .unwrap()
            .0,
        401
    );
    let (code, body) = http(first.port, "POST", "/v1/savepoint?stop=true", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    let savepoint: serde_json::Value = serde_json::from_str(&body).unwrap();
    let location = savepoint["location"].as_str().unwrap().to_string();
    assert!(location.contains("/savepoints/sp-"), "{location}");
    assert!(first.child.wait().unwrap().success());
    assert!(output_lines(&dir.join("out")).len() < expected.len());

    // Resume at another parallelism from the savepoint folder.
    let folder = format!("savepoints/{}", location.rsplit('/').next().unwrap());
    let mut second = start_worker(&manifest(&dir, "sp", 3, 0), 2, &folder, &[]);
    assert!(second.child.wait().unwrap().success());
    assert_eq!(output_lines(&dir.join("out")), expected);
}
