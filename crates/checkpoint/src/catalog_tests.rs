//! Behaviour tests of the catalog (and the stores under it) on `MemoryStore` and `FileStore`.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::attempts::{start_attempt, AttemptRecord, SnapshotRef};
use crate::conformance::{check_put_if_absent_race, check_store};
use crate::decide::SkipReason;
use crate::manifest::{FileRef, OperatorState, SnapshotKind, SubtaskState};
use crate::state_file::{write_shared_state_file, write_state_file};
use crate::{FileStore, MemoryStore};

/// Runs `test` on a fresh MemoryStore and a fresh FileStore.
async fn on_each_store<F, Fut>(test: F)
where
    F: Fn(Arc<dyn SnapshotStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    test(Arc::new(MemoryStore::new())).await;
    let dir = tempfile::tempdir().unwrap();
    test(Arc::new(FileStore::new(dir.path()).unwrap())).await;
}

/// Corrupts the first state file of `manifest` in place (same size, one byte flipped); returns it.
async fn flip_first_byte_of_first_file(store: &dyn SnapshotStore, manifest: &Manifest) -> FileRef {
    let victim = manifest.files().next().unwrap().clone();
    let mut body = store.get(&victim.key).await.unwrap().to_vec();
    body[0] ^= 0xff;
    store.put(&victim.key, Bytes::from(body)).await.unwrap();
    victim
}

/// Writes a complete snapshot with `parallelism` subtasks of one operator; returns its manifest.
async fn write_snapshot(
    store: &dyn SnapshotStore,
    kind: SnapshotKind,
    attempt: u64,
    id: u64,
) -> Manifest {
    let dir = SnapshotLayout::dir(kind, attempt, id);
    let mut subtasks = Vec::new();
    for subtask in 0..2u32 {
        let key = SnapshotLayout::state_file(&dir, "counter", subtask).unwrap();
        let body = Bytes::from(format!("state of {id}/{subtask}").repeat(10));
        let file = write_state_file(store, &key, body).await.unwrap();
        subtasks.push(SubtaskState {
            subtask,
            key_group_start: subtask * 64,
            key_group_end: subtask * 64 + 64,
            files: vec![file],
        });
    }
    let mut manifest = Manifest::new(kind, attempt, id, "wordcount");
    manifest.parallelism = 2;
    manifest.operators.push(OperatorState {
        operator_id: "counter".into(),
        subtasks,
    });
    commit_manifest(store, &manifest).await.unwrap();
    manifest
}

fn record(attempt: u64, restored: Option<u64>) -> AttemptRecord {
    AttemptRecord {
        attempt,
        started_at_ms: attempt,
        restored_from: restored.map(|id| SnapshotRef {
            attempt: attempt - 1,
            checkpoint_id: id,
            location: String::new(),
        }),
    }
}

