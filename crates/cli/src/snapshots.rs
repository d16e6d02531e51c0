//! Pure: a job's snapshots from its status and from storage merged into one list, each with its
//! verification result, and which one a restore would use. No client, no store access.

use jiff::Timestamp;
use streamjob_api::v1alpha1::{JobPhase, SnapshotInfo, StreamJobStatus};
use streamjob_checkpoint::{
    select_restore, AttemptRecord, SkipReason, SnapshotFacts, SnapshotKind,
};

use crate::format::{bytes, human_duration, seconds_since, Table, NONE};

/// What was read from the job's storage (deep verification failures already folded into
/// `snapshots` as unusable manifests).
#[derive(Debug, Clone, Default)]
pub struct StorageFacts {
    /// URL of the job's storage root (`s3://bucket/ns/job`, `file:///...`).
    pub root: String,
    /// Attempt records (for fencing).
    pub attempts: Vec<AttemptRecord>,
    /// Every snapshot folder and its manifest or why it is unusable.
    pub snapshots: Vec<SnapshotFacts>,
    /// Whether every complete snapshot's files were downloaded and their CRCs checked.
    pub deep: bool,
}

/// The verification result of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Manifest present and valid, every file listed with its size (and, when `deep`, every CRC checked).
    Verified {
        /// Files downloaded and CRC-32C checked.
        deep: bool,
    },
    /// In storage but unusable (no manifest, corrupt, file missing or damaged).
    Unusable(String),
    /// Complete, but written by a zombie attempt: never restored.
    Fenced(String),
    /// Named in status, absent from storage (deleted by retention, or storage was wiped).
    NotInStorage,
    /// Storage could not be read.
    NotChecked,
}

impl Check {
    fn text(&self) -> String {
        match self {
            Check::Verified { deep: false } => "ok".into(),
            Check::Verified { deep: true } => "ok (CRCs checked)".into(),
            Check::Unusable(why) => format!("unusable: {why}"),
            Check::Fenced(why) => why.clone(),
            Check::NotInStorage => "not in storage".into(),
            Check::NotChecked => "not checked".into(),
        }
    }
}

/// One snapshot as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Checkpoint id.
    pub id: u64,
    /// Attempt that wrote it.
    pub attempt: u64,
    /// Full location.
    pub location: String,
    /// When it completed (unix seconds), if known.
    pub completed_s: Option<i64>,
    /// Bytes of state, if known.
    pub size_bytes: Option<i64>,
    /// Why it was taken (from status).
    pub reason: Option<String>,
    /// Named in the job's status.
    pub in_status: bool,
    /// Verification result.
    pub check: Check,
    /// The snapshot a restore would use.
    pub restore: bool,
}

/// Why the restore target is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreSource {
    /// The operator has committed to a change that restores `location` (`status.pendingChange`).
    PendingChange {
        /// Kind of the change.
        kind: String,
        /// Snapshot location, or `None` for empty state.
        location: Option<String>,
    },
    /// The job is suspended: resuming restores its savepoint.
    Resume(String),
    /// After a failure or restart: the newest verified, unfenced snapshot in storage.
    Latest(String),
    /// Storage holds no usable snapshot: a new attempt starts with empty state.
    Empty,
    /// Storage could not be read.
    Unknown,
}

impl RestoreSource {
    fn location(&self) -> Option<&str> {
        match self {
            RestoreSource::PendingChange { location, .. } => location.as_deref(),
            RestoreSource::Resume(l) | RestoreSource::Latest(l) => Some(l),
            RestoreSource::Empty | RestoreSource::Unknown => None,
        }
    }
}

/// The merged list of a job's snapshots, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotReport {
    /// Every snapshot of status and storage.
    pub rows: Vec<SnapshotRow>,
    /// What a restore would use.
    pub restore: RestoreSource,
    /// Why storage could not be read, if it could not.
    pub storage_error: Option<String>,
}

