//! Unit tests of the pure decisions in `decide.rs`.

use std::collections::BTreeSet;

use super::*;
use crate::attempts::SnapshotRef;
use crate::manifest::{FileRef, OperatorState, SubtaskState};

fn manifest(kind: SnapshotKind, attempt: u64, id: u64, files: &[&str]) -> Manifest {
    let mut m = Manifest::new(kind, attempt, id, "job");
    m.operators.push(OperatorState {
        operator_id: "op".into(),
        subtasks: vec![SubtaskState {
            subtask: 0,
            key_group_start: 0,
            key_group_end: 128,
            files: files
                .iter()
                .map(|k| FileRef {
                    key: (*k).into(),
                    size: 1,
                    crc32c: 0,
                    contents: None,
                })
                .collect(),
        }],
    });
    m
}

fn cp(attempt: u64, id: u64) -> SnapshotFacts {
    let dir = SnapshotLayout::checkpoint_dir(attempt, id).path();
    let file = format!("{dir}/op/0000.state");
    SnapshotFacts {
        attempt,
        checkpoint_id: id,
        kind: SnapshotKind::Checkpoint,
        manifest: Ok(manifest(SnapshotKind::Checkpoint, attempt, id, &[&file])),
        dir,
    }
}

fn cp_with(attempt: u64, id: u64, files: &[&str]) -> SnapshotFacts {
    SnapshotFacts {
        manifest: Ok(manifest(SnapshotKind::Checkpoint, attempt, id, files)),
        ..cp(attempt, id)
    }
}

fn broken(attempt: u64, id: u64, why: &str) -> SnapshotFacts {
    SnapshotFacts {
        manifest: Err(why.into()),
        ..cp(attempt, id)
    }
}

fn sp(attempt: u64, id: u64, files: &[&str]) -> SnapshotFacts {
    SnapshotFacts {
        attempt,
        checkpoint_id: id,
        kind: SnapshotKind::Savepoint,
        dir: SnapshotLayout::savepoint_dir(attempt, id).path(),
        manifest: Ok(manifest(SnapshotKind::Savepoint, attempt, id, files)),
    }
}

fn started(attempt: u64, restored_from: Option<u64>) -> AttemptRecord {
    AttemptRecord {
        attempt,
        started_at_ms: attempt * 1000,
        restored_from: restored_from.map(|id| SnapshotRef {
            attempt: attempt - 1,
            checkpoint_id: id,
            location: String::new(),
        }),
    }
}

fn chosen_id(d: &RestoreDecision) -> Option<(u64, u64)> {
    d.chosen.as_ref().map(|c| (c.attempt, c.checkpoint_id))
}

#[test]
fn empty_store_starts_empty() {
    let d = select_restore(&[], &[]);
    assert_eq!(d.chosen, None);
    assert!(d.skipped.is_empty());
    assert_eq!(d.next_checkpoint_id(), 1);
    assert!(d.summary().contains("empty state"));
}

#[test]
fn picks_newest_by_id_across_attempts() {
    let attempts = [started(1, None), started(2, Some(3))];
    let snaps = [cp(1, 2), cp(2, 5), cp(1, 3), cp(2, 4)];
    let d = select_restore(&attempts, &snaps);
    assert_eq!(chosen_id(&d), Some((2, 5)));
    assert!(d.skipped.is_empty());
    assert_eq!(d.next_checkpoint_id(), 6);
}

#[test]
fn never_selects_a_dir_without_manifest() {
    let snaps = [cp(1, 1), broken(1, 2, "no manifest")];
    let d = select_restore(&[], &snaps);
    assert_eq!(chosen_id(&d), Some((1, 1)));
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(
        d.skipped[0].reason,
        SkipReason::Unusable("no manifest".into())
    );

    let d = select_restore(&[], &[broken(1, 1, "no manifest")]);
    assert_eq!(d.chosen, None);
    assert_eq!(d.skipped.len(), 1);
}

#[test]
fn corrupt_newest_falls_back_and_names_it() {
    let snaps = [cp(1, 41), broken(1, 42, "state file x crc mismatch")];
    let d = select_restore(&[started(1, None)], &snaps);
    assert_eq!(chosen_id(&d), Some((1, 41)));
    let summary = d.summary();
    assert!(summary.contains("restoring checkpoint 41"), "{summary}");
    assert!(
        summary.contains("checkpoint 42") && summary.contains("crc mismatch"),
        "{summary}"
    );
}

