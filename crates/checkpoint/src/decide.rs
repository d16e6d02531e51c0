//! Pure decisions over facts already read: which snapshot to restore, what retention deletes. No store access.
//!
//! Ordering: snapshots are ordered by checkpoint id (ids continue across attempts), then attempt,
//! then kind. Fencing: a snapshot of attempt `k` with id greater than the restore point of any
//! later attempt `k' > k` was completed by a zombie after `k'` started, and is never used.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::fmt;

use crate::attempts::AttemptRecord;
use crate::layout::SnapshotLayout;
use crate::manifest::{Manifest, SnapshotKind};

/// What is known about one snapshot folder.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotFacts {
    /// Attempt that wrote it (from the folder name).
    pub attempt: u64,
    /// Checkpoint id (from the folder name).
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Folder key, e.g. `checkpoints/000002-0000000042`.
    pub dir: String,
    /// The verified manifest, or why the snapshot is unusable (no manifest, corrupt, a file missing
    /// or of the wrong size, a checksum mismatch).
    pub manifest: Result<Manifest, String>,
}

impl SnapshotFacts {
    fn order_key(&self) -> (u64, u64, SnapshotKind) {
        (self.checkpoint_id, self.attempt, self.kind)
    }
}

/// Why a candidate was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Completed by an older attempt after a newer attempt had started from an earlier checkpoint.
    Fenced {
        /// The newer attempt.
        by_attempt: u64,
        /// The checkpoint id that attempt restored from (0 = started empty).
        restore_point: u64,
    },
    /// Incomplete or corrupt.
    Unusable(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Fenced { by_attempt, restore_point: 0 } => {
                write!(f, "fenced: attempt {by_attempt} had started with empty state, so this was written by a zombie")
            }
            SkipReason::Fenced { by_attempt, restore_point } => write!(
                f,
                "fenced: attempt {by_attempt} had started from checkpoint {restore_point}, so this was written by a zombie"
            ),
            SkipReason::Unusable(why) => f.write_str(why),
        }
    }
}

/// A candidate that was passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Attempt of the snapshot.
    pub attempt: u64,
    /// Checkpoint id of the snapshot.
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Folder key.
    pub dir: String,
    /// Why it was not used.
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} of attempt {} ({}) skipped: {}",
            self.kind.as_str(),
            self.checkpoint_id,
            self.attempt,
            self.dir,
            self.reason
        )
    }
}

/// The snapshot to restore from.
#[derive(Debug, Clone, PartialEq)]
pub struct RestorePoint {
    /// Attempt that wrote it.
    pub attempt: u64,
    /// Its checkpoint id.
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Folder key.
    pub dir: String,
    /// Its verified manifest.
    pub manifest: Manifest,
}

/// Result of [`select_restore`].
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreDecision {
    /// The newest usable snapshot; `None` means start with empty state.
    pub chosen: Option<RestorePoint>,
    /// Candidates newer than the chosen one that were passed over, newest first.
    pub skipped: Vec<Skipped>,
}

impl RestoreDecision {
    /// The first checkpoint id of an attempt that restores this decision.
    pub fn next_checkpoint_id(&self) -> u64 {
        self.chosen.as_ref().map_or(1, |c| c.checkpoint_id + 1)
    }

    /// One line for logs and status: "restoring checkpoint 41 (...); checkpoint 42 ... skipped: ...".
    pub fn summary(&self) -> String {
        let mut out = match &self.chosen {
            Some(c) => format!(
                "restoring {} {} of attempt {} ({})",
                c.kind.as_str(),
                c.checkpoint_id,
                c.attempt,
                c.dir
            ),
            None => "no usable snapshot: starting with empty state".to_owned(),
        };
        for skipped in &self.skipped {
            out.push_str("; ");
            out.push_str(&skipped.to_string());
        }
        out
    }
}

