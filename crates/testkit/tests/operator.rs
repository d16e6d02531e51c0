//! The operator end to end on the local cluster: a real API server, the `streamjob operator`
//! process (scoped to the test's namespace), real `streamjob worker` processes in pods, snapshots in
//! the S3 server. Each test asserts on real state: pods, S3 objects, StreamJob status, events, and
//! the committed output of the job compared with a failure-free local run of the same job.
//! Needs the cluster: run `tests/cluster/test.sh` (or `up.sh` first).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use streamjob_api::v1alpha1::{JobPhase, StreamJob};
use streamjob_testkit::{install_crypto_provider, TestCluster};

const WAIT: Duration = Duration::from_secs(90);

/// A `streamjob operator` process watching one namespace; killed when dropped.
struct OperatorProcess {
    child: Child,
}

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

impl OperatorProcess {
    fn start(tc: &TestCluster, tag: &str, extra: &[&str]) -> Self {
        let log_path = tc
            .env()
            .logs_dir()
            .join(format!("{}_operator-{tag}.log", tc.namespace()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("operator log file");
        let child = Command::new(streamjob_bin(tc))
            .arg("operator")
            .args(["--namespace", tc.namespace(), "--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env("KUBECONFIG", &tc.env().kubeconfig)
            .env("STREAMJOB_LOG", "info,kube=warn")
            .env("HOSTNAME", format!("operator-{tag}"))
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start streamjob operator");
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Dumps logs when the test fails (the guard is dropped while panicking).
struct LogsOnFailure<'a>(&'a TestCluster);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.dump_logs();
        }
    }
}

fn out_dir(tc: &TestCluster, what: &str) -> PathBuf {
    let dir = tc
        .env()
        .cluster_dir
        .join("out")
        .join(tc.namespace())
        .join(what);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A windowed-count StreamJob with snapshots in the test's bucket.
fn job_manifest(tc: &TestCluster, name: &str, events: u64, rate: u64, output: &Path) -> Value {
    json!({
        "apiVersion": "streamjob.io/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "image": "streamjob/streamjob:dev",
            "parallelism": 2,
            "job": {
                "name": "windowed-count",
                "params": {
                    "events": events,
                    "rate": rate,
                    "window": "2s",
                    "output": output.display().to_string()
                }
            },
            "checkpoint": {"interval": "500ms", "timeout": "30s", "minPause": "100ms"},
            "restartPolicy": {"maxRestarts": 5, "backoff": {"initial": "200ms", "max": "2s"}},
            "storage": {"s3": {
                "bucket": tc.bucket(),
                "endpoint": tc.env().s3_endpoint,
                "forcePathStyle": true,
                "credentialsSecret": {"name": "s3-credentials"}
            }}
        }
    })
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

async fn create_job(tc: &TestCluster, manifest: &Value) -> StreamJob {
    let job: StreamJob = serde_json::from_value(manifest.clone()).unwrap();
    tc.api::<StreamJob>()
        .create(&PostParams::default(), &job)
        .await
        .unwrap()
}

async fn patch_spec(tc: &TestCluster, name: &str, spec: Value) {
    tc.api::<StreamJob>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

fn phase(job: &StreamJob) -> Option<JobPhase> {
    job.status.as_ref().and_then(|s| s.phase)
}

async fn wait_job(
    tc: &TestCluster,
    name: &str,
    what: &str,
    cond: impl Fn(&StreamJob) -> bool,
) -> StreamJob {
    match tc.wait_for::<StreamJob>(name, WAIT, cond).await {
        Ok(job) => job,
        Err(e) => {
            let now = tc.api::<StreamJob>().get(name).await.ok();
            panic!(
                "{what}: {e}; status now: {}",
                serde_json::to_string_pretty(&now.and_then(|j| j.status)).unwrap_or_default()
            );
        }
    }
}

/// Every committed output line (hidden in-progress files excluded), sorted.
fn committed_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                lines.extend(text.lines().map(str::to_string));
            }
        }
    }
    lines.sort();
    lines
}

