//! The lifecycle decision table: each test is one row (facts -> status, actions, events).

use super::*;
use crate::facts::IndexedSnapshot;
use streamjob_api::v1alpha1::{SnapshotInfo, StreamJobSpec};

const ROOT: &str = "s3://bucket/ns/job";
const NOW: u64 = 1_800_000_000_000;

struct Case {
    spec: StreamJobSpec,
    status: StreamJobStatus,
    pods: Vec<ObservedPod>,
    report: Option<WorkerReport>,
    index: Option<SnapshotIndex>,
    invalid: Vec<Invalid>,
    storage_error: Option<String>,
    deleting: bool,
    now: u64,
    hash: String,
}

fn spec() -> StreamJobSpec {
    StreamJobSpec::builtin("windowed-count", ROOT)
}

fn checkpoint(attempt: u64, id: u64, completed: u64) -> IndexedSnapshot {
    let dir = format!("checkpoints/{attempt:06}-{id:010}");
    IndexedSnapshot {
        info: SnapshotInfo {
            id: id as i64,
            attempt: attempt as i64,
            location: format!("{ROOT}/{dir}"),
            completed_at: Some(ms_time(completed)),
            ..SnapshotInfo::default()
        },
        dir,
    }
}

fn savepoint(attempt: u64, id: u64, completed: u64) -> IndexedSnapshot {
    let dir = format!("savepoints/sp-{id:010}-{attempt:06}");
    IndexedSnapshot {
        info: SnapshotInfo {
            id: id as i64,
            attempt: attempt as i64,
            location: format!("{ROOT}/{dir}"),
            completed_at: Some(ms_time(completed)),
            ..SnapshotInfo::default()
        },
        dir,
    }
}

fn index_with(restore: Option<IndexedSnapshot>, newest_attempt: u64) -> SnapshotIndex {
    SnapshotIndex {
        last_checkpoint: restore.as_ref().map(|r| r.info.clone()),
        restore_point: restore,
        savepoints: Vec::new(),
        newest_attempt,
        skipped: Vec::new(),
    }
}

fn pod(attempt: u64, phase: PodPhase) -> ObservedPod {
    ObservedPod {
        name: "job-worker-0".into(),
        attempt: Some(attempt),
        worker: Some(0),
        phase,
        ready: phase == PodPhase::Running,
        terminating: false,
        ip: Some("127.0.1.1".into()),
        failure: (phase == PodPhase::Failed).then(|| "exit code 1".to_string()),
        created_ms: Some(NOW - 10_000),
    }
}

fn report(attempt: u64, state: WorkerState) -> WorkerReport {
    WorkerReport {
        attempt,
        state,
        last_checkpoint: None,
        failure: None,
    }
}

impl Case {
    fn new() -> Self {
        let spec = spec();
        let hash = crate::hash::pod_spec_hash(&spec);
        Case {
            spec,
            status: StreamJobStatus::default(),
            pods: Vec::new(),
            report: None,
            index: Some(SnapshotIndex::default()),
            invalid: Vec::new(),
            storage_error: None,
            deleting: false,
            now: NOW,
            hash,
        }
    }

    /// Attempt `attempt` runs the current spec and its worker reports running.
    fn running(attempt: u64) -> Self {
        let mut c = Case::new();
        c.status.job_attempt = Some(attempt as i64);
        c.status.phase = Some(JobPhase::Running);
        c.status.running_spec_hash = Some(c.hash.clone());
        c.pods = vec![pod(attempt, PodPhase::Running)];
        c.report = Some(report(attempt, WorkerState::Running));
        c
    }

    fn rehash(&mut self) {
        self.hash = crate::hash::pod_spec_hash(&self.spec);
    }

    fn decide(&self) -> Decision {
        let limits = Limits::default();
        decide(&Input {
            spec: &self.spec,
            generation: 2,
            deleting: self.deleting,
            status: &self.status,
            spec_hash: &self.hash,
            storage_url: ROOT,
            invalid: &self.invalid,
            pods: &self.pods,
            report: self.report.as_ref(),
            index: self.index.as_ref(),
            storage_error: self.storage_error.as_deref(),
            now_ms: self.now,
            limits: &limits,
        })
    }
}

