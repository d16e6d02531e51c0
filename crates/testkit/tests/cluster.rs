//! Tests of the local cluster itself: real control plane behaviour (GC, namespace lifecycle),
//! the process kubelet (IPs, env, volumes, probes, restarts, deletion, failures) and S3.
//! Needs the cluster: run `tests/cluster/test.sh` (or `up.sh` first).

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use streamjob_testkit::TestCluster;

const START: Duration = Duration::from_secs(60);

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn sleeper(name: &str) -> Pod {
    pod(
        name,
        json!({"containers": [{"name": "main", "image": "test/sleep:1", "args": ["1000"]}]}),
    )
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn is_running(p: &Pod) -> bool {
    phase(p) == "Running"
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

#[tokio::test]
async fn pod_runs_with_own_ip_env_volumes_and_readiness() {
    let tc = TestCluster::new("pod-runs").await.unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cfg"}, "data": {"greeting": "hello-from-configmap", "k": "cm-value"}
    }))
    .unwrap();
    tc.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "sec"}, "stringData": {"token": "s3cr3t"}
    }))
    .unwrap();
    tc.api()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let script = "echo ip=$POD_IP name=$POD_NAME ns=$POD_NS cm=$CM_VAL secret=$SECRET_VAL; \
                  cat /etc/cfg/greeting; echo; exec python3 -m http.server --bind $POD_IP 8080";
    let p = pod(
        "web",
        json!({
            "containers": [{
                "name": "main", "image": "test/sh:latest", "command": ["/bin/sh", "-c", script],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "CM_VAL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
                    {"name": "SECRET_VAL", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}],
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
        }),
    );
    tc.api::<Pod>()
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    tc.api::<Pod>()
        .create(&PostParams::default(), &sleeper("other"))
        .await
        .unwrap();
    let web = tc
        .wait_for::<Pod>("web", START, |p| is_running(p) && is_ready(p))
        .await
        .unwrap();
    let other = tc
        .wait_for::<Pod>("other", START, is_running)
        .await
        .unwrap();
    let ip = web.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let other_ip = other.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(ip.starts_with("127.0.") && ip != "127.0.0.1", "pod IP {ip}");
    assert_ne!(ip, other_ip, "each pod has its own IP");
    assert_eq!(
        web.spec.as_ref().unwrap().node_name.as_deref(),
        Some(tc.env().node_name.as_str())
    );
    let log = tc.pod_log("web", "main");
    let expected = format!(
        "ip={ip} name=web ns={} cm=cm-value secret=s3cr3t\nhello-from-configmap",
        tc.namespace()
    );
    assert!(log.contains(&expected), "log was:\n{log}");
    // The server really listens on the pod IP.
    let conn = tokio::net::TcpStream::connect((ip.as_str(), 8080)).await;
    assert!(conn.is_ok(), "connect to {ip}:8080: {conn:?}");
}

#[tokio::test]
async fn failing_process_is_restarted_and_counted() {
    let tc = TestCluster::new("restart").await.unwrap();
    let p = pod(
        "crash",
        json!({
            "restartPolicy": "Always",
            "containers": [{"name": "main", "image": "test/sh", "command": ["sh", "-c", "echo started; exit 3"]}],
        }),
    );
    tc.api::<Pod>()
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c[0].restart_count)
            .unwrap_or(0)
    };
    let p = tc
        .wait_for::<Pod>("crash", START, |p| restarts(p) >= 2)
        .await
        .unwrap();
    let cs = &p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    assert_eq!(phase(&p), "Running");
    assert!(tc.pod_log("crash", "main").matches("started").count() >= 3);

    // restartPolicy Never: the pod fails with the exit code, no restart.
    let p = pod(
        "once",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "test/sh", "command": ["sh", "-c", "exit 7"]}],
        }),
    );
    tc.api::<Pod>()
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let p = tc
        .wait_for::<Pod>("once", START, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let cs = &p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(cs.restart_count, 0);
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        7
    );
}