/// The committed output of a failure-free local run of the same job.
fn reference_output(tc: &TestCluster, manifest: &Value) -> Vec<String> {
    let work = out_dir(tc, "reference");
    let file = work.join("job.json");
    std::fs::write(&file, serde_json::to_vec(manifest).unwrap()).unwrap();
    let output = work.join("output");
    let status = Command::new(streamjob_bin(tc))
        .arg("run")
        .arg(&file)
        .arg("--checkpoint-dir")
        .arg(work.join("snapshots"))
        .args(["--set", "rate=0", "--quiet"])
        .arg("--set")
        .arg(format!("output={}", output.display()))
        .status()
        .expect("run the reference job");
    assert!(status.success(), "reference run failed: {status}");
    committed_lines(&output)
}

async fn worker_pod(tc: &TestCluster, name: &str) -> Option<Pod> {
    tc.api::<Pod>()
        .get_opt(&format!("{name}-worker-0"))
        .await
        .unwrap()
}

fn pgid(p: &Pod) -> i32 {
    let id = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .expect("containerID");
    id.strip_prefix("process://").unwrap().parse().unwrap()
}

async fn events(tc: &TestCluster, name: &str) -> Vec<Event> {
    tc.api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// Whether an event of this kind and reason about `name` appears within [`WAIT`] (the operator
/// writes the status before it publishes the decision's events).
async fn event_appears(tc: &TestCluster, name: &str, kind: &str, reason: &str) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if has_event(&events(tc, name).await, kind, reason) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn has_event(events: &[Event], kind: &str, reason: &str) -> bool {
    events
        .iter()
        .any(|e| e.type_.as_deref() == Some(kind) && e.reason.as_deref() == Some(reason))
}

async fn s3_dirs(tc: &TestCluster, prefix: &str) -> BTreeSet<String> {
    let mut dirs = BTreeSet::new();
    let mut token = None;
    loop {
        let out = tc
            .s3()
            .list_objects_v2()
            .bucket(tc.bucket())
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in out.contents() {
            if let Some(rest) = o.key().and_then(|k| k.strip_prefix(prefix)) {
                if let Some((dir, _)) = rest.split_once('/') {
                    if o.key().is_some_and(|k| k.ends_with("_manifest.json")) {
                        dirs.insert(dir.to_string());
                    }
                }
            }
        }
        token = out.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return dirs;
        }
    }
}

fn attempt(job: &StreamJob) -> i64 {
    job.status.as_ref().and_then(|s| s.job_attempt).unwrap_or(0)
}

fn running_attempt(job: &StreamJob, min: i64) -> bool {
    phase(job) == Some(JobPhase::Running) && attempt(job) >= min
}