#[tokio::test]
async fn stores_pass_the_conformance_suite() {
    on_each_store(|store| async move {
        check_store(store.as_ref()).await.unwrap();
        check_put_if_absent_race(store, 16).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn complete_snapshot_round_trip() {
    on_each_store(|store| async move {
        let written = write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 7).await;
        let facts = list_snapshots(store.as_ref()).await.unwrap();
        assert_eq!(facts.len(), 1);
        assert_eq!(facts[0].manifest.as_ref().unwrap(), &written);
        assert_eq!(facts[0].dir, "checkpoints/000001-0000000007");

        let decision = find_restore_point(store.as_ref(), VerifyLevel::Deep)
            .await
            .unwrap();
        let chosen = decision.chosen.unwrap();
        assert_eq!((chosen.attempt, chosen.checkpoint_id), (1, 7));
        for file in chosen.manifest.files() {
            crate::read_state_file(store.as_ref(), file).await.unwrap();
        }

        // A retried commit (its first answer lost) finds its own bytes and succeeds ...
        commit_manifest(store.as_ref(), &written).await.unwrap();
        // ... a different manifest for the same folder never replaces the first.
        let mut other = written.clone();
        other.duration_ms += 1;
        let again = commit_manifest(store.as_ref(), &other).await.unwrap_err();
        assert!(
            matches!(again, CatalogError::ManifestExists { .. }),
            "{again}"
        );
        assert_eq!(
            read_manifest(store.as_ref(), &SnapshotLayout::checkpoint_dir(1, 7))
                .await
                .unwrap(),
            written
        );
    })
    .await;
}

#[tokio::test]
async fn dir_without_manifest_is_never_selected() {
    on_each_store(|store| async move {
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 1).await;
        let dir = SnapshotLayout::checkpoint_dir(1, 2);
        let key = SnapshotLayout::state_file(&dir, "counter", 0).unwrap();
        write_state_file(store.as_ref(), &key, Bytes::from_static(b"half"))
            .await
            .unwrap();

        let d = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap();
        assert_eq!(d.chosen.unwrap().checkpoint_id, 1);
        assert_eq!(d.skipped.len(), 1);
        assert!(d.skipped[0].reason.to_string().contains("no manifest"));
    })
    .await;
}

#[tokio::test]
async fn truncated_manifest_is_detected() {
    on_each_store(|store| async move {
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 1).await;
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 2).await;
        let key = SnapshotLayout::manifest(&SnapshotLayout::checkpoint_dir(1, 2));
        let body = store.get(&key).await.unwrap();
        store.put(&key, body.slice(..body.len() / 2)).await.unwrap();

        let d = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap();
        assert_eq!(d.chosen.as_ref().unwrap().checkpoint_id, 1);
        assert!(
            d.skipped[0]
                .reason
                .to_string()
                .contains("manifest is corrupt"),
            "{}",
            d.summary()
        );
    })
    .await;
}

#[tokio::test]
async fn corrupt_newest_falls_back_and_names_the_file() {
    on_each_store(|store| async move {
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 41).await;
        let newest = write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 42).await;
        // Same size, different content: only the CRC-32C reveals it.
        let victim = flip_first_byte_of_first_file(store.as_ref(), &newest).await;

        let shallow = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap();
        assert_eq!(
            shallow.chosen.unwrap().checkpoint_id,
            42,
            "a shallow check cannot see same-size corruption"
        );

        let deep = find_restore_point(store.as_ref(), VerifyLevel::Deep)
            .await
            .unwrap();
        assert_eq!(deep.chosen.as_ref().unwrap().checkpoint_id, 41);
        let summary = deep.summary();
        assert!(
            summary.contains("checkpoint 42")
                && summary.contains(&victim.key)
                && summary.contains("CRC-32C"),
            "{summary}"
        );

        // A truncated file is caught by the shallow check (listing sizes).
        let newer = write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 43).await;
        let victim = newer.files().next().unwrap().clone();
        store
            .put(&victim.key, Bytes::from_static(b"short"))
            .await
            .unwrap();
        let shallow = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap();
        assert_eq!(shallow.chosen.unwrap().checkpoint_id, 41);
        assert!(shallow
            .skipped
            .iter()
            .any(|s| s.reason.to_string().contains("5 bytes")));
    })
    .await;
}

#[tokio::test]
async fn zombie_attempt_is_fenced() {
    on_each_store(|store| async move {
        start_attempt(store.as_ref(), &record(1, None))
            .await
            .unwrap();
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 1).await;
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 2).await;
        // Attempt 2 starts from checkpoint 2; attempt 1 lives on as a zombie.
        start_attempt(store.as_ref(), &record(2, Some(2)))
            .await
            .unwrap();

        let mut zombie = Manifest::new(SnapshotKind::Checkpoint, 1, 3, "wordcount");
        zombie.parallelism = 2;
        let refused = commit_manifest(store.as_ref(), &zombie).await.unwrap_err();
        assert!(
            matches!(
                refused,
                CatalogError::Fenced {
                    attempt: 1,
                    newest: 2
                }
            ),
            "{refused}"
        );

        // The zombie raced past the check and wrote its manifest anyway: restores ignore it.
        let dir = SnapshotLayout::checkpoint_dir(1, 3);
        store
            .put_if_absent(
                &SnapshotLayout::manifest(&dir),
                Bytes::from(zombie.to_json().unwrap()),
            )
            .await
            .unwrap();
        let d = find_restore_point(store.as_ref(), VerifyLevel::Deep)
            .await
            .unwrap();
        assert_eq!(
            d.chosen.as_ref().map(|c| (c.attempt, c.checkpoint_id)),
            Some((1, 2))
        );
        assert_eq!(
            d.skipped[0].reason,
            SkipReason::Fenced {
                by_attempt: 2,
                restore_point: 2
            }
        );

        let taken = start_attempt(store.as_ref(), &record(2, Some(2)))
            .await
            .unwrap_err();
        assert!(
            matches!(taken, AttemptError::AttemptTaken { attempt: 2, .. }),
            "{taken}"
        );
    })
    .await;
}