/// The later attempt that fences a snapshot of `attempt` with `checkpoint_id`, if any, and its restore point.
pub fn fenced_by(
    attempts: &[AttemptRecord],
    attempt: u64,
    checkpoint_id: u64,
) -> Option<(u64, u64)> {
    attempts
        .iter()
        .filter(|r| r.attempt > attempt && r.restore_point() < checkpoint_id)
        .min_by_key(|r| r.attempt)
        .map(|r| (r.attempt, r.restore_point()))
}

/// Why `facts` cannot be restored, or `None` if it can.
fn skip_reason(attempts: &[AttemptRecord], facts: &SnapshotFacts) -> Option<SkipReason> {
    if let Some((by_attempt, restore_point)) =
        fenced_by(attempts, facts.attempt, facts.checkpoint_id)
    {
        return Some(SkipReason::Fenced {
            by_attempt,
            restore_point,
        });
    }
    facts
        .manifest
        .as_ref()
        .err()
        .map(|why| SkipReason::Unusable(why.clone()))
}

/// Picks the newest usable snapshot (checkpoint or savepoint), reporting the newer ones it passed over.
pub fn select_restore(attempts: &[AttemptRecord], snapshots: &[SnapshotFacts]) -> RestoreDecision {
    let mut ordered: Vec<&SnapshotFacts> = snapshots.iter().collect();
    ordered.sort_by_key(|s| Reverse(s.order_key()));
    let mut skipped = Vec::new();
    for facts in ordered {
        match (skip_reason(attempts, facts), &facts.manifest) {
            (None, Ok(manifest)) => {
                let chosen = RestorePoint {
                    attempt: facts.attempt,
                    checkpoint_id: facts.checkpoint_id,
                    kind: facts.kind,
                    dir: facts.dir.clone(),
                    manifest: manifest.clone(),
                };
                return RestoreDecision {
                    chosen: Some(chosen),
                    skipped,
                };
            }
            (reason, _) => skipped.push(Skipped {
                attempt: facts.attempt,
                checkpoint_id: facts.checkpoint_id,
                kind: facts.kind,
                dir: facts.dir.clone(),
                reason: reason.unwrap_or_else(|| SkipReason::Unusable("no manifest".into())),
            }),
        }
    }
    RestoreDecision {
        chosen: None,
        skipped,
    }
}

/// The number for a new attempt: one more than any attempt seen in records or snapshots.
pub fn next_attempt(attempts: &[AttemptRecord], snapshots: &[SnapshotFacts]) -> u64 {
    let records = attempts.iter().map(|r| r.attempt);
    let written = snapshots.iter().map(|s| s.attempt);
    records.chain(written).max().map_or(1, |a| a + 1)
}

/// Inputs of [`retention_plan`].
#[derive(Debug, Clone, Copy)]
pub struct RetentionInput<'a> {
    /// Attempt records (for fencing).
    pub attempts: &'a [AttemptRecord],
    /// Every snapshot folder; savepoints are never deleted here, but their files stay referenced.
    pub snapshots: &'a [SnapshotFacts],
    /// Number of usable checkpoints to keep (at least 1 is always kept).
    pub retained: usize,
    /// Folders never deleted: in-flight checkpoints, the restore point an operator has recorded.
    pub protected_dirs: &'a BTreeSet<String>,
    /// Keys never deleted: files uploaded by in-flight checkpoints that no manifest lists yet.
    pub protected_keys: &'a BTreeSet<String>,
    /// Every key under `shared/`.
    pub shared_files: &'a [String],
}

/// Result of [`retention_plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Checkpoint folders to delete (manifest first), oldest first.
    pub delete_dirs: Vec<String>,
    /// Unreferenced `shared/` files to delete.
    pub delete_shared: Vec<String>,
    /// Folders that would have been deleted but hold files a kept manifest references (incremental).
    pub kept_referenced: Vec<String>,
}

