//! The operator-facing CLI end to end on the local cluster: a real API server, the `streamjob
//! operator` process, real worker processes, snapshots in the S3 server; `streamjob jobs`,
//! `savepoint --wait`, `snapshots`, `suspend --wait`, `resume --wait` and `describe` run as
//! processes (the way a user or `kubectl streamjob` runs them) and their output is checked
//! against the StreamJob's status. Needs the cluster: `tests/cluster/test.sh` (or `up.sh` first).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use serde_json::json;
use streamjob_api::v1alpha1::{JobPhase, StreamJob};
use streamjob_testkit::{install_crypto_provider, TestCluster};

const WAIT: Duration = Duration::from_secs(90);

fn streamjob_bin(tc: &TestCluster) -> PathBuf {
    tc.env()
        .vars
        .get("STREAMJOB_BIN")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| streamjob_testkit::repo_root().join("target"));
            target.join("debug/streamjob")
        })
}

/// The operator, scoped to the test's namespace; killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_operator(tc: &TestCluster) -> Operator {
    let log = tc
        .env()
        .logs_dir()
        .join(format!("{}_operator.log", tc.namespace()));
    let log = std::fs::File::create(log).expect("operator log");
    let child = Command::new(streamjob_bin(tc))
        .args(["operator", "--namespace", tc.namespace()])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &tc.env().kubeconfig)
        .env("STREAMJOB_LOG", "info,kube=warn")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the operator");
    Operator(child)
}

/// Runs `streamjob ARGS -n <namespace>` as a user would, with the S3 keys in the environment.
fn cli(tc: &TestCluster, args: &[&str]) -> Output {
    let out = Command::new(streamjob_bin(tc))
        .args(args)
        .args(["-n", tc.namespace()])
        .env("KUBECONFIG", &tc.env().kubeconfig)
        .env("AWS_ACCESS_KEY_ID", &tc.env().access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &tc.env().secret_access_key)
        .output()
        .expect("run streamjob");
    eprintln!(
        "$ streamjob {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn create_credentials(tc: &TestCluster) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-credentials"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": tc.env().access_key_id,
            "AWS_SECRET_ACCESS_KEY": tc.env().secret_access_key
        }
    }))
    .unwrap();
    tc.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// An unbounded windowed-count job with its snapshots at the S3 server `endpoint`.
async fn create(tc: &TestCluster, name: &str, endpoint: &str) {
    let output = tc.env().cluster_dir.join("out").join(tc.namespace());
    let job: StreamJob = serde_json::from_value(json!({
        "apiVersion": "streamjob.io/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "image": "streamjob/streamjob:dev",
            "parallelism": 2,
            "job": {"name": "windowed-count", "params": {
                "events": 0, "rate": 2000, "window": "2s",
                "output": output.join("output").display().to_string()
            }},
            "checkpoint": {"interval": "500ms", "timeout": "30s", "minPause": "100ms"},
            "storage": {"s3": {
                "bucket": tc.bucket(),
                "endpoint": endpoint,
                "forcePathStyle": true,
                "credentialsSecret": {"name": "s3-credentials"}
            }}
        }
    }))
    .unwrap();
    tc.api::<StreamJob>()
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
}