#[tokio::test]
async fn retention_deletes_old_snapshots_and_unreferenced_shared_files() {
    on_each_store(|store| async move {
        for id in 1..=3 {
            write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, id).await;
        }
        // Incremental checkpoint 4 references a shared file; an orphan shared file lies around.
        let shared = write_shared_state_file(store.as_ref(), Bytes::from_static(b"shared state"))
            .await
            .unwrap();
        let orphan = write_shared_state_file(store.as_ref(), Bytes::from_static(b"orphan"))
            .await
            .unwrap();
        let inflight = write_shared_state_file(store.as_ref(), Bytes::from_static(b"in flight"))
            .await
            .unwrap();
        let mut m4 = Manifest::new(SnapshotKind::Checkpoint, 1, 4, "wordcount");
        m4.operators.push(OperatorState {
            operator_id: "counter".into(),
            subtasks: vec![SubtaskState {
                subtask: 0,
                key_group_start: 0,
                key_group_end: 128,
                files: vec![shared.clone()],
            }],
        });
        commit_manifest(store.as_ref(), &m4).await.unwrap();
        write_snapshot(store.as_ref(), SnapshotKind::Savepoint, 1, 2).await;
        // An aborted checkpoint older than the newest complete one.
        let aborted =
            SnapshotLayout::state_file(&SnapshotLayout::checkpoint_dir(1, 0), "counter", 0)
                .unwrap();
        store.put(&aborted, Bytes::from_static(b"x")).await.unwrap();

        let protected_keys: BTreeSet<String> = [inflight.key.clone()].into();
        let plan = apply_retention(store.as_ref(), 2, &BTreeSet::new(), &protected_keys)
            .await
            .unwrap();
        assert_eq!(
            plan.delete_dirs,
            [
                "checkpoints/000001-0000000000",
                "checkpoints/000001-0000000001",
                "checkpoints/000001-0000000002"
            ]
        );
        assert_eq!(plan.delete_shared, std::slice::from_ref(&orphan.key));

        let left: Vec<String> = list_snapshots(store.as_ref())
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.dir)
            .collect();
        assert_eq!(
            left,
            [
                "checkpoints/000001-0000000003",
                "checkpoints/000001-0000000004",
                "savepoints/sp-0000000002-000001"
            ]
        );
        assert!(store.get(&shared.key).await.is_ok());
        assert!(store.get(&inflight.key).await.is_ok());
        assert!(store.get(&orphan.key).await.unwrap_err().is_not_found());
        let d = find_restore_point(store.as_ref(), VerifyLevel::Deep)
            .await
            .unwrap();
        assert_eq!(d.chosen.unwrap().checkpoint_id, 4);
    })
    .await;
}

#[tokio::test]
async fn savepoint_history_is_applied_in_storage() {
    on_each_store(|store| async move {
        for id in 1..=3 {
            let mut m = Manifest::new(SnapshotKind::Savepoint, 1, id, "wordcount");
            m.created_at_ms = id * 1000;
            commit_manifest(store.as_ref(), &m).await.unwrap();
        }
        // An aborted savepoint between complete ones.
        let aborted =
            SnapshotLayout::state_file(&SnapshotLayout::savepoint_dir(2, 2), "x", 0).unwrap();
        store.put(&aborted, Bytes::new()).await.unwrap();

        let deleted = apply_savepoint_history(store.as_ref(), 1, None, 10_000)
            .await
            .unwrap();
        assert_eq!(
            deleted,
            [
                "savepoints/sp-0000000002-000001",
                "savepoints/sp-0000000001-000001",
                "savepoints/sp-0000000002-000002"
            ]
        );
        let left: Vec<String> = list_snapshots(store.as_ref())
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.dir)
            .collect();
        assert_eq!(left, ["savepoints/sp-0000000003-000001"]);
    })
    .await;
}