/// Decides which checkpoint folders and shared files to delete.
///
/// Keeps the newest `retained` usable checkpoints (never fewer than one), protected folders, and
/// unusable folders newer than the newest usable checkpoint (they may still be in flight). Deletes
/// older usable checkpoints and older unusable (incomplete, aborted, corrupt, fenced) folders,
/// except those holding files referenced by a kept manifest or any savepoint manifest. Deletes
/// `shared/` files no kept manifest, savepoint manifest or protected key references.
pub fn retention_plan(input: &RetentionInput<'_>) -> RetentionPlan {
    let mut checkpoints: Vec<&SnapshotFacts> = input
        .snapshots
        .iter()
        .filter(|s| s.kind == SnapshotKind::Checkpoint)
        .collect();
    checkpoints.sort_by_key(|s| Reverse(s.order_key()));
    let usable = |s: &SnapshotFacts| skip_reason(input.attempts, s).is_none();
    let newest_usable = checkpoints
        .iter()
        .find(|s| usable(s))
        .map(|s| s.order_key());

    let mut kept_usable = 0;
    let mut keep: Vec<&SnapshotFacts> = Vec::new();
    let mut candidates: Vec<&SnapshotFacts> = Vec::new();
    for facts in checkpoints {
        let protected = input.protected_dirs.contains(&facts.dir);
        let keep_it = if usable(facts) {
            kept_usable += 1;
            kept_usable <= input.retained.max(1)
        } else {
            newest_usable.is_none_or(|newest| facts.order_key() > newest)
        };
        if keep_it || protected {
            keep.push(facts);
        } else {
            candidates.push(facts);
        }
    }

    // Files referenced by what stays; a candidate holding such a file stays too (until stable).
    let mut referenced: BTreeSet<&str> = input.protected_keys.iter().map(String::as_str).collect();
    let savepoints = input
        .snapshots
        .iter()
        .filter(|s| s.kind == SnapshotKind::Savepoint);
    for facts in keep.iter().copied().chain(savepoints) {
        if let Ok(m) = &facts.manifest {
            referenced.extend(m.files().map(|f| f.key.as_str()));
        }
    }
    let dir_of = |key: &str| SnapshotLayout::dir_of_key(key).map(|d| d.path());
    let mut referenced_dirs: BTreeSet<String> =
        referenced.iter().filter_map(|k| dir_of(k)).collect();
    let mut kept_referenced = Vec::new();
    while let Some(pos) = candidates
        .iter()
        .position(|c| referenced_dirs.contains(&c.dir))
    {
        let facts = candidates.remove(pos);
        if let Ok(m) = &facts.manifest {
            for file in m.files() {
                referenced.insert(file.key.as_str());
                referenced_dirs.extend(dir_of(&file.key));
            }
        }
        kept_referenced.push(facts.dir.clone());
    }

    let mut delete_dirs: Vec<String> = candidates.iter().rev().map(|c| c.dir.clone()).collect();
    delete_dirs.dedup();
    let delete_shared = input
        .shared_files
        .iter()
        .filter(|k| !referenced.contains(k.as_str()))
        .cloned()
        .collect();
    RetentionPlan {
        delete_dirs,
        delete_shared,
        kept_referenced,
    }
}

/// Savepoints to delete under a history policy: keep at most `max_count` (at least 1) and none
/// older than `max_age_ms`, but never the newest one. Input: (name, created at unix ms).
pub fn savepoint_history_plan(
    savepoints: &[(String, u64)],
    max_count: usize,
    max_age_ms: Option<u64>,
    now_ms: u64,
) -> Vec<String> {
    let mut ordered: Vec<&(String, u64)> = savepoints.iter().collect();
    ordered.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    ordered
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, (_, created))| {
            *i >= max_count.max(1)
                || max_age_ms.is_some_and(|max| now_ms.saturating_sub(*created) > max)
        })
        .map(|(_, (name, _))| name.clone())
        .collect()
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