#[test]
fn zombie_checkpoints_are_fenced() {
    // Attempt 2 started from 41; attempt 1 (a zombie) then completed 42 and 43.
    let attempts = [started(1, None), started(2, Some(41))];
    let snaps = [cp(1, 40), cp(1, 41), cp(1, 42), cp(1, 43)];
    let d = select_restore(&attempts, &snaps);
    assert_eq!(chosen_id(&d), Some((1, 41)));
    assert_eq!(d.skipped.len(), 2);
    assert_eq!(d.skipped[0].checkpoint_id, 43);
    assert_eq!(
        d.skipped[0].reason,
        SkipReason::Fenced {
            by_attempt: 2,
            restore_point: 41
        }
    );
    assert!(d.skipped[0].to_string().contains("fenced"));

    // Once attempt 2 has its own 42, it wins over the zombie's 42 and 43.
    let snaps = [cp(1, 41), cp(1, 42), cp(1, 43), cp(2, 42)];
    let d = select_restore(&attempts, &snaps);
    assert_eq!(chosen_id(&d), Some((2, 42)));
    assert_eq!(
        d.skipped
            .iter()
            .map(|s| (s.attempt, s.checkpoint_id))
            .collect::<Vec<_>>(),
        [(1, 43)]
    );
}

#[test]
fn an_attempt_that_started_empty_fences_everything_older() {
    let attempts = [started(1, None), started(2, None)];
    let d = select_restore(&attempts, &[cp(1, 7)]);
    assert_eq!(d.chosen, None);
    assert!(d.skipped[0].reason.to_string().contains("empty state"));
}

#[test]
fn fencing_uses_the_earliest_later_attempt() {
    // Attempt 3 restored from 10 of attempt 1 (attempt 2's checkpoints were corrupt).
    let attempts = [started(1, None), started(2, Some(10)), started(3, Some(10))];
    assert_eq!(fenced_by(&attempts, 1, 11), Some((2, 10)));
    assert_eq!(fenced_by(&attempts, 2, 11), Some((3, 10)));
    assert_eq!(fenced_by(&attempts, 2, 10), None);
    assert_eq!(fenced_by(&attempts, 3, 99), None);
    assert_eq!(fenced_by(&attempts, 1, 10), None);
}

#[test]
fn savepoints_are_candidates_too() {
    let snaps = [cp(1, 4), sp(1, 5, &[]), broken(1, 6, "no manifest")];
    let d = select_restore(&[], &snaps);
    let chosen = d.chosen.unwrap();
    assert_eq!(
        (chosen.kind, chosen.checkpoint_id),
        (SnapshotKind::Savepoint, 5)
    );
    // Tie on id and attempt: savepoint (self-contained) wins deterministically.
    let d = select_restore(&[], &[cp(1, 5), sp(1, 5, &[])]);
    assert_eq!(d.chosen.unwrap().kind, SnapshotKind::Savepoint);
}

#[test]
fn ties_prefer_the_newer_attempt() {
    let d = select_restore(&[], &[cp(2, 9), cp(1, 9)]);
    assert_eq!(chosen_id(&d), Some((2, 9)));
}

#[test]
fn next_attempt_counts_records_and_snapshots() {
    assert_eq!(next_attempt(&[], &[]), 1);
    assert_eq!(next_attempt(&[started(3, None)], &[cp(1, 1)]), 4);
    assert_eq!(next_attempt(&[started(1, None)], &[cp(5, 1)]), 6);
}

fn plan(
    attempts: &[AttemptRecord],
    snaps: &[SnapshotFacts],
    retained: usize,
    protected: &[&str],
    shared: &[&str],
) -> RetentionPlan {
    let protected_dirs: BTreeSet<String> = protected.iter().map(|s| s.to_string()).collect();
    let shared_files: Vec<String> = shared.iter().map(|s| s.to_string()).collect();
    retention_plan(&RetentionInput {
        attempts,
        snapshots: snaps,
        retained,
        protected_dirs: &protected_dirs,
        protected_keys: &BTreeSet::new(),
        shared_files: &shared_files,
    })
}

fn dir(attempt: u64, id: u64) -> String {
    SnapshotLayout::checkpoint_dir(attempt, id).path()
}

#[test]
fn retention_keeps_the_newest_n() {
    let snaps = [cp(1, 1), cp(1, 2), cp(1, 3), cp(1, 4)];
    let p = plan(&[], &snaps, 2, &[], &[]);
    assert_eq!(p.delete_dirs, [dir(1, 1), dir(1, 2)]);
    assert!(p.kept_referenced.is_empty());
}

#[test]
fn retention_never_deletes_the_newest_usable() {
    let snaps = [cp(1, 1), cp(1, 2)];
    assert_eq!(plan(&[], &snaps, 0, &[], &[]).delete_dirs, [dir(1, 1)]);
    // The newest folder is corrupt: the newest usable one (2) stays, the corrupt one stays too.
    let snaps = [cp(1, 1), cp(1, 2), broken(1, 3, "corrupt")];
    assert_eq!(plan(&[], &snaps, 1, &[], &[]).delete_dirs, [dir(1, 1)]);
}

#[test]
fn retention_deletes_old_incomplete_dirs_only() {
    let snaps = [
        broken(1, 1, "no manifest"),
        cp(1, 2),
        broken(1, 3, "no manifest"),
        cp(1, 4),
        broken(1, 5, "no manifest"),
    ];
    let p = plan(&[], &snaps, 5, &[], &[]);
    assert_eq!(p.delete_dirs, [dir(1, 1), dir(1, 3)]);
    // Nothing usable: nothing is known to be older than it, keep everything.
    assert!(
        plan(&[], &[broken(1, 1, "x"), broken(1, 2, "y")], 1, &[], &[])
            .delete_dirs
            .is_empty()
    );
}