#[tokio::test]
async fn deleted_pod_process_is_gone_within_grace_period() {
    let tc = TestCluster::new("delete").await.unwrap();
    // Ignores SIGTERM, so only the SIGKILL after the grace period stops it.
    let p = pod(
        "stubborn",
        json!({
            "terminationGracePeriodSeconds": 3,
            "containers": [{"name": "main", "image": "test/sh",
                            "command": ["sh", "-c", "trap 'echo got TERM' TERM; while true; do sleep 0.2; done"]}],
        }),
    );
    tc.api::<Pod>()
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    tc.api::<Pod>()
        .create(&PostParams::default(), &sleeper("polite"))
        .await
        .unwrap();
    let stubborn = tc
        .wait_for::<Pod>("stubborn", START, is_running)
        .await
        .unwrap();
    let polite = tc
        .wait_for::<Pod>("polite", START, is_running)
        .await
        .unwrap();
    let (g1, g2) = (pgid(&stubborn), pgid(&polite));
    assert!(group_alive(g1) && group_alive(g2));

    let t0 = Instant::now();
    tc.api::<Pod>()
        .delete("polite", &DeleteParams::default())
        .await
        .unwrap();
    tc.wait_gone::<Pod>("polite", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(!group_alive(g2), "sleep should be gone after SIGTERM");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "SIGTERM honoured quickly: {:?}",
        t0.elapsed()
    );

    let t0 = Instant::now();
    tc.api::<Pod>()
        .delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    tc.wait_gone::<Pod>("stubborn", Duration::from_secs(20))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(!group_alive(g1), "process group {g1} survived deletion");
    assert!(
        took >= Duration::from_millis(2500),
        "grace period not waited: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(tc.pod_log("stubborn", "main").contains("got TERM"));
}

#[tokio::test]
async fn unknown_image_and_unsupported_volume_fail_clearly() {
    let tc = TestCluster::new("unknown-image").await.unwrap();
    let p = pod(
        "ghost",
        json!({"containers": [{"name": "main", "image": "example.com/ghost:1"}]}),
    );
    tc.api::<Pod>()
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let waiting_reason = |p: &Pod| -> Option<(String, String)> {
        let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))
    };
    let p = tc
        .wait_for::<Pod>("ghost", START, |p| {
            waiting_reason(p).is_some_and(|(r, _)| r == "ErrImagePull")
        })
        .await
        .unwrap();
    let (_, message) = waiting_reason(&p).unwrap();
    assert!(
        message.contains("not in the process kubelet's image map"),
        "{message}"
    );
    assert_eq!(phase(&p), "Pending");

    let p = pod(
        "hostpath",
        json!({
            "containers": [{"name": "main", "image": "test/sleep", "args": ["100"]}],
            "volumes": [{"name": "h", "hostPath": {"path": "/tmp"}}],
        }),
    );
    tc.api::<Pod>()
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let p = tc
        .wait_for::<Pod>("hostpath", START, |p| phase(p) == "Failed")
        .await
        .unwrap();
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("UnsupportedByProcessKubelet"));
    assert!(st.message.unwrap_or_default().contains("unsupported type"));
}

#[tokio::test]
async fn owner_deletion_garbage_collects_pods() {
    let tc = TestCluster::new("gc").await.unwrap();
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap();
    let owner = tc
        .api::<ConfigMap>()
        .create(&PostParams::default(), &owner)
        .await
        .unwrap();
    let mut child = sleeper("child");
    child.metadata.owner_references = Some(vec![serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
    }))
    .unwrap()]);
    tc.api::<Pod>()
        .create(&PostParams::default(), &child)
        .await
        .unwrap();
    let child = tc
        .wait_for::<Pod>("child", START, is_running)
        .await
        .unwrap();
    let g = pgid(&child);
    tc.api::<ConfigMap>()
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    tc.wait_gone::<Pod>("child", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!group_alive(g));
}

#[tokio::test]
async fn namespace_deletes_cleanly() {
    let tc = TestCluster::new("ns-delete").await.unwrap();
    tc.api::<Pod>()
        .create(&PostParams::default(), &sleeper("a"))
        .await
        .unwrap();
    let a = tc.wait_for::<Pod>("a", START, is_running).await.unwrap();
    // The default service account token (a Secret volume added by admission) was mounted.
    assert!(a
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .any(|v| v.secret.is_some()));
    let g = pgid(&a);
    let nss: Api<Namespace> = Api::all(tc.client());
    nss.delete(tc.namespace(), &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while nss.get_opt(tc.namespace()).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "namespace still there after 90s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!group_alive(g));
}

#[tokio::test]
async fn s3_put_get_list_multipart_and_auth() {
    let tc = TestCluster::new("s3").await.unwrap();
    let s3 = tc.s3();
    let b = tc.bucket();
    for key in ["a/1", "a/2", "b/1"] {
        s3.put_object()
            .bucket(b)
            .key(key)
            .body(ByteStream::from(key.as_bytes().to_vec()))
            .send()
            .await
            .unwrap();
    }
    let got = s3.get_object().bucket(b).key("a/2").send().await.unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"a/2"
    );
    let listed = s3
        .list_objects_v2()
        .bucket(b)
        .prefix("a/")
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["a/1", "a/2"]);

    // Multipart: two 5 MiB parts and a small last one.
    let key = "big/object";
    let up = s3
        .create_multipart_upload()
        .bucket(b)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    let mut all = Vec::new();
    for (n, size) in [(1, 5 << 20), (2, 5 << 20), (3, 1000)] {
        let data = vec![n as u8; size];
        all.extend_from_slice(&data);
        let r = s3
            .upload_part()
            .bucket(b)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(data))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(r.e_tag().map(String::from))
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let got = s3.get_object().bucket(b).key(key).send().await.unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        all.as_slice()
    );

    // A wrong secret is refused.
    let bad = tc.env().s3_client_with_secret("not-the-secret");
    let err = bad
        .get_object()
        .bucket(b)
        .key("a/1")
        .send()
        .await
        .expect_err("wrong secret accepted");
    let text = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&err));
    assert!(
        text.contains("SignatureDoesNotMatch")
            || text.contains("403")
            || text.contains("AccessDenied"),
        "{text}"
    );
}