fn starts(d: &Decision) -> Option<&AttemptPlan> {
    d.actions.iter().find_map(|a| match a {
        Action::StartAttempt(p) => Some(p),
        _ => None,
    })
}

fn reasons(d: &Decision) -> Vec<&'static str> {
    d.events.iter().map(|e| e.reason).collect()
}

#[test]
fn a_new_job_starts_attempt_above_every_attempt_in_storage_with_empty_state() {
    let mut c = Case::new();
    c.index = Some(index_with(None, 4));
    let d = c.decide();
    let plan = starts(&d).expect("starts an attempt");
    assert_eq!(plan.attempt, 5);
    assert_eq!(plan.restore, RESTORE_NONE);
    let pending = d
        .status
        .pending_change
        .as_ref()
        .expect("intention recorded");
    assert_eq!(
        (pending.kind.as_str(), pending.step.as_str()),
        (kind::DEPLOY, step::STARTING)
    );
    assert_eq!(d.status.job_attempt, Some(5));
    assert_eq!(d.status.running_spec_hash.as_deref(), Some(c.hash.as_str()));
    assert_eq!(d.status.phase, Some(JobPhase::Deploying));
}

#[test]
fn a_new_job_with_an_initial_savepoint_restores_it() {
    let mut c = Case::new();
    c.spec.initial_savepoint_path = Some(format!("{ROOT}/savepoints/sp-0000000007-000001"));
    let d = c.decide();
    assert_eq!(
        starts(&d).unwrap().restore,
        "savepoints/sp-0000000007-000001"
    );
    assert_eq!(
        d.status.restored_from.as_deref(),
        Some("s3://bucket/ns/job/savepoints/sp-0000000007-000001")
    );
}

#[test]
fn a_new_job_waits_for_storage_before_choosing_its_attempt_number() {
    let mut c = Case::new();
    c.index = None;
    let d = c.decide();
    assert!(starts(&d).is_none());
    assert_eq!(
        d.status.pending_change.as_ref().unwrap().step,
        step::STOPPING
    );
    assert_eq!(d.status.job_attempt, None);
}

#[test]
fn the_starting_step_ends_when_the_pods_exist_and_repeats_the_apply_until_then() {
    let mut c = Case::new();
    let first = c.decide();
    c.status = first.status.clone();
    // Operator restarted before the pods were created: it applies the same attempt again.
    let again = c.decide();
    assert_eq!(starts(&again), starts(&first));
    c.pods = vec![pod(1, PodPhase::Pending)];
    let d = c.decide();
    assert!(d.status.pending_change.is_none());
    assert!(starts(&d).is_none());
    assert_eq!(d.status.phase, Some(JobPhase::Deploying));
}

#[test]
fn running_is_reported_once_the_worker_runs() {
    let mut c = Case::running(1);
    c.status.phase = Some(JobPhase::Deploying);
    let d = c.decide();
    assert_eq!(d.status.phase, Some(JobPhase::Running));
    assert!(d.status.last_stable_spec.is_some());
    assert_eq!(reasons(&d), vec!["Running"]);
    let ready = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert!(
        d.status.conditions.iter().all(|c| !c.message.is_empty()),
        "the API server turns an empty message into null and rejects the status"
    );
    assert!(d.actions.is_empty());
}