/// The folder of a snapshot location relative to the storage root (`checkpoints/...`), if it has one.
fn dir_of(location: &str) -> Option<String> {
    let location = location.trim_end_matches('/');
    ["/checkpoints/", "/savepoints/"].iter().find_map(|folder| {
        location
            .rfind(folder)
            .map(|i| location[i + 1..].to_string())
    })
}

fn same_snapshot(location: &str, dir: &str) -> bool {
    dir_of(location).as_deref() == Some(dir)
}

fn join(root: &str, dir: &str) -> String {
    format!("{}/{dir}", root.trim_end_matches('/'))
}

/// What a restore would use: a pending change's target, the suspend savepoint on resume, else
/// the newest usable snapshot in storage (what the operator picks after a failure).
pub fn restore_source(status: &StreamJobStatus, storage: Option<&StorageFacts>) -> RestoreSource {
    if let Some(p) = &status.pending_change {
        if let Some(from) = &p.restore_from {
            return RestoreSource::PendingChange {
                kind: p.kind.clone(),
                location: (from != "none").then(|| from.clone()),
            };
        }
    }
    if status.phase == Some(JobPhase::Suspended) {
        if let Some(sp) = &status.last_savepoint {
            return RestoreSource::Resume(sp.location.clone());
        }
    }
    let Some(storage) = storage else {
        return RestoreSource::Unknown;
    };
    match select_restore(&storage.attempts, &storage.snapshots).chosen {
        Some(chosen) => RestoreSource::Latest(join(&storage.root, &chosen.dir)),
        None => RestoreSource::Empty,
    }
}

fn status_entries(status: &StreamJobStatus) -> Vec<&SnapshotInfo> {
    let mut entries: Vec<&SnapshotInfo> = Vec::new();
    let all = status
        .last_checkpoint
        .iter()
        .chain(status.last_savepoint.iter())
        .chain(status.savepoints.iter());
    for info in all {
        if !entries.iter().any(|e| e.location == info.location) {
            entries.push(info);
        }
    }
    entries
}

fn kind_of(location: &str) -> SnapshotKind {
    match dir_of(location) {
        Some(d) if d.starts_with("savepoints/") => SnapshotKind::Savepoint,
        _ => SnapshotKind::Checkpoint,
    }
}

