//! `output: s3://...` end to end: real `streamjob worker` processes write the windowed-count job's
//! results with the exactly-once S3 sink to a real S3-protocol server (s3s-fs), snapshots in S3 too.
//! A SIGKILLed worker, a restored attempt stopped with a savepoint, and a rescaled attempt resuming
//! from it: the committed objects' lines must equal a local-mode run writing to a folder.
//!
//! The output reaches S3 with the snapshots' settings (`storage.s3.endpoint`, `forcePathStyle`; keys
//! from the environment): `S3_ENDPOINT` is removed from the workers' environment.
//!
//! Needs the s3s-fs binary: `bash tests/tools/install-s3s-fs.sh` (or set `S3S_FS_BIN`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use streamjob_engine::connectors::s3_sink::{S3Options, S3Output};

mod common;
use common::{http, output_lines, start_worker, status, wait_for, Worker, BIN, TOKEN};

#[path = "support/s3s_fs.rs"]
mod s3s_fs;
use s3s_fs::{S3Server, ACCESS_KEY, SECRET_KEY};

impl S3Server {
    /// Every committed line under `url`, sorted (read over S3, like any consumer would).
    fn lines(&self, url: &str) -> Vec<String> {
        let output = S3Output::parse(
            url,
            S3Options {
                endpoint: Some(self.endpoint.clone()),
                force_path_style: Some(true),
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
                ..S3Options::default()
            },
        )
        .unwrap();
        let mut lines = Vec::new();
        for object in output.committed().unwrap() {
            let text = String::from_utf8(output.read(&object.key).unwrap()).unwrap();
            lines.extend(text.lines().map(str::to_string));
        }
        lines.sort();
        lines
    }
}

/// The windowed-count job (as in manifests/examples/windowed-count.yaml, smaller); `storage` and
/// `output` as given.
fn manifest(
    dir: &Path,
    name: &str,
    parallelism: u32,
    rate: u64,
    output: &str,
    storage: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}-{parallelism}-{rate}.yaml"));
    let text = format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata:\n  name: {name}\nspec:\n  parallelism: {parallelism}\n  maxParallelism: 32\n  job:\n    name: windowed-count\n    params: {{events: 150000, rate: {rate}, splits: 8, window: 1s, output: \"{output}\"}}\n  checkpoint: {{interval: 150ms}}\n  storage: {storage}\n",
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A worker with the S3 keys and no S3 settings from the environment (they must come from
/// `storage.s3`).
fn s3_worker(manifest: &Path, attempt: u64, restore: &str) -> Worker {
    start_worker(
        manifest,
        attempt,
        restore,
        &[
            ("AWS_ACCESS_KEY_ID", Some(ACCESS_KEY)),
            ("AWS_SECRET_ACCESS_KEY", Some(SECRET_KEY)),
            ("S3_ENDPOINT", None),
            ("S3_FORCE_PATH_STYLE", None),
            ("AWS_SESSION_TOKEN", None),
        ],
    )
}

#[test]
fn s3_output_after_a_kill_a_savepoint_and_a_rescale_equals_a_folder_run() {
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&["snapshots", "results"]);

    // Reference: local mode, output to a folder, snapshots in a folder, no failure.
    let reference = tmp.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let out = reference.join("out").display().to_string();
    let snap = format!("{{path: {}}}", reference.join("snap").display());
    let run = Command::new(BIN)
        .arg("run")
        .arg(manifest(&reference, "ref", 2, 0, &out, &snap))
        .arg("--quiet")
        .status()
        .unwrap();
    assert!(run.success());
    let expected = output_lines(&reference.join("out"));
    assert!(expected.len() > 100);

    // The same job with output and snapshots in S3.
    let output = "s3://results/windowed-count/run-1";
    let storage = format!(
        "{{s3: {{bucket: snapshots, endpoint: \"{}\", forcePathStyle: true}}}}",
        server.endpoint
    );
    let dir = tmp.path().join("s3");
    std::fs::create_dir_all(&dir).unwrap();

    // 1. SIGKILL once results are committed and a later checkpoint completed: the pre-committed
    //    uploads of the newest checkpoints are left behind, never completed by this worker.
    let mut first = s3_worker(
        &manifest(&dir, "s3", 2, 20_000, output, &storage),
        1,
        "latest",
    );
    let mut committed_by = None;
    wait_for(
        "committed results and a later checkpoint",
        Duration::from_secs(60),
        || {
            let checkpoint = status(first.port)
                .and_then(|s| s["lastCheckpoint"]["id"].as_u64())
                .unwrap_or(0);
            if committed_by.is_none() && !server.lines(output).is_empty() {
                committed_by = Some(checkpoint);
            }
            committed_by.is_some_and(|c| checkpoint > c)
        },
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let partial = server.lines(output);
    assert!(
        partial.len() < expected.len(),
        "the worker was killed too late to test anything"
    );

    // 2. Restore the latest checkpoint (its pending uploads are completed), then stop with a savepoint.
    let mut second = s3_worker(
        &manifest(&dir, "s3", 2, 20_000, output, &storage),
        2,
        "latest",
    );
    wait_for(
        "a checkpoint of the restored attempt",
        Duration::from_secs(60),
        || {
            status(second.port).is_some_and(|s| {
                s["attempt"] == 2
                    && s["state"] != "starting"
                    && s["lastCheckpoint"]["id"].as_u64().is_some()
            })
        },
    );
    let s = status(second.port).unwrap();
    assert!(
        s["restoredFrom"]
            .as_str()
            .unwrap_or("")
            .contains("/checkpoints/000001-"),
        "{s}"
    );
    let (code, body) = http(second.port, "POST", "/v1/savepoint?stop=true", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    let savepoint: serde_json::Value = serde_json::from_str(&body).unwrap();
    let location = savepoint["location"].as_str().unwrap().to_string();
    assert!(second.child.wait().unwrap().success());
    let partial = server.lines(output);
    assert!(
        partial.len() < expected.len(),
        "the job ended before the savepoint"
    );

    // 3. Resume from the savepoint at parallelism 3, to the end.
    let folder = format!("savepoints/{}", location.rsplit('/').next().unwrap());
    let mut third = s3_worker(&manifest(&dir, "s3", 3, 0, output, &storage), 3, &folder);
    assert!(third.child.wait().unwrap().success());

    let actual = server.lines(output);
    assert_eq!(actual.len(), expected.len(), "lines lost or duplicated");
    assert_eq!(actual, expected);

    // Every attempt's journal of open uploads is gone: the killed one's was handled (its orphaned
    // uploads aborted) by attempt 2, the others were deleted when their input ended.
    let journals = server
        .data
        .path()
        .join("root/results/windowed-count/run-1/.uploads");
    let left: Vec<_> = std::fs::read_dir(&journals)
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "upload journals left behind: {left:?}");
}