#[test]
fn a_failed_pod_starts_a_restart_from_the_latest_checkpoint_after_backoff() {
    let mut c = Case::running(3);
    c.pods = vec![pod(3, PodPhase::Failed)];
    c.index = Some(index_with(Some(checkpoint(3, 9, NOW - 5_000)), 3));
    let d = c.decide();
    assert_eq!(d.status.restarts, 1);
    assert_eq!(d.status.consecutive_failures, 1);
    let failure = d.status.last_failure.as_ref().unwrap();
    assert_eq!((failure.reason.as_str(), failure.attempt), ("PodFailed", 3));
    assert_eq!(failure.pod.as_deref(), Some("job-worker-0"));
    assert!(reasons(&d).contains(&"PodFailed"));
    assert_eq!(
        d.actions,
        vec![Action::DeletePods(vec!["job-worker-0".into()])]
    );
    assert_eq!(d.status.phase, Some(JobPhase::Restarting));

    // Pods gone; within the 1 s initial backoff nothing starts.
    c.status = d.status;
    c.pods.clear();
    c.report = None;
    c.now = NOW + 200;
    assert!(starts(&c.decide()).is_none());
    c.now = NOW + 1_100;
    let d = c.decide();
    let plan = starts(&d).expect("restarts after the backoff");
    assert_eq!(plan.attempt, 4);
    assert_eq!(plan.restore, "checkpoints/000003-0000000009");
    assert_eq!(
        d.status.restored_from.as_deref(),
        Some("s3://bucket/ns/job/checkpoints/000003-0000000009")
    );
}

#[test]
fn a_deleted_pod_is_a_failure_too() {
    let mut c = Case::running(2);
    c.pods.clear();
    let d = c.decide();
    assert_eq!(d.status.last_failure.as_ref().unwrap().reason, "PodDeleted");
    assert_eq!(
        d.status.pending_change.as_ref().unwrap().kind,
        kind::RESTART
    );
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let s = spec();
    assert_eq!(restart_backoff(&s, 1), Duration::from_secs(1));
    assert_eq!(restart_backoff(&s, 3), Duration::from_secs(4));
    assert!(restart_backoff(&s, 30) <= Duration::from_secs(300));
}

#[test]
fn too_many_consecutive_failures_give_up() {
    let mut c = Case::running(5);
    c.spec.restart_policy.max_restarts = 2;
    c.status.consecutive_failures = 2;
    c.pods = vec![pod(5, PodPhase::Failed)];
    let d = c.decide();
    assert_eq!(d.status.phase, Some(JobPhase::Failed));
    assert!(d.status.pending_change.is_none());
    assert!(reasons(&d).contains(&"GaveUp"));
    // A restart nonce brings it back.
    c.status = d.status;
    c.pods.clear();
    c.spec.restart_nonce = Some(1);
    let d = c.decide();
    assert_eq!(
        d.status.pending_change.as_ref().unwrap().kind,
        kind::RESTART
    );
    assert_eq!(d.status.consecutive_failures, 0);
}

#[test]
fn a_checkpoint_of_the_current_attempt_resets_the_failure_count() {
    let mut c = Case::running(4);
    c.status.consecutive_failures = 3;
    c.index = Some(index_with(Some(checkpoint(4, 12, NOW)), 4));
    assert_eq!(c.decide().status.consecutive_failures, 0);
    c.index = Some(index_with(Some(checkpoint(3, 11, NOW)), 4));
    assert_eq!(c.decide().status.consecutive_failures, 3);
}

#[test]
fn an_upgrade_in_savepoint_mode_records_its_intention_then_asks_for_a_stop_with_savepoint() {
    let mut c = Case::running(1);
    c.spec.parallelism = 3;
    c.rehash();
    let d = c.decide();
    let pending = d.status.pending_change.as_ref().unwrap();
    assert_eq!(
        (pending.kind.as_str(), pending.step.as_str()),
        (kind::UPGRADE, step::SNAPSHOT)
    );
    assert_eq!(pending.target_spec_hash.as_deref(), Some(c.hash.as_str()));
    assert_eq!(
        d.actions,
        vec![Action::Savepoint {
            stop: true,
            reason: "upgrade",
            nonce: None
        }]
    );
    assert_eq!(d.status.phase, Some(JobPhase::Upgrading));

    // The savepoint answer moves the change on; the next pass deletes the old pods.
    let mut status = d.status.clone();
    let sp = savepoint(1, 4, NOW + 500);
    let note = record_savepoint(&mut status, Ok(sp.info.clone()), true, "upgrade", None);
    assert!(!note.warning);
    assert_eq!(status.pending_change.as_ref().unwrap().step, step::STOPPING);
    c.status = status;
    c.pods = vec![pod(1, PodPhase::Succeeded)];
    c.report = None;
    let d = c.decide();
    assert_eq!(
        d.actions,
        vec![Action::DeletePods(vec!["job-worker-0".into()])]
    );
    c.status = d.status;
    c.pods.clear();
    c.index = Some(index_with(Some(sp.clone()), 1));
    let d = c.decide();
    let plan = starts(&d).unwrap();
    assert_eq!((plan.attempt, plan.restore.as_str()), (2, sp.dir.as_str()));
    assert_eq!(d.status.parallelism, Some(3));
}

