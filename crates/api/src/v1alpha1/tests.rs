//! Unit tests of the StreamJob types: defaults, serde round trip, and the validations in the schema.

use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

const MINIMAL: &str = r#"
apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata:
  name: wc
spec:
  job:
    name: word-count
  storage:
    path: /tmp/snapshots
"#;

const FULL: &str = r#"
apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata:
  name: bids
  namespace: prod
spec:
  image: streamjob/streamjob:0.2.0
  imagePullPolicy: IfNotPresent
  parallelism: 4
  maxParallelism: 256
  job:
    name: windowed-count
    params:
      events: 1000000
      output: s3://out/bids
  checkpoint:
    interval: 5s
    timeout: 10s
    minPause: 2s
    maxConcurrent: 1
    mode: at-least-once
    retained: 5
    incremental: true
    tolerableFailures: 2
  savepoint:
    periodicInterval: 6h
    historyMaxCount: 4
    historyMaxAge: 720h
    onDelete: none
  storage:
    s3:
      bucket: snapshots
      prefix: team-a
      region: eu-west-1
      endpoint: http://127.0.0.1:9000
      forcePathStyle: true
      credentialsSecret:
        name: s3-keys
  upgradeMode: last-state
  maxCheckpointAge: 10m
  state: suspended
  savepointTriggerNonce: 3
  checkpointTriggerNonce: 4
  restartNonce: 5
  initialSavepointPath: s3://snapshots/team-a/prod/bids/savepoints/sp-1
  allowNonRestoredState: true
  restartPolicy:
    maxRestarts: 7
    backoff:
      initial: 2s
      max: 1m
  resources:
    requests:
      cpu: 500m
      memory: 1Gi
  podTemplate:
    metadata:
      labels:
        team: a
    spec:
      nodeSelector:
        disk: ssd
      containers: []
  serviceAccountName: bids-worker
"#;

fn schema() -> Value {
    let crd = serde_json::to_value(crd()).unwrap();
    crd["spec"]["versions"][0].clone()
}

#[test]
fn minimal_manifest_gets_documented_defaults() {
    let job: StreamJob = serde_yaml::from_str(MINIMAL).unwrap();
    let spec = &job.spec;
    assert_eq!(spec.image, DEFAULT_IMAGE);
    assert_eq!(spec.parallelism, 1);
    assert_eq!(spec.max_parallelism, 128);
    assert_eq!(spec.checkpoint, CheckpointSpec::default());
    assert_eq!(spec.checkpoint.interval, "10s");
    assert_eq!(spec.checkpoint.mode, CheckpointMode::ExactlyOnce);
    assert_eq!(spec.checkpoint.retained, 3);
    assert_eq!(spec.savepoint.history_max_count, 10);
    assert_eq!(spec.savepoint.on_delete, OnDelete::Savepoint);
    assert_eq!(spec.upgrade_mode, UpgradeMode::Savepoint);
    assert_eq!(spec.state, JobState::Running);
    assert_eq!(spec.restart_policy.max_restarts, 10);
    assert_eq!(spec.restart_policy.backoff.initial, "1s");
    assert_eq!(spec.restart_policy.backoff.max, "60s");
    assert_eq!(
        spec,
        &StreamJobSpec::builtin("word-count", "/tmp/snapshots")
    );
}

