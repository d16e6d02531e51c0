//! Observation: turn what the API server, the worker control API and snapshot storage say into the
//! plain facts of `facts.rs`. The conversions are pure functions; the reads are thin wrappers.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret};
use streamjob_api::v1alpha1::{SnapshotInfo, StreamJobSpec};
use streamjob_api::{LABEL_ATTEMPT, LABEL_WORKER_INDEX};
use streamjob_checkpoint::attempts::read_attempts;
use streamjob_checkpoint::catalog::{list_snapshots, CatalogError};
use streamjob_checkpoint::decide::{select_restore, SnapshotFacts};
use streamjob_checkpoint::url::{open_store, S3Options, UrlError};
use streamjob_checkpoint::{SnapshotKind, SnapshotStore};

use crate::decide::ms_time;
use crate::facts::{IndexedSnapshot, ObservedPod, PodPhase, SnapshotIndex};

/// The facts of one worker pod.
pub fn pod_facts(pod: &Pod) -> ObservedPod {
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "worker"));
    let terminated = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let mut phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    };
    // The container may have ended before the pod phase says so.
    if let Some(t) = terminated {
        phase = if t.exit_code == 0 {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        };
    }
    let failure = match (phase, terminated) {
        (PodPhase::Failed, Some(t)) => Some(format!(
            "{} (exit code {}){}",
            t.reason.as_deref().unwrap_or("Error"),
            t.exit_code,
            t.message
                .as_deref()
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default()
        )),
        (PodPhase::Failed, None) => Some(
            status
                .and_then(|s| s.reason.clone().or(s.message.clone()))
                .unwrap_or_else(|| "pod failed".into()),
        ),
        _ => container
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_ref().map(|r| (r, w.message.as_ref())))
            .map(|(reason, message)| match message {
                Some(m) => format!("{reason}: {m}"),
                None => reason.clone(),
            }),
    };
    ObservedPod {
        name: pod.metadata.name.clone().unwrap_or_default(),
        attempt: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_ATTEMPT))
            .and_then(|a| a.parse().ok()),
        worker: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_WORKER_INDEX))
            .and_then(|w| w.parse().ok()),
        phase,
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        ip: status.and_then(|s| s.pod_ip.clone()),
        failure,
        created_ms: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(crate::decide::time_ms),
    }
}

/// The control token stored in the job's Secret, if it exists.
pub fn token_of(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|t| !t.is_empty())
}

/// Storage settings with the credentials read from the job's Secret.
pub fn s3_options(spec: &StreamJobSpec, secret: Option<&Secret>) -> S3Options {
    let mut options = S3Options::default();
    if let Some(s3) = &spec.storage.s3 {
        options.endpoint = s3.endpoint.clone();
        options.region = Some(
            s3.region
                .clone()
                .unwrap_or_else(|| streamjob_checkpoint::DEFAULT_REGION.to_string()),
        );
        options.force_path_style = Some(s3.force_path_style);
        if let (Some(reference), Some(secret)) = (&s3.credentials_secret, secret) {
            options.access_key_id = token_of(secret, &reference.access_key_id_key);
            options.secret_access_key = token_of(secret, &reference.secret_access_key_key);
        }
    }
    // Without a Secret, the operator's own environment (IRSA, instance profile, env keys) applies.
    options.with_env_defaults()
}

/// Open the job's snapshot storage.
pub async fn open_job_store(
    url: &str,
    options: S3Options,
) -> Result<Arc<dyn SnapshotStore>, UrlError> {
    open_store(url, options).await
}

fn info(storage_url: &str, facts: &SnapshotFacts) -> Option<IndexedSnapshot> {
    let manifest = facts.manifest.as_ref().ok()?;
    Some(IndexedSnapshot {
        dir: facts.dir.clone(),
        info: SnapshotInfo {
            id: facts.checkpoint_id as i64,
            attempt: facts.attempt as i64,
            location: format!("{}/{}", storage_url.trim_end_matches('/'), facts.dir),
            completed_at: Some(ms_time(manifest.created_at_ms)),
            size_bytes: manifest.total_size() as i64,
            duration_ms: manifest.duration_ms as i64,
            reason: None,
        },
    })
}

/// The index of what storage holds (pure, over facts already read).
pub fn index_from(
    storage_url: &str,
    attempts: &[streamjob_checkpoint::attempts::AttemptRecord],
    snapshots: &[SnapshotFacts],
) -> SnapshotIndex {
    let decision = select_restore(attempts, snapshots);
    let restore_point = decision.chosen.as_ref().and_then(|c| {
        snapshots
            .iter()
            .find(|s| s.dir == c.dir)
            .and_then(|s| info(storage_url, s))
    });
    let mut complete: Vec<&SnapshotFacts> =
        snapshots.iter().filter(|s| s.manifest.is_ok()).collect();
    complete.sort_by_key(|s| std::cmp::Reverse((s.checkpoint_id, s.attempt)));
    SnapshotIndex {
        restore_point,
        last_checkpoint: complete
            .iter()
            .find(|s| s.kind == SnapshotKind::Checkpoint)
            .and_then(|s| info(storage_url, s))
            .map(|s| s.info),
        savepoints: complete
            .iter()
            .filter(|s| s.kind == SnapshotKind::Savepoint)
            .filter_map(|s| info(storage_url, s))
            .collect(),
        newest_attempt: attempts.iter().map(|a| a.attempt).max().unwrap_or(0),
        skipped: decision.skipped.iter().map(ToString::to_string).collect(),
    }
}

/// Read the snapshot index of a job from its storage.
pub async fn read_index(
    store: &dyn SnapshotStore,
    storage_url: &str,
) -> Result<SnapshotIndex, CatalogError> {
    let attempts = read_attempts(store).await?;
    let snapshots = list_snapshots(store).await?;
    Ok(index_from(storage_url, &attempts, &snapshots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use std::collections::BTreeMap;

    fn pod(phase: &str, exit: Option<i32>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("j-worker-0".into());
        p.metadata.labels = Some(BTreeMap::from([(
            LABEL_ATTEMPT.to_string(),
            "3".to_string(),
        )]));
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: Some("127.0.1.4".into()),
            container_statuses: exit.map(|code| {
                vec![ContainerStatus {
                    name: "worker".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn pod_phases_and_failures() {
        let running = pod_facts(&pod("Running", None));
        assert_eq!(running.phase, PodPhase::Running);
        assert_eq!(running.attempt, Some(3));
        assert_eq!(running.ip.as_deref(), Some("127.0.1.4"));
        let failed = pod_facts(&pod("Running", Some(137)));
        assert_eq!(
            failed.phase,
            PodPhase::Failed,
            "a dead container fails the pod at once"
        );
        assert_eq!(failed.failure.as_deref(), Some("Error (exit code 137)"));
        assert_eq!(
            pod_facts(&pod("Succeeded", Some(0))).phase,
            PodPhase::Succeeded
        );
        assert_eq!(pod_facts(&pod("Pending", None)).phase, PodPhase::Pending);
    }
}