#[test]
fn an_operator_restarted_after_the_savepoint_finds_it_in_storage() {
    let mut c = Case::running(1);
    c.spec.parallelism = 3;
    c.rehash();
    c.status = c.decide().status;
    // The worker stopped with its savepoint, but the answer was lost with the operator.
    c.pods = vec![pod(1, PodPhase::Succeeded)];
    c.report = None;
    let sp = savepoint(1, 4, NOW + 500);
    c.index = Some(index_with(Some(sp.clone()), 1));
    let d = c.decide();
    let pending = d.status.pending_change.as_ref().unwrap();
    assert_eq!(pending.step, step::STOPPING);
    assert_eq!(
        pending.restore_from.as_deref(),
        Some(sp.info.location.as_str())
    );
    assert_eq!(
        d.actions,
        vec![Action::DeletePods(vec!["job-worker-0".into()])]
    );
}

#[test]
fn an_upgrade_of_a_dead_job_restores_from_the_latest_checkpoint() {
    let mut c = Case::running(1);
    c.status.phase = Some(JobPhase::Running);
    c.report = Some(report(1, WorkerState::Starting));
    c.pods = vec![pod(1, PodPhase::Running)];
    c.spec.parallelism = 4;
    c.rehash();
    let d = c.decide();
    let pending = d.status.pending_change.as_ref().unwrap();
    assert_eq!(pending.step, step::STOPPING);
    assert!(pending.restore_from.is_none());
}

#[test]
fn last_state_uses_a_fresh_checkpoint_and_takes_a_savepoint_when_it_is_too_old() {
    let mut c = Case::running(2);
    c.spec.upgrade_mode = UpgradeMode::LastState;
    c.spec.max_checkpoint_age = Some("1m".into());
    c.spec.job.args = vec!["x".into()];
    c.rehash();
    c.index = Some(index_with(Some(checkpoint(2, 8, NOW - 10_000)), 2));
    let d = c.decide();
    assert_eq!(
        d.status.pending_change.as_ref().unwrap().step,
        step::STOPPING
    );
    c.index = Some(index_with(Some(checkpoint(2, 8, NOW - 120_000)), 2));
    let d = c.decide();
    assert_eq!(
        d.status.pending_change.as_ref().unwrap().step,
        step::SNAPSHOT
    );
}

#[test]
fn stateless_upgrades_start_empty() {
    let mut c = Case::running(2);
    c.spec.upgrade_mode = UpgradeMode::Stateless;
    c.spec.image = "streamjob/streamjob:0.2.0".into();
    c.rehash();
    let d = c.decide();
    let pending = d.status.pending_change.as_ref().unwrap();
    assert_eq!(pending.restore_from.as_deref(), Some(RESTORE_NONE));
    c.status = d.status;
    c.pods.clear();
    c.index = Some(index_with(Some(checkpoint(2, 8, NOW)), 2));
    assert_eq!(starts(&c.decide()).unwrap().restore, RESTORE_NONE);
}

#[test]
fn operator_only_changes_do_not_restart_the_job() {
    let mut c = Case::running(1);
    c.spec.savepoint.history_max_count = 3;
    c.spec.restart_policy.max_restarts = 1;
    let d = c.decide();
    assert!(d.status.pending_change.is_none());
    assert!(d.actions.is_empty());
}