#[test]
fn retention_respects_protected_dirs() {
    let snaps = [cp(1, 1), broken(1, 2, "in flight"), cp(1, 3)];
    let p = plan(&[], &snaps, 1, &[&dir(1, 1), &dir(1, 2)], &[]);
    assert!(p.delete_dirs.is_empty(), "{p:?}");
}

#[test]
fn retention_treats_zombie_checkpoints_as_unusable() {
    // The zombie's 45 must not count as "newest complete" and push out attempt 2's real newest (43).
    let attempts = [started(1, None), started(2, Some(41))];
    let snaps = [cp(1, 41), cp(1, 44), cp(1, 45), cp(2, 42), cp(2, 43)];
    let p = plan(&attempts, &snaps, 1, &[], &[]);
    assert_eq!(p.delete_dirs, [dir(1, 41), dir(2, 42)]);
    // 44 and 45 are newer than 43 and stay until attempt 2 passes them.
    let snaps = [cp(1, 44), cp(2, 46)];
    assert_eq!(
        plan(&attempts, &snaps, 1, &[], &[]).delete_dirs,
        [dir(1, 44)]
    );
}

#[test]
fn retention_of_shared_files() {
    let snaps = [
        cp_with(1, 1, &["shared/a-1.state", "shared/b-1.state"]),
        cp_with(1, 2, &["shared/b-1.state", "shared/c-1.state"]),
        sp(1, 3, &["shared/s-1.state"]),
    ];
    let shared = [
        "shared/a-1.state",
        "shared/b-1.state",
        "shared/c-1.state",
        "shared/s-1.state",
        "shared/orphan-1.state",
        "shared/inflight-1.state",
    ];
    let protected_keys: BTreeSet<String> = ["shared/inflight-1.state".to_owned()].into();
    let shared_files: Vec<String> = shared.iter().map(|s| s.to_string()).collect();
    let p = retention_plan(&RetentionInput {
        attempts: &[],
        snapshots: &snaps,
        retained: 1,
        protected_dirs: &BTreeSet::new(),
        protected_keys: &protected_keys,
        shared_files: &shared_files,
    });
    assert_eq!(p.delete_dirs, [dir(1, 1)]);
    assert_eq!(
        p.delete_shared,
        ["shared/a-1.state", "shared/orphan-1.state"]
    );
}

#[test]
fn retention_keeps_dirs_referenced_by_incremental_manifests() {
    // 3 reuses a file of 2, which reuses a file of 1: all stay although only one is retained.
    let f1 = format!("{}/op/0000.state", dir(1, 1));
    let f2 = format!("{}/op/0000.state", dir(1, 2));
    let snaps = [
        cp(1, 0),
        cp(1, 1),
        cp_with(1, 2, &[&f1, &f2]),
        cp_with(1, 3, &[&f2]),
    ];
    let p = plan(&[], &snaps, 1, &[], &[]);
    assert_eq!(p.delete_dirs, [dir(1, 0)]);
    assert_eq!(p.kept_referenced, [dir(1, 2), dir(1, 1)]);
}

#[test]
fn retention_ignores_savepoint_dirs() {
    let snaps = [sp(1, 1, &[]), cp(1, 2), cp(1, 3)];
    assert_eq!(plan(&[], &snaps, 1, &[], &[]).delete_dirs, [dir(1, 2)]);
}

fn names(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(n, t)| (n.to_string(), *t)).collect()
}

#[test]
fn savepoint_history_by_count() {
    let sps = names(&[("a", 100), ("c", 300), ("b", 200), ("d", 400)]);
    assert_eq!(savepoint_history_plan(&sps, 2, None, 1000), ["b", "a"]);
    assert_eq!(
        savepoint_history_plan(&sps, 10, None, 1000),
        Vec::<String>::new()
    );
    assert_eq!(savepoint_history_plan(&sps, 0, None, 1000), ["c", "b", "a"]);
}

#[test]
fn savepoint_history_by_age_never_deletes_the_newest() {
    let sps = names(&[("a", 100), ("b", 200), ("c", 300)]);
    assert_eq!(savepoint_history_plan(&sps, 10, Some(850), 1000), ["a"]);
    assert_eq!(
        savepoint_history_plan(&sps, 10, Some(1), 10_000),
        ["b", "a"]
    );
    assert_eq!(
        savepoint_history_plan(&names(&[("only", 1)]), 1, Some(0), 1_000_000),
        Vec::<String>::new()
    );
    assert_eq!(
        savepoint_history_plan(&[], 1, Some(0), 0),
        Vec::<String>::new()
    );
    // Clock behind the creation time: nothing is "old".
    assert_eq!(
        savepoint_history_plan(&sps, 10, Some(0), 50),
        Vec::<String>::new()
    );
}