#[tokio::test]
async fn deploys_checkpoints_to_s3_and_restores_a_killed_worker_exactly_once() {
    install_crypto_provider();
    let tc = TestCluster::new("op-kill").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let _operator = OperatorProcess::start(&tc, "a", &[]);
    let output = out_dir(&tc, "output");
    let manifest = job_manifest(&tc, "wc", 400_000, 40_000, &output);
    create_job(&tc, &manifest).await;

    let job = wait_job(&tc, "wc", "Running with a checkpoint", |j| {
        running_attempt(j, 1)
            && j.status
                .as_ref()
                .and_then(|s| s.last_checkpoint.as_ref())
                .is_some()
    })
    .await;
    let status = job.status.clone().unwrap();
    assert_eq!(status.job_attempt, Some(1));
    assert!(status.restored_from.is_none(), "a new job starts empty");
    assert_eq!(
        status.selector.as_deref(),
        Some("streamjob.io/job=wc,app.kubernetes.io/component=worker")
    );
    let prefix = format!("{}/wc/checkpoints/", tc.namespace());
    assert!(
        !s3_dirs(&tc, &prefix).await.is_empty(),
        "checkpoints are in S3"
    );
    let finalizers = job.metadata.finalizers.clone().unwrap_or_default();
    assert!(finalizers.contains(&"streamjob.io/finalizer".to_string()));

    // Kill the worker process: the attempt is over, the operator restores from the latest checkpoint.
    let pod = worker_pod(&tc, "wc").await.expect("worker pod");
    let killed_at = Instant::now();
    // SAFETY: signalling a process group we own.
    unsafe { libc::kill(-pgid(&pod), libc::SIGKILL) };
    let job = wait_job(&tc, "wc", "Running again after the kill", |j| {
        running_attempt(j, 2)
    })
    .await;
    let recovery = killed_at.elapsed();
    let status = job.status.clone().unwrap();
    assert_eq!(status.restarts, 1);
    let failure = status.last_failure.clone().expect("lastFailure");
    assert_eq!(failure.reason, "PodFailed");
    assert_eq!(failure.pod.as_deref(), Some("wc-worker-0"));
    assert_eq!(failure.attempt, 1);
    let restored = status.restored_from.clone().expect("restoredFrom");
    assert!(
        restored.contains("/checkpoints/000001-"),
        "restored from a checkpoint of attempt 1: {restored}"
    );
    assert!(
        event_appears(&tc, "wc", "Warning", "PodFailed").await,
        "a Warning event names the failure"
    );
    eprintln!(
        "[figures] worker kill -> Running again: {:.2}s",
        recovery.as_secs_f64()
    );

    // The bounded job ends; its committed output equals a failure-free run's.
    wait_job(&tc, "wc", "Finished", |j| {
        phase(j) == Some(JobPhase::Finished)
    })
    .await;
    let expected = reference_output(&tc, &manifest);
    assert!(!expected.is_empty());
    let got = committed_lines(&output);
    assert_eq!(got.len(), expected.len(), "no loss, no duplicates");
    assert!(
        got == expected,
        "committed output differs from the failure-free run"
    );
}