#[test]
fn suspend_takes_a_savepoint_removes_pods_and_resume_restores_it() {
    let mut c = Case::running(1);
    c.spec.state = JobState::Suspended;
    let d = c.decide();
    assert_eq!(d.status.phase, Some(JobPhase::Suspending));
    assert!(matches!(
        d.actions[0],
        Action::Savepoint {
            stop: true,
            reason: "suspend",
            ..
        }
    ));
    let mut status = d.status;
    let sp = savepoint(1, 6, NOW + 100);
    record_savepoint(&mut status, Ok(sp.info.clone()), true, "suspend", None);
    c.status = status;
    c.pods.clear();
    c.report = None;
    let mut index = index_with(Some(sp.clone()), 1);
    index.savepoints = vec![sp.clone()];
    c.index = Some(index);
    let d = c.decide();
    assert_eq!(d.status.phase, Some(JobPhase::Suspended));
    assert!(d.status.pending_change.is_none());
    assert!(d.actions.is_empty());

    c.status = d.status;
    c.spec.state = JobState::Running;
    let d = c.decide();
    let plan = starts(&d).unwrap();
    assert_eq!((plan.attempt, plan.restore.as_str()), (2, sp.dir.as_str()));
    assert_eq!(d.status.pending_change.as_ref().unwrap().kind, kind::RESUME);
}

#[test]
fn invalid_spec_is_reported_once_and_touches_nothing() {
    let mut c = Case::running(1);
    c.spec.parallelism = 9;
    c.rehash();
    c.invalid = vec![Invalid {
        field: "spec.parallelism".into(),
        message: "above maxParallelism".into(),
    }];
    let d = c.decide();
    assert!(d.actions.is_empty());
    assert!(d.status.pending_change.is_none());
    assert_eq!(reasons(&d), vec!["InvalidSpec"]);
    let ready = d
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(d
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("spec.parallelism"));
    c.status = d.status;
    assert!(
        c.decide().events.is_empty(),
        "the same problem is not reported twice"
    );
}

#[test]
fn delete_takes_a_final_savepoint_when_asked_then_stops_and_releases() {
    let mut c = Case::running(1);
    c.spec.savepoint.on_delete = OnDelete::Savepoint;
    c.deleting = true;
    let d = c.decide();
    assert!(matches!(
        d.actions[0],
        Action::Savepoint {
            stop: true,
            reason: "delete",
            ..
        }
    ));
    assert_eq!(d.status.phase, Some(JobPhase::Deleting));
    // The savepoint never comes: after the bound, deletion goes on without it.
    c.status = d.status;
    c.now = NOW + 121_000;
    let d = c.decide();
    assert!(reasons(&d).contains(&"DeleteSavepointTimeout"));
    assert_eq!(
        d.actions,
        vec![Action::DeletePods(vec!["job-worker-0".into()])]
    );
    c.status = d.status;
    c.pods.clear();
    assert_eq!(c.decide().actions, vec![Action::RemoveFinalizer]);
}

#[test]
fn delete_without_savepoint_stops_pods_first() {
    let mut c = Case::running(1);
    c.spec.savepoint.on_delete = OnDelete::None;
    c.deleting = true;
    let d = c.decide();
    assert_eq!(
        d.actions,
        vec![Action::DeletePods(vec!["job-worker-0".into()])]
    );
}

#[test]
fn nonces_trigger_savepoints_and_checkpoints_once() {
    let mut c = Case::running(1);
    c.spec.savepoint_trigger_nonce = Some(7);
    let d = c.decide();
    assert_eq!(
        d.actions,
        vec![Action::Savepoint {
            stop: false,
            reason: "manual",
            nonce: Some(7)
        }]
    );
    let mut status = d.status;
    record_savepoint(
        &mut status,
        Ok(savepoint(1, 3, NOW).info),
        false,
        "manual",
        Some(7),
    );
    assert_eq!(status.handled_nonces.savepoint, Some(7));
    assert!(status.pending_change.is_none());
    c.status = status;
    assert!(c.decide().actions.is_empty());
    c.spec.checkpoint_trigger_nonce = Some(1);
    assert_eq!(c.decide().actions, vec![Action::Checkpoint { nonce: 1 }]);
}