#[test]
fn full_manifest_round_trips() {
    let job: StreamJob = serde_yaml::from_str(FULL).unwrap();
    assert_eq!(job.spec.parallelism, 4);
    assert_eq!(job.spec.checkpoint.mode, CheckpointMode::AtLeastOnce);
    assert_eq!(job.spec.job.param("events").as_deref(), Some("1000000"));
    assert_eq!(
        job.spec.job.params["output"],
        IntOrString::String("s3://out/bids".into())
    );
    let s3 = job.spec.storage.s3.as_ref().unwrap();
    assert!(s3.force_path_style);
    let secret = s3.credentials_secret.as_ref().unwrap();
    assert_eq!(secret.access_key_id_key, "AWS_ACCESS_KEY_ID");
    assert_eq!(job.spec.state, JobState::Suspended);
    let template = job.spec.pod_template.as_ref().unwrap().parse().unwrap();
    assert_eq!(
        template.metadata.as_ref().unwrap().labels.as_ref().unwrap()["team"],
        "a"
    );

    let text = serde_yaml::to_string(&job).unwrap();
    let again: StreamJob = serde_yaml::from_str(&text).unwrap();
    assert_eq!(job, again);

    let mut with_status = job.clone();
    with_status.status = Some(StreamJobStatus {
        phase: Some(JobPhase::Running),
        job_attempt: Some(3),
        restarts: 2,
        last_checkpoint: Some(SnapshotInfo {
            id: 42,
            attempt: 3,
            location: "s3://snapshots/x".into(),
            size_bytes: 10,
            duration_ms: 5,
            ..SnapshotInfo::default()
        }),
        pending_change: Some(PendingChange {
            kind: "upgrade".into(),
            step: "snapshot".into(),
            ..PendingChange::default()
        }),
        ..StreamJobStatus::default()
    });
    let json = serde_json::to_string(&with_status).unwrap();
    assert!(json.contains("\"lastCheckpoint\""), "{json}");
    let back: StreamJob = serde_json::from_str(&json).unwrap();
    assert_eq!(back, with_status);
}

#[test]
fn wrong_enum_values_do_not_deserialize() {
    let bad = MINIMAL.replace("  storage:", "  upgradeMode: yolo\n  storage:");
    assert!(serde_yaml::from_str::<StreamJob>(&bad).is_err());
}

#[test]
fn crd_has_names_subresources_and_columns() {
    let crd = serde_json::to_value(crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "streamjobs.streamjob.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "sj");
    let version = schema();
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(
        version["subresources"]["scale"]["specReplicasPath"],
        ".spec.parallelism"
    );
    assert_eq!(
        version["subresources"]["scale"]["statusReplicasPath"],
        ".status.parallelism"
    );
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Parallelism", "Last Checkpoint", "Restarts", "Age"]
    );
}

#[test]
fn schema_carries_validations_without_cel() {
    let version = schema();
    let text = version.to_string();
    assert!(
        !text.contains("x-kubernetes-validations"),
        "the v1.20 test API server has no CEL"
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let props = &spec["properties"];
    assert_eq!(spec["required"], serde_json::json!(["job", "storage"]));
    assert_eq!(props["parallelism"]["minimum"], 1.0);
    assert_eq!(props["parallelism"]["maximum"], 1024.0);
    assert_eq!(props["maxParallelism"]["maximum"], 32768.0);
    let checkpoint = &props["checkpoint"]["properties"];
    assert_eq!(
        checkpoint["interval"]["pattern"],
        crate::duration::DURATION_PATTERN
    );
    assert_eq!(checkpoint["maxConcurrent"]["minimum"], 1.0);
    assert_eq!(
        checkpoint["mode"]["enum"],
        serde_json::json!(["exactly-once", "at-least-once"])
    );
    assert_eq!(
        props["upgradeMode"]["enum"],
        serde_json::json!(["savepoint", "last-state", "stateless"])
    );
    assert_eq!(
        props["state"]["enum"],
        serde_json::json!(["running", "suspended"])
    );
    assert!(props["storage"]["properties"]["s3"]["properties"]["bucket"]["pattern"].is_string());
    assert_eq!(
        props["podTemplate"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert_eq!(
        props["job"]["properties"]["params"]["additionalProperties"]["x-kubernetes-int-or-string"],
        true
    );
    let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    // Every spec field is documented (descriptions become `kubectl explain` output).
    for (name, field) in props.as_object().unwrap() {
        assert!(
            field["description"].as_str().is_some_and(|d| !d.is_empty()),
            "spec.{name} has no description"
        );
    }
}
