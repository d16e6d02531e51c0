//! Unit tests of `snapshots.rs`: merging status and storage, and the restore choice.

use super::*;
use crate::fixtures::{job, now, ts, ROOT};
use streamjob_checkpoint::{Manifest, SnapshotLayout, SnapshotRef};

fn facts(kind: SnapshotKind, attempt: u64, id: u64, ok: bool) -> SnapshotFacts {
    let mut m = Manifest::new(kind, attempt, id, "wc");
    m.created_at_ms = (now().as_second() as u64 - 10) * 1000;
    SnapshotFacts {
        attempt,
        checkpoint_id: id,
        kind,
        dir: SnapshotLayout::dir(kind, attempt, id).path(),
        manifest: if ok {
            Ok(m)
        } else {
            Err("no manifest: the snapshot is incomplete or was aborted".into())
        },
    }
}

fn storage(snapshots: Vec<SnapshotFacts>) -> StorageFacts {
    StorageFacts {
        root: ROOT.into(),
        attempts: vec![],
        snapshots,
        deep: false,
    }
}

fn status_of(job: streamjob_api::v1alpha1::StreamJob) -> StreamJobStatus {
    job.status.unwrap()
}

#[test]
fn newest_verified_snapshot_is_the_restore_target_and_incomplete_ones_are_explained() {
    let status = status_of(
        job("wc")
            .phase(JobPhase::Running)
            .checkpoint(41, ts(-3))
            .savepoint(40, ts(-20), "manual")
            .build(),
    );
    let storage = storage(vec![
        facts(SnapshotKind::Checkpoint, 2, 41, true),
        facts(SnapshotKind::Checkpoint, 2, 42, false),
        facts(SnapshotKind::Savepoint, 2, 40, true),
    ]);
    let report = build_report(&status, Ok(&storage));
    let ids: Vec<(u64, bool)> = report.rows.iter().map(|r| (r.id, r.restore)).collect();
    assert_eq!(ids, [(42, false), (41, true), (40, false)]);
    assert!(matches!(report.rows[0].check, Check::Unusable(ref w) if w.contains("no manifest")));
    assert!(!report.rows[0].in_status);
    assert_eq!(report.rows[1].check, Check::Verified { deep: false });
    assert!(report.rows[1].in_status);
    assert_eq!(report.rows[2].reason.as_deref(), Some("manual"));
    assert_eq!(
        report.restore,
        RestoreSource::Latest(format!("{ROOT}/{}", storage.snapshots[0].dir))
    );
}

#[test]
fn a_status_snapshot_missing_from_storage_is_flagged() {
    let status = status_of(job("wc").savepoint(7, ts(-100), "upgrade").build());
    let report = build_report(&status, Ok(&storage(vec![])));
    assert_eq!(report.rows.len(), 1);
    assert_eq!(report.rows[0].check, Check::NotInStorage);
    assert_eq!(report.rows[0].kind, SnapshotKind::Savepoint);
    assert_eq!(report.restore, RestoreSource::Empty);
}

#[test]
fn a_suspended_job_resumes_from_its_savepoint_even_if_a_checkpoint_is_newer() {
    let status = status_of(
        job("wc")
            .phase(JobPhase::Suspended)
            .savepoint(40, ts(-20), "suspend")
            .build(),
    );
    let storage = storage(vec![
        facts(SnapshotKind::Savepoint, 2, 40, true),
        facts(SnapshotKind::Checkpoint, 2, 41, true),
    ]);
    let report = build_report(&status, Ok(&storage));
    let marked: Vec<u64> = report
        .rows
        .iter()
        .filter(|r| r.restore)
        .map(|r| r.id)
        .collect();
    assert_eq!(marked, [40]);
    assert!(matches!(report.restore, RestoreSource::Resume(_)));
}

#[test]
fn a_pending_change_decides_the_restore() {
    let target = format!("{ROOT}/savepoints/sp-0000000040-000002");
    let status = status_of(
        job("wc")
            .savepoint(40, ts(-20), "upgrade")
            .pending("upgrade", "stopping", Some(&target))
            .build(),
    );
    let report = build_report(&status, Err("connection refused"));
    assert_eq!(
        report.restore,
        RestoreSource::PendingChange {
            kind: "upgrade".into(),
            location: Some(target)
        }
    );
    assert!(report.rows[0].restore);
    let stateless = status_of(
        job("wc")
            .pending("upgrade", "stopping", Some("none"))
            .build(),
    );
    assert_eq!(
        restore_source(&stateless, None),
        RestoreSource::PendingChange {
            kind: "upgrade".into(),
            location: None
        }
    );
}

#[test]
fn zombie_snapshots_are_fenced_not_restored() {
    let mut storage = storage(vec![
        facts(SnapshotKind::Checkpoint, 1, 12, true),
        facts(SnapshotKind::Checkpoint, 1, 10, true),
    ]);
    // Attempt 2 started from checkpoint 10, so checkpoint 12 of attempt 1 came from a zombie.
    storage.attempts = vec![AttemptRecord {
        attempt: 2,
        started_at_ms: 0,
        restored_from: Some(SnapshotRef {
            attempt: 1,
            checkpoint_id: 10,
            location: format!("{ROOT}/checkpoints/000001-0000000010"),
        }),
    }];
    let report = build_report(&StreamJobStatus::default(), Ok(&storage));
    assert!(matches!(report.rows[0].check, Check::Fenced(ref w) if w.contains("zombie")));
    assert!(report.rows[1].restore);
}

#[test]
fn unreachable_storage_lists_status_and_says_what_to_check() {
    let status = status_of(job("wc").checkpoint(41, ts(-3)).build());
    let report = build_report(&status, Err("dispatch failure: connection refused"));
    assert_eq!(report.rows[0].check, Check::NotChecked);
    assert_eq!(report.restore, RestoreSource::Unknown);
    let text = render_report(&report, ROOT, now());
    assert!(text.contains("not checked"), "{text}");
    assert!(
        text.contains(&format!(
            "Error: cannot read the snapshot storage {ROOT}: dispatch failure: connection refused"
        )),
        "{text}"
    );
}

#[test]
fn rendered_table_marks_the_restore_target() {
    let status = status_of(job("wc").checkpoint(41, ts(-3)).build());
    let mut storage = storage(vec![facts(SnapshotKind::Checkpoint, 2, 41, true)]);
    storage.deep = true;
    let text = render_report(&build_report(&status, Ok(&storage)), ROOT, now());
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("RESTORE   KIND         ID   ATTEMPT   COMPLETED"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("*         checkpoint   41   2         10s ago"),
        "{text}"
    );
    assert!(
        lines[1].contains("periodic   listed   ok (CRCs checked)"),
        "{text}"
    );
    assert!(text.contains("Restore: a restart restores the newest verified snapshot"));
}