#[test]
fn nonces_set_at_creation_are_not_triggers() {
    let mut c = Case::new();
    c.spec.savepoint_trigger_nonce = Some(1);
    let d = c.decide();
    assert_eq!(d.status.handled_nonces.savepoint, Some(1));
}

#[test]
fn savepoint_history_deletes_old_savepoints_from_storage_but_never_the_newest() {
    let mut c = Case::running(1);
    c.spec.savepoint.history_max_count = 2;
    let sps = vec![
        savepoint(1, 30, NOW - 1_000),
        savepoint(1, 20, NOW - 2_000),
        savepoint(1, 10, NOW - 3_000),
    ];
    let mut index = index_with(None, 1);
    index.savepoints = sps.clone();
    c.index = Some(index);
    let d = c.decide();
    assert_eq!(
        d.actions,
        vec![Action::DeleteSnapshots(vec![sps[2].dir.clone()])]
    );
    assert_eq!(d.status.savepoints.len(), 2);
    assert_eq!(d.status.last_savepoint.as_ref().unwrap().id, 30);

    c.spec.savepoint.history_max_count = 1;
    c.spec.savepoint.history_max_age = Some("1ms".into());
    let d = c.decide();
    assert_eq!(
        d.actions,
        vec![Action::DeleteSnapshots(vec![
            sps[1].dir.clone(),
            sps[2].dir.clone()
        ])]
    );
}

#[test]
fn pods_of_an_older_attempt_are_removed() {
    let mut c = Case::running(3);
    let mut old = pod(2, PodPhase::Running);
    old.name = "job-worker-0-old".into();
    c.pods.push(old);
    let d = c.decide();
    assert!(d
        .actions
        .contains(&Action::DeletePods(vec!["job-worker-0-old".into()])));
}

#[test]
fn a_finished_job_stays_finished_until_its_spec_changes() {
    let mut c = Case::running(1);
    c.pods = vec![pod(1, PodPhase::Succeeded)];
    c.report = None;
    let d = c.decide();
    assert_eq!(d.status.phase, Some(JobPhase::Finished));
    c.status = d.status;
    assert!(c.decide().actions.is_empty());
    c.spec.parallelism = 2;
    c.rehash();
    assert_eq!(
        c.decide().status.pending_change.unwrap().kind,
        kind::UPGRADE
    );
}

#[test]
fn relative_dirs_strip_the_storage_root() {
    assert_eq!(
        relative_dir(ROOT, "s3://bucket/ns/job/checkpoints/a/"),
        "checkpoints/a"
    );
    assert_eq!(relative_dir(ROOT, "savepoints/sp"), "savepoints/sp");
}

#[test]
fn a_pod_that_never_starts_fails_the_attempt_after_the_start_limit() {
    let mut c = Case::running(1);
    c.status.phase = Some(JobPhase::Deploying);
    c.report = None;
    let mut p = pod(1, PodPhase::Pending);
    p.failure = Some("CreateContainerConfigError: secret \"s3\" not found".into());
    p.created_ms = Some(NOW - 301_000);
    c.pods = vec![p];
    let d = c.decide();
    let failure = d.status.last_failure.as_ref().unwrap();
    assert_eq!(failure.reason, "StartTimeout");
    assert!(failure
        .message
        .as_ref()
        .unwrap()
        .contains("CreateContainerConfigError"));
    c.pods[0].created_ms = Some(NOW - 1_000);
    assert!(c.decide().status.last_failure.is_none());
}