/// Merges status and storage (`Err`: why storage could not be read) into one report.
pub fn build_report(
    status: &StreamJobStatus,
    storage: Result<&StorageFacts, &str>,
) -> SnapshotReport {
    let entries = status_entries(status);
    let mut rows: Vec<SnapshotRow> = Vec::new();
    if let Ok(storage) = storage {
        let fenced = select_restore(&storage.attempts, &storage.snapshots).skipped;
        for facts in &storage.snapshots {
            let info = entries
                .iter()
                .find(|e| same_snapshot(&e.location, &facts.dir));
            let check = match &facts.manifest {
                Err(why) => Check::Unusable(why.clone()),
                Ok(_) => match fenced
                    .iter()
                    .find(|s| s.dir == facts.dir && matches!(s.reason, SkipReason::Fenced { .. }))
                {
                    Some(s) => Check::Fenced(s.reason.to_string()),
                    None => Check::Verified { deep: storage.deep },
                },
            };
            let manifest = facts.manifest.as_ref().ok();
            rows.push(SnapshotRow {
                kind: facts.kind,
                id: facts.checkpoint_id,
                attempt: facts.attempt,
                location: info
                    .map(|i| i.location.clone())
                    .unwrap_or_else(|| join(&storage.root, &facts.dir)),
                completed_s: manifest
                    .map(|m| (m.created_at_ms / 1000) as i64)
                    .or_else(|| {
                        info.and_then(|i| i.completed_at.as_ref().map(|t| t.0.as_second()))
                    }),
                size_bytes: manifest.map(|m| m.total_size() as i64),
                reason: info.and_then(|i| i.reason.clone()),
                in_status: info.is_some(),
                check,
                restore: false,
            });
        }
    }
    for info in entries {
        let listed = rows.iter().any(|r| {
            r.location == info.location
                || dir_of(&info.location).is_some_and(|d| same_snapshot(&r.location, &d))
        });
        if !listed {
            rows.push(SnapshotRow {
                kind: kind_of(&info.location),
                id: info.id.max(0) as u64,
                attempt: info.attempt.max(0) as u64,
                location: info.location.clone(),
                completed_s: info.completed_at.as_ref().map(|t| t.0.as_second()),
                size_bytes: Some(info.size_bytes),
                reason: info.reason.clone(),
                in_status: true,
                check: if storage.is_ok() {
                    Check::NotInStorage
                } else {
                    Check::NotChecked
                },
                restore: false,
            });
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse((r.id, r.attempt, r.kind)));
    let restore = restore_source(status, storage.ok());
    if let Some(target) = restore.location() {
        let target_dir = dir_of(target);
        if let Some(row) = rows.iter_mut().find(|r| {
            r.location == target || (target_dir.is_some() && dir_of(&r.location) == target_dir)
        }) {
            row.restore = true;
        }
    }
    SnapshotReport {
        rows,
        restore,
        storage_error: storage.err().map(str::to_string),
    }
}

/// The text of `streamjob snapshots`: a table (`*` marks the restore target) and what a restore does.
pub fn render_report(report: &SnapshotReport, storage_url: &str, now: Timestamp) -> String {
    let mut out = String::new();
    if report.rows.is_empty() {
        out.push_str("No snapshots in status or storage.\n");
    } else {
        let mut table = Table::new(&[
            "RESTORE",
            "KIND",
            "ID",
            "ATTEMPT",
            "COMPLETED",
            "SIZE",
            "REASON",
            "STATUS",
            "STORAGE",
            "LOCATION",
        ]);
        for r in &report.rows {
            table.row(vec![
                if r.restore { "*" } else { "" }.into(),
                r.kind.as_str().into(),
                r.id.to_string(),
                r.attempt.to_string(),
                r.completed_s.map_or_else(
                    || NONE.to_string(),
                    |s| {
                        let then = Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
                        format!("{} ago", human_duration(seconds_since(then, now)))
                    },
                ),
                r.size_bytes.map_or_else(|| NONE.to_string(), bytes),
                r.reason.clone().unwrap_or_else(|| "-".into()),
                if r.in_status { "listed" } else { "-" }.into(),
                r.check.text(),
                r.location.clone(),
            ]);
        }
        out.push_str(&table.render());
    }
    out.push('\n');
    out.push_str(&match &report.restore {
        RestoreSource::PendingChange {
            kind,
            location: Some(l),
        } => {
            format!("Restore: the pending {kind} restores {l}\n")
        }
        RestoreSource::PendingChange {
            kind,
            location: None,
        } => {
            format!("Restore: the pending {kind} starts with empty state\n")
        }
        RestoreSource::Resume(l) => {
            format!("Restore: resuming restores the suspend savepoint {l}\n")
        }
        RestoreSource::Latest(l) => {
            format!("Restore: a restart restores the newest verified snapshot {l}\n")
        }
        RestoreSource::Empty => {
            "Restore: storage holds no usable snapshot; a new attempt starts with empty state\n"
                .into()
        }
        RestoreSource::Unknown => "Restore: unknown (storage could not be read)\n".into(),
    });
    if let Some(e) = &report.storage_error {
        out.push_str(&format!(
            "Error: cannot read the snapshot storage {storage_url}: {e}\n  \
             (check that it is reachable from here; S3 credentials come from AWS_ACCESS_KEY_ID, \
             AWS_SECRET_ACCESS_KEY, the endpoint from spec.storage.s3.endpoint or S3_ENDPOINT)\n"
        ));
    }
    out
}

#[cfg(test)]
#[path = "snapshots_tests.rs"]
mod tests;