#[tokio::test]
async fn transient_store_errors_are_not_mistaken_for_corruption() {
    let store = Arc::new(MemoryStore::new());
    write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 1).await;
    store.fail_next_gets(1);
    let err = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap()
            .chosen
            .unwrap()
            .checkpoint_id,
        1
    );
}

#[tokio::test]
async fn delete_snapshot_dir_removes_manifest_first_and_everything() {
    let store = MemoryStore::new();
    write_snapshot(&store, SnapshotKind::Checkpoint, 1, 1).await;
    write_snapshot(&store, SnapshotKind::Checkpoint, 1, 2).await;
    delete_snapshot_dir(&store, "checkpoints/000001-0000000001")
        .await
        .unwrap();
    assert!(
        store
            .keys()
            .iter()
            .all(|k| k.starts_with("checkpoints/000001-0000000002/")),
        "{:?}",
        store.keys()
    );
}

#[tokio::test]
async fn a_snapshot_that_failed_deep_verification_stays_skipped_for_shallow_readers() {
    on_each_store(|store| async move {
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 41).await;
        let newest = write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 42).await;
        flip_first_byte_of_first_file(store.as_ref(), &newest).await;

        let deep = find_restore_point(store.as_ref(), VerifyLevel::Deep)
            .await
            .unwrap();
        assert_eq!(deep.chosen.unwrap().checkpoint_id, 41);

        // The operator's index reads manifests only: the marker left by the deep check is what
        // keeps it from handing the corrupt snapshot to the next attempt.
        let shallow = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap();
        assert_eq!(shallow.chosen.unwrap().checkpoint_id, 41);
        let reason = shallow.skipped[0].reason.to_string();
        assert!(
            reason.contains("marked unusable") && reason.contains("CRC-32C"),
            "{reason}"
        );
    })
    .await;
}

#[tokio::test]
async fn marking_a_snapshot_unusable_excludes_it_from_the_restore_choice() {
    on_each_store(|store| async move {
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 7).await;
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 8).await;
        let dir = SnapshotLayout::checkpoint_dir(1, 8);
        mark_unusable(store.as_ref(), &dir, "state file x has a bad CRC-32C")
            .await
            .unwrap();
        let decision = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap();
        assert_eq!(decision.chosen.as_ref().unwrap().checkpoint_id, 7);
        assert!(
            decision.summary().contains("bad CRC-32C"),
            "{}",
            decision.summary()
        );
    })
    .await;
}

#[tokio::test]
async fn a_bad_file_found_through_one_incremental_checkpoint_rules_out_all_that_reference_it() {
    on_each_store(|store| async move {
        write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 5).await;
        let base = write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, 6).await;
        let shared = base.files().next().unwrap().clone();
        // Checkpoints 7 and 8 are incremental: each also lists a file of checkpoint 6.
        for id in [7, 8] {
            let mut m = write_snapshot(store.as_ref(), SnapshotKind::Checkpoint, 1, id).await;
            let dir = SnapshotLayout::checkpoint_dir(1, id);
            m.operators[0].subtasks[0].files.insert(0, shared.clone());
            store
                .delete(&[SnapshotLayout::manifest(&dir)])
                .await
                .unwrap();
            commit_manifest(store.as_ref(), &m).await.unwrap();
        }
        // A worker restoring 8 found the shared file corrupt and marked 8 (as RestoreData does).
        let reason = format!(
            "checksum mismatch: CRC-32C of {} is 0x1 but the manifest records 0x2",
            store.location(&shared.key)
        );
        mark_unusable(
            store.as_ref(),
            &SnapshotLayout::checkpoint_dir(1, 8),
            &reason,
        )
        .await
        .unwrap();
        let decision = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
            .await
            .unwrap();
        assert_eq!(
            decision.chosen.as_ref().unwrap().checkpoint_id,
            5,
            "7 and 6 list the bad file too: {}",
            decision.summary()
        );
        let seven = decision
            .skipped
            .iter()
            .find(|s| s.checkpoint_id == 7)
            .expect("7 skipped")
            .reason
            .to_string();
        assert!(
            seven.contains(&shared.key) && seven.contains("checkpoints/000001"),
            "{seven}"
        );
    })
    .await;
}