#[test]
fn an_upgrade_that_never_runs_is_rolled_back_to_the_last_stable_spec() {
    // Attempt 1 ran the stable spec; the upgrade to parallelism 3 is attempt 2,
    // which has crash-looped since `unproven_since`.
    let stable = spec();
    let stable_hash = crate::hash::pod_spec_hash(&stable);
    let mut c = Case::running(2);
    c.spec.parallelism = 3;
    c.rehash();
    c.status.running_spec_hash = Some(c.hash.clone());
    c.status.last_stable_spec = Some(serde_json::to_string(&stable).unwrap());
    c.status.phase = Some(JobPhase::Deploying);
    c.status.unproven_since = Some(ms_time(NOW - 301_000));
    c.pods = vec![pod(2, PodPhase::Pending)];
    c.report = None;
    let d = c.decide();
    assert!(reasons(&d).contains(&"RollingBack"));
    let pending = d.status.pending_change.as_ref().unwrap();
    assert_eq!(pending.kind, kind::ROLLBACK);
    assert_eq!(
        pending.target_spec_hash.as_deref(),
        Some(stable_hash.as_str())
    );
    assert_eq!(
        d.status.rolled_back_spec_hash.as_deref(),
        Some(c.hash.as_str())
    );
    assert_eq!(d.status.phase, Some(JobPhase::Upgrading));

    c.status = d.status;
    c.pods.clear();
    let d = c.decide();
    let plan = starts(&d).expect("a new attempt of the stable spec");
    assert!(plan.last_stable);
    assert_eq!(plan.attempt, 3);
    assert_eq!(d.status.parallelism, Some(stable.parallelism));
    assert_eq!(
        d.status.running_spec_hash.as_deref(),
        Some(stable_hash.as_str())
    );

    // It runs: no new upgrade to the rolled-back spec, the stable spec stays the stable one.
    c.status = d.status;
    c.status.pending_change = None;
    c.pods = vec![pod(3, PodPhase::Running)];
    c.report = Some(report(3, WorkerState::Running));
    let d = c.decide();
    assert_eq!(d.status.phase, Some(JobPhase::Running));
    assert!(d.status.pending_change.is_none());
    assert!(reasons(&d).contains(&"RolledBack"));
    assert_eq!(
        stable_spec(&d.status).unwrap().parallelism,
        stable.parallelism
    );
    assert!(d.status.message.as_ref().unwrap().contains("rolled back"));

    // A failure now restarts the stable spec, not the rolled-back one.
    c.status = d.status;
    c.pods = vec![pod(3, PodPhase::Failed)];
    let d = c.decide();
    let pending = d.status.pending_change.as_ref().unwrap();
    assert_eq!(
        pending.target_spec_hash.as_deref(),
        Some(stable_hash.as_str())
    );

    // A new spec is an upgrade again.
    c.status.pending_change = None;
    c.pods = vec![pod(3, PodPhase::Running)];
    c.spec.parallelism = 4;
    c.rehash();
    let d = c.decide();
    assert_eq!(
        d.status.pending_change.as_ref().unwrap().kind,
        kind::UPGRADE
    );
    assert!(d.status.rolled_back_spec_hash.is_none());
    assert!(d.status.unproven_since.is_some());
}

#[test]
fn periodic_savepoints_follow_the_interval_from_the_last_one() {
    let mut c = Case::running(1);
    c.spec.savepoint.periodic_interval = Some("1h".into());
    let mut index = index_with(None, 1);
    index.savepoints = vec![savepoint(1, 5, NOW - 3_500_000)];
    c.index = Some(index.clone());
    assert!(c.decide().actions.is_empty());
    index.savepoints = vec![savepoint(1, 5, NOW - 3_700_000)];
    c.index = Some(index);
    assert_eq!(
        c.decide().actions,
        vec![Action::Savepoint {
            stop: false,
            reason: "schedule",
            nonce: None
        }]
    );
}

fn worker_pod(attempt: u64, worker: u32, phase: PodPhase, ip: Option<&str>) -> ObservedPod {
    ObservedPod {
        name: format!("job-worker-{worker}"),
        worker: Some(worker),
        ip: ip.map(str::to_string),
        ..pod(attempt, phase)
    }
}