async fn status(tc: &TestCluster, name: &str) -> streamjob_api::v1alpha1::StreamJobStatus {
    tc.api::<StreamJob>()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

#[tokio::test]
async fn jobs_savepoint_snapshots_suspend_resume_and_describe_against_the_api_server() {
    install_crypto_provider();
    let tc = TestCluster::new("cli").await.unwrap();
    let _operator = start_operator(&tc);
    create_credentials(&tc).await;
    create(&tc, "cj", &tc.env().s3_endpoint).await;
    tc.wait_for::<StreamJob>("cj", WAIT, |j| {
        j.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(JobPhase::Running) && s.last_checkpoint.is_some())
    })
    .await
    .expect("Running with a checkpoint");

    // jobs: one row with phase, parallelism, workers and attempt.
    let text = stdout(&cli(&tc, &["jobs"]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(
            "NAME   PHASE     PARALLELISM   WORKERS   ATTEMPT   LAST CHECKPOINT   RESTARTS   AGE"
        ),
        "{text}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..5], ["cj", "Running", "2", "1", "1"], "{text}");
    assert!(lines[1].contains(" ago)"), "checkpoint id and age: {text}");

    // savepoint --wait: returns once status records the savepoint of the new nonce.
    let text = stdout(&cli(
        &tc,
        &["savepoint", "cj", "--wait", "--timeout", "60s"],
    ));
    assert!(text.contains("(savepointTriggerNonce 1)"), "{text}");
    let st = status(&tc, "cj").await;
    assert_eq!(st.handled_nonces.savepoint, Some(1));
    let savepoint = st.last_savepoint.clone().expect("lastSavepoint");
    assert_eq!(savepoint.reason.as_deref(), Some("manual"));
    assert!(
        text.contains(&format!(
            "savepoint {} of attempt 1 completed in {} ms",
            savepoint.id, savepoint.duration_ms
        )) && text.contains(&savepoint.location),
        "{text}"
    );

    // snapshots: the savepoint is listed, in status and verified in S3; a restore target is marked.
    let text = stdout(&cli(&tc, &["snapshots", "cj", "--deep"]));
    let line = text
        .lines()
        .find(|l| l.contains(&savepoint.location))
        .unwrap_or_else(|| panic!("savepoint not listed: {text}"));
    assert!(
        line.contains("manual   listed   ok (CRCs checked)"),
        "{line}"
    );
    assert!(text.lines().any(|l| l.starts_with('*')), "{text}");
    assert!(text.contains("Restore: a restart restores"), "{text}");

    // suspend --wait / resume --wait.
    let text = stdout(&cli(&tc, &["suspend", "cj", "--wait", "--timeout", "60s"]));
    let st = status(&tc, "cj").await;
    assert_eq!(st.phase, Some(JobPhase::Suspended));
    let suspend = st.last_savepoint.clone().unwrap();
    assert_eq!(suspend.reason.as_deref(), Some("suspend"));
    assert!(
        text.contains(&format!("suspended with savepoint {}", suspend.id)),
        "{text}"
    );
    let text = stdout(&cli(&tc, &["resume", "cj", "--wait", "--timeout", "60s"]));
    assert!(
        text.contains(&format!(
            "running: attempt 2, restored from {}",
            suspend.location
        )),
        "{text}"
    );

    // describe: status, history and restore point as the API server holds them.
    let text = stdout(&cli(&tc, &["describe", "cj"]));
    for want in [
        "Phase:           Running\n".to_string(),
        "Parallelism:     2 (workers: 1)\n".to_string(),
        "Attempt:         2\n".to_string(),
        format!("Restored from:   {}\n", suspend.location),
        "Last failure:    <none>\n".to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    let history = text
        .split("Savepoint history:\n")
        .nth(1)
        .unwrap()
        .split("Pending change")
        .next()
        .unwrap();
    assert!(history.contains(&suspend.location) && history.contains(&savepoint.location));

    // A killed worker: describe names the failure and shows the Warning event.
    let pod = tc
        .api::<k8s_openapi::api::core::v1::Pod>()
        .get("cj-worker-0")
        .await
        .unwrap();
    let container = pod.status.unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    let pgid: i32 = container
        .strip_prefix("process://")
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: signalling the process group of a worker this test's cluster started.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    tc.wait_for::<StreamJob>("cj", WAIT, |j| {
        j.status.as_ref().is_some_and(|s| {
            s.restarts == 1 && s.phase == Some(JobPhase::Running) && s.job_attempt == Some(3)
        })
    })
    .await
    .expect("Running again after the kill");
    let text = stdout(&cli(&tc, &["describe", "cj"]));
    for want in [
        "Restarts:        1 (consecutive failures: ",
        "Last failure:\n  Reason:        PodFailed\n  Attempt:       2\n  Pod:           cj-worker-0\n",
        "  Message:       worker pod cj-worker-0 of attempt 2 failed",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let events = text.split("Warning events:\n").nth(1).unwrap();
    assert!(events.contains("PodFailed"), "{text}");
    let text = stdout(&cli(&tc, &["jobs"]));
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row[4], row[row.len() - 2]),
        ("3", "1"),
        "attempt and restarts: {text}"
    );

    // Storage that does not answer: what status knows, then a clear error and exit 1.
    create(&tc, "cold", "http://127.0.0.1:1").await;
    let out = cli(&tc, &["snapshots", "cold"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "Error: cannot read the snapshot storage s3://{}/{}/cold: ",
            tc.bucket(),
            tc.namespace()
        )),
        "{text}"
    );

    // A job that does not exist: exit 1 and a message saying so.
    let out = cli(&tc, &["describe", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}