#[tokio::test]
async fn upgrade_takes_a_savepoint_and_rescales_2_to_3_exactly_once() {
    install_crypto_provider();
    let tc = TestCluster::new("op-upgrade").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let _operator = OperatorProcess::start(&tc, "a", &[]);
    let output = out_dir(&tc, "output");
    let manifest = job_manifest(&tc, "up", 400_000, 40_000, &output);
    create_job(&tc, &manifest).await;
    wait_job(&tc, "up", "Running", |j| running_attempt(j, 1)).await;
    let before = worker_pod(&tc, "up").await.unwrap().metadata.uid;

    // `kubectl scale sj/up --replicas 3` goes through the scale subresource.
    let changed = Instant::now();
    tc.api::<StreamJob>()
        .patch_scale(
            "up",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let job = wait_job(&tc, "up", "Running at parallelism 3", |j| {
        running_attempt(j, 2) && j.status.as_ref().and_then(|s| s.parallelism) == Some(3)
    })
    .await;
    let downtime = changed.elapsed();
    let status = job.status.clone().unwrap();
    let savepoint = status.last_savepoint.clone().expect("upgrade savepoint");
    assert_eq!(savepoint.reason.as_deref(), Some("upgrade"));
    assert_eq!(
        status.restored_from.as_deref(),
        Some(savepoint.location.as_str())
    );
    assert!(status.pending_change.is_none());
    let after = worker_pod(&tc, "up").await.unwrap().metadata.uid;
    assert_ne!(before, after, "new pods for the new attempt");
    let sp_prefix = format!("{}/up/savepoints/", tc.namespace());
    assert_eq!(
        s3_dirs(&tc, &sp_prefix).await.len(),
        1,
        "the savepoint is in S3"
    );
    assert!(event_appears(&tc, "up", "Normal", "UpgradeStarted").await);
    assert!(event_appears(&tc, "up", "Normal", "SavepointCompleted").await);
    eprintln!(
        "[figures] upgrade (savepoint, 2 -> 3) downtime until Running: {:.2}s",
        downtime.as_secs_f64()
    );

    wait_job(&tc, "up", "Finished", |j| {
        phase(j) == Some(JobPhase::Finished)
    })
    .await;
    let expected = reference_output(&tc, &manifest);
    assert!(
        committed_lines(&output) == expected,
        "output differs from the failure-free run"
    );
}

#[tokio::test]
async fn savepoint_nonces_history_retention_suspend_and_resume() {
    install_crypto_provider();
    let tc = TestCluster::new("op-suspend").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let _operator = OperatorProcess::start(&tc, "a", &[]);
    let output = out_dir(&tc, "output");
    let mut manifest = job_manifest(&tc, "sp", 0, 20_000, &output);
    manifest["spec"]["savepoint"] = json!({"historyMaxCount": 2});
    create_job(&tc, &manifest).await;
    wait_job(&tc, "sp", "Running", |j| running_attempt(j, 1)).await;
    let sp_prefix = format!("{}/sp/savepoints/", tc.namespace());

    let mut taken = Vec::new();
    for nonce in 1..=3 {
        patch_spec(&tc, "sp", json!({"savepointTriggerNonce": nonce})).await;
        let job = wait_job(&tc, "sp", "savepoint nonce handled", |j| {
            j.status.as_ref().and_then(|s| s.handled_nonces.savepoint) == Some(nonce)
        })
        .await;
        taken.push(job.status.unwrap().last_savepoint.unwrap().location);
    }
    // History keeps 2: the first savepoint is deleted from S3, not just from status.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dirs = s3_dirs(&tc, &sp_prefix).await;
        if dirs.len() == 2 {
            assert!(!taken[0].ends_with(dirs.iter().next().unwrap()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history not applied in S3: {dirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let job = tc.api::<StreamJob>().get("sp").await.unwrap();
    let status = job.status.unwrap();
    assert_eq!(status.savepoints.len(), 2);
    assert_eq!(status.savepoints[0].location, taken[2]);
    assert_eq!(
        status.attempt_or_zero(),
        1,
        "savepoints do not restart the job"
    );

    // Suspend: savepoint, pods removed.
    patch_spec(&tc, "sp", json!({"state": "suspended"})).await;
    let job = wait_job(&tc, "sp", "Suspended", |j| {
        phase(j) == Some(JobPhase::Suspended)
    })
    .await;
    let suspended_at = job.status.clone().unwrap().last_savepoint.unwrap();
    assert_eq!(suspended_at.reason.as_deref(), Some("suspend"));
    tc.wait_gone::<Pod>("sp-worker-0", WAIT).await.unwrap();

    // Resume: restored from the suspend savepoint.
    patch_spec(&tc, "sp", json!({"state": "running"})).await;
    let job = wait_job(&tc, "sp", "Running again", |j| running_attempt(j, 2)).await;
    assert_eq!(
        job.status.unwrap().restored_from.as_deref(),
        Some(suspended_at.location.as_str())
    );
}

trait AttemptOrZero {
    fn attempt_or_zero(&self) -> i64;
}

impl AttemptOrZero for streamjob_api::v1alpha1::StreamJobStatus {
    fn attempt_or_zero(&self) -> i64 {
        self.job_attempt.unwrap_or(0)
    }
}

#[tokio::test]
async fn invalid_specs_are_reported_and_never_touch_running_pods() {
    install_crypto_provider();
    let tc = TestCluster::new("op-invalid").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let _operator = OperatorProcess::start(&tc, "a", &[]);
    let output = out_dir(&tc, "output");

    // Unknown built-in job: reported, no pods.
    let mut bad = job_manifest(&tc, "bad", 0, 1000, &output);
    bad["spec"]["job"]["name"] = json!("no-such-job");
    create_job(&tc, &bad).await;
    let job = wait_job(&tc, "bad", "InvalidSpec reported", |j| {
        j.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "InvalidSpec")
        })
    })
    .await;
    assert!(job.status.unwrap().message.unwrap().contains("no-such-job"));
    assert!(event_appears(&tc, "bad", "Warning", "InvalidSpec").await);
    assert!(worker_pod(&tc, "bad").await.is_none());

    // A running job given parallelism above maxParallelism keeps its pod.
    let good = job_manifest(&tc, "good", 0, 5_000, &output);
    create_job(&tc, &good).await;
    wait_job(&tc, "good", "Running", |j| running_attempt(j, 1)).await;
    let uid = worker_pod(&tc, "good").await.unwrap().metadata.uid;
    patch_spec(
        &tc,
        "good",
        json!({"parallelism": 200, "maxParallelism": 128}),
    )
    .await;
    let job = wait_job(&tc, "good", "InvalidSpec reported", |j| {
        j.status
            .as_ref()
            .and_then(|s| s.message.as_deref())
            .is_some_and(|m| m.contains("spec.parallelism"))
    })
    .await;
    assert_eq!(attempt(&job), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = worker_pod(&tc, "good").await.unwrap();
    assert_eq!(pod.metadata.uid, uid, "the running pod is untouched");
    assert!(pod.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn delete_takes_a_final_savepoint_and_cleans_up() {
    install_crypto_provider();
    let tc = TestCluster::new("op-delete").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let _operator = OperatorProcess::start(&tc, "a", &[]);
    let output = out_dir(&tc, "output");
    let mut manifest = job_manifest(&tc, "del", 0, 10_000, &output);
    manifest["spec"]["savepoint"] = json!({"onDelete": "savepoint"});
    create_job(&tc, &manifest).await;
    wait_job(&tc, "del", "Running", |j| running_attempt(j, 1)).await;

    tc.api::<StreamJob>()
        .delete("del", &DeleteParams::default())
        .await
        .unwrap();
    tc.wait_gone::<StreamJob>("del", WAIT).await.unwrap();
    tc.wait_gone::<Pod>("del-worker-0", WAIT).await.unwrap();
    let sp_prefix = format!("{}/del/savepoints/", tc.namespace());
    assert_eq!(
        s3_dirs(&tc, &sp_prefix).await.len(),
        1,
        "the final savepoint is in S3"
    );
    // Owned objects are garbage-collected by the real controller manager.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = tc.api();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cms.get_opt("del-job").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "ConfigMap not garbage-collected");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn an_operator_killed_mid_upgrade_finishes_it_after_restart() {
    install_crypto_provider();
    let tc = TestCluster::new("op-crash").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let mut operator = OperatorProcess::start(&tc, "a", &[]);
    let output = out_dir(&tc, "output");
    let manifest = job_manifest(&tc, "cr", 400_000, 40_000, &output);
    create_job(&tc, &manifest).await;
    wait_job(&tc, "cr", "Running", |j| running_attempt(j, 1)).await;

    // The operator dies right after it wrote its intention (upgrade, step snapshot) and the
    // worker completed the stop-with-savepoint, before the answer was recorded: the hardest point.
    operator.kill();
    patch_spec(&tc, "cr", json!({"parallelism": 3})).await;
    let job = tc.api::<StreamJob>().get("cr").await.unwrap();
    let hash = streamjob_operator::hash::pod_spec_hash(&job.spec);
    let mut status = job.status.clone().unwrap();
    status.phase = Some(JobPhase::Upgrading);
    status.pending_change = Some(streamjob_api::v1alpha1::PendingChange {
        kind: "upgrade".into(),
        step: "snapshot".into(),
        target_generation: job.metadata.generation,
        target_spec_hash: Some(hash),
        started_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
        ..Default::default()
    });
    tc.api::<StreamJob>()
        .patch_status(
            "cr",
            &PatchParams::apply("streamjob-operator").force(),
            &Patch::Apply(&json!({
                "apiVersion": "streamjob.io/v1alpha1", "kind": "StreamJob", "status": status
            })),
        )
        .await
        .unwrap();
    let pod = worker_pod(&tc, "cr").await.unwrap();
    let ip = pod.status.unwrap().pod_ip.unwrap();
    let secret = tc.api::<Secret>().get("cr-control").await.unwrap();
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let answer = Command::new("curl")
        .args(["-sf", "-X", "POST", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{ip}:8080/v1/savepoint?stop=true"))
        .output()
        .expect("curl");
    assert!(answer.status.success(), "savepoint call failed: {answer:?}");
    let location = serde_json::from_slice::<Value>(&answer.stdout).unwrap()["location"]
        .as_str()
        .unwrap()
        .to_string();

    let _operator = OperatorProcess::start(&tc, "b", &[]);
    let job = wait_job(&tc, "cr", "upgrade finished by the new operator", |j| {
        running_attempt(j, 2) && j.status.as_ref().and_then(|s| s.parallelism) == Some(3)
    })
    .await;
    assert_eq!(
        job.status.unwrap().restored_from.as_deref(),
        Some(location.as_str()),
        "the new attempt restores the savepoint the old operator never recorded"
    );
    wait_job(&tc, "cr", "Finished", |j| {
        phase(j) == Some(JobPhase::Finished)
    })
    .await;
    let expected = reference_output(&tc, &manifest);
    assert!(
        committed_lines(&output) == expected,
        "output differs from the failure-free run"
    );
}

#[tokio::test]
async fn two_operators_elect_one_leader_and_fail_over() {
    install_crypto_provider();
    let tc = TestCluster::new("op-leader").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let mut first = OperatorProcess::start(&tc, "a", &["--leader-election"]);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = tc.api();
    let holder = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.spec.as_ref().and_then(|s| s.holder_identity.clone())
    };
    let lease = tc
        .wait_for::<k8s_openapi::api::coordination::v1::Lease>("streamjob-operator", WAIT, |l| {
            holder(l).is_some()
        })
        .await
        .unwrap();
    let first_holder = holder(&lease).unwrap();
    assert!(first_holder.starts_with("operator-a"), "{first_holder}");
    let _second = OperatorProcess::start(&tc, "b", &["--leader-election"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        holder(&leases.get("streamjob-operator").await.unwrap()),
        Some(first_holder)
    );

    // The leader dies without releasing: the standby takes over once the lease expires and runs jobs.
    first.kill();
    let output = out_dir(&tc, "output");
    create_job(&tc, &job_manifest(&tc, "ha", 0, 5_000, &output)).await;
    let lease = tc
        .wait_for::<k8s_openapi::api::coordination::v1::Lease>("streamjob-operator", WAIT, |l| {
            holder(l).is_some_and(|h| h.starts_with("operator-b"))
        })
        .await
        .unwrap();
    assert!(lease.spec.unwrap().lease_transitions.unwrap_or(0) >= 1);
    wait_job(&tc, "ha", "Running under the new leader", |j| {
        running_attempt(j, 1)
    })
    .await;
}

#[tokio::test]
async fn an_upgrade_that_never_becomes_ready_is_rolled_back() {
    install_crypto_provider();
    let tc = TestCluster::new("op-rollback").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let _operator = OperatorProcess::start(&tc, "a", &["--rollback-timeout", "6s"]);
    let output = out_dir(&tc, "output");
    create_job(&tc, &job_manifest(&tc, "rb", 0, 5_000, &output)).await;
    wait_job(&tc, "rb", "Running", |j| running_attempt(j, 1)).await;

    // A bad image tag: the upgraded pods never start.
    patch_spec(&tc, "rb", json!({"image": "test/no-such-image:1"})).await;
    let job = wait_job(&tc, "rb", "rolled back and Running", |j| {
        running_attempt(j, 3)
            && j.status
                .as_ref()
                .is_some_and(|s| s.rolled_back_spec_hash.is_some())
    })
    .await;
    let rolled_back_attempt = attempt(&job);
    let status = job.status.unwrap();
    assert!(status.message.unwrap().contains("rolled back"));
    assert!(status.pending_change.is_none());
    let pod = worker_pod(&tc, "rb").await.unwrap();
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("streamjob/streamjob:dev"),
        "the rolled-back attempt runs the last stable spec"
    );
    let upgrade_savepoint = status
        .savepoints
        .iter()
        .find(|s| s.reason.as_deref() == Some("upgrade"));
    assert!(
        upgrade_savepoint.is_some(),
        "the upgrade took its savepoint first"
    );
    assert!(event_appears(&tc, "rb", "Warning", "RollingBack").await);
    // The spec still says the bad image, and the operator does not retry it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = tc.api::<StreamJob>().get("rb").await.unwrap();
    assert_eq!(job.spec.image, "test/no-such-image:1");
    assert_eq!(
        attempt(&job),
        rolled_back_attempt,
        "no new attempt of the rolled-back spec"
    );
}

async fn pods_of_attempt(tc: &TestCluster, job: &str, attempt: i64) -> Vec<Pod> {
    let selector = format!("streamjob.io/job={job},streamjob.io/attempt={attempt}");
    let mut pods = tc
        .api::<Pod>()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    pods.sort_by_key(|p| p.metadata.name.clone());
    pods
}

#[tokio::test]
async fn a_job_on_several_worker_pods_survives_a_killed_member_and_a_rescale_exactly_once() {
    install_crypto_provider();
    let tc = TestCluster::new("op-workers").await.unwrap();
    let _logs = LogsOnFailure(&tc);
    create_credentials(&tc).await;
    let _operator = OperatorProcess::start(&tc, "a", &[]);
    let output = out_dir(&tc, "output");
    let mut manifest = job_manifest(&tc, "mw", 400_000, 30_000, &output);
    manifest["spec"]["parallelism"] = json!(4);
    manifest["spec"]["workers"] = json!(2);
    create_job(&tc, &manifest).await;

    wait_job(&tc, "mw", "Running on 2 workers with a checkpoint", |j| {
        running_attempt(j, 1)
            && j.status
                .as_ref()
                .and_then(|s| s.last_checkpoint.as_ref())
                .is_some()
    })
    .await;
    let pods = pods_of_attempt(&tc, "mw", 1).await;
    let names: Vec<_> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["mw-worker-0", "mw-worker-1"]);
    let ips: BTreeSet<_> = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(ips.len(), 2, "each worker pod has its own IP: {ips:?}");

    // Kill the member's process: the whole attempt fails and comes back from a checkpoint.
    let killed_at = Instant::now();
    // SAFETY: signalling a process group we own.
    unsafe { libc::kill(-pgid(&pods[1]), libc::SIGKILL) };
    let job = wait_job(
        &tc,
        "mw",
        "Running again after the member was killed",
        |j| running_attempt(j, 2),
    )
    .await;
    eprintln!(
        "[figures] 2-worker job, member kill -> Running again: {:.2}s",
        killed_at.elapsed().as_secs_f64()
    );
    let status = job.status.clone().unwrap();
    assert!(status.restarts >= 1);
    let restored = status.restored_from.clone().expect("restoredFrom");
    assert!(restored.contains("/checkpoints/000001-"), "{restored}");
    assert_eq!(pods_of_attempt(&tc, "mw", 2).await.len(), 2);

    // Rescale the pods 2 -> 3 (an upgrade through a savepoint).
    patch_spec(&tc, "mw", json!({"workers": 3})).await;
    wait_job(&tc, "mw", "Running on 3 workers", |j| {
        running_attempt(j, 3)
            && j.status
                .as_ref()
                .is_some_and(|s| s.pending_change.is_none())
    })
    .await;
    assert_eq!(pods_of_attempt(&tc, "mw", 3).await.len(), 3);

    wait_job(&tc, "mw", "Finished", |j| {
        phase(j) == Some(JobPhase::Finished)
    })
    .await;
    let expected = reference_output(&tc, &manifest);
    let got = committed_lines(&output);
    assert_eq!(got.len(), expected.len(), "no loss, no duplicates");
    assert!(
        got == expected,
        "committed output differs from the failure-free run"
    );
}