/// A new job on 3 workers, after its first decision (attempt 1 allocated, step `starting`).
fn starting_on_three_workers() -> Case {
    let mut c = Case::new();
    c.spec.parallelism = 4;
    c.spec.workers = 3;
    c.rehash();
    let first = c.decide();
    c.status = first.status;
    c
}

#[test]
fn a_multi_worker_attempt_creates_worker_0_first_and_the_others_once_it_has_an_ip() {
    let mut c = Case::new();
    c.spec.parallelism = 4;
    c.spec.workers = 3;
    c.rehash();
    let first = c.decide();
    let plan = starts(&first).expect("worker 0 is created");
    assert_eq!(plan.coordinator_ip, None);

    let mut c = starting_on_three_workers();
    c.pods = vec![worker_pod(1, 0, PodPhase::Pending, None)];
    let waiting = c.decide();
    assert!(
        starts(&waiting).is_none(),
        "no member before worker 0 has an IP"
    );
    assert_eq!(
        waiting
            .status
            .pending_change
            .as_ref()
            .map(|p| p.step.as_str()),
        Some(step::STARTING)
    );

    c.pods = vec![worker_pod(1, 0, PodPhase::Running, Some("10.1.2.3"))];
    let members = c.decide();
    let plan = starts(&members).expect("the other workers are created");
    assert_eq!(plan.coordinator_ip.as_deref(), Some("10.1.2.3"));
    assert_eq!(plan.attempt, 1);

    c.pods = (0..3)
        .map(|w| worker_pod(1, w, PodPhase::Pending, Some("10.1.2.3")))
        .collect();
    let done = c.decide();
    assert!(starts(&done).is_none());
    assert!(done.status.pending_change.is_none());
    assert_eq!(done.status.phase, Some(JobPhase::Deploying));
}

#[test]
fn a_worker_0_that_fails_before_the_others_exist_is_left_to_the_restart_logic() {
    let mut c = starting_on_three_workers();
    c.pods = vec![worker_pod(1, 0, PodPhase::Failed, Some("10.1.2.3"))];
    let d = c.decide();
    assert!(starts(&d).is_none());
    assert!(d.status.pending_change.is_none());
    // The next look sees the failed pod of the running attempt and restarts it.
    c.status = d.status;
    let next = c.decide();
    assert!(reasons(&next).contains(&"PodFailed"), "{:?}", next.events);
}

#[test]
fn a_missing_member_pod_of_a_running_attempt_is_a_failure() {
    let mut c = Case::running(2);
    c.spec.parallelism = 4;
    c.spec.workers = 2;
    c.rehash();
    c.status.running_spec_hash = Some(c.hash.clone());
    c.pods = vec![worker_pod(2, 0, PodPhase::Running, Some("10.1.2.3"))];
    let d = c.decide();
    assert!(reasons(&d).contains(&"PodDeleted"), "{:?}", d.events);
    assert!(d.status.restarts >= 1);

    // With both pods there the job simply runs.
    c.pods
        .push(worker_pod(2, 1, PodPhase::Running, Some("10.1.2.4")));
    let d = c.decide();
    assert!(!reasons(&d).contains(&"PodDeleted"), "{:?}", d.events);
}

#[test]
fn unreadable_storage_is_a_warning_once_and_starts_nothing() {
    let mut c = Case::new();
    c.index = None;
    c.storage_error = Some("NoSuchBucket".into());
    let d = c.decide();
    assert!(starts(&d).is_none(), "no attempt without readable storage");
    assert!(
        reasons(&d).contains(&"StorageUnavailable"),
        "{:?}",
        reasons(&d)
    );
    let message = d.status.message.clone().unwrap();
    assert!(
        message.contains(ROOT) && message.contains("NoSuchBucket"),
        "{message}"
    );
    assert!(d.requeue <= Limits::default().running_poll);
    // The same failure on the next reconcile: status says it already, no new event.
    c.status = d.status.clone();
    let again = c.decide();
    assert!(!reasons(&again).contains(&"StorageUnavailable"));
}
