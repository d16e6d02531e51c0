//! Restoring a job from a snapshot: download and verify the state files of the manifest this
//! process needs, each once, then give each new subtask exactly its share — the key groups it owns
//! (whatever the old parallelism was) and a round-robin share of operator list state (source
//! splits, pending sink commits).
//!
//! A worker of a cluster runs a block of subtasks, so it owns a block of key groups (its
//! [`RestoreScope`]). The manifest records what each file holds (its key-group span and list
//! entries): a file that holds none of the worker's groups and no list state is not downloaded.
//! Files whose contents the manifest does not record (format 1) are always downloaded.
//!
//! An incremental checkpoint lists several files per old subtask, oldest first. A key group's
//! state is its last full image plus the changes written after it; operator list state comes from
//! the subtask's newest file. A subtask may list files another subtask wrote before a rescale (they
//! hold other groups too): only the groups in the listing subtask's key-group range count. A file
//! several subtasks list is downloaded once.
//!
//! Restoring a checkpoint also tells each keyed operator which files its groups came from (the
//! lineage), so incremental checkpoints of the new attempt build on them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use streamjob_checkpoint::catalog::mark_unusable;
use streamjob_checkpoint::layout::SnapshotLayout;
use streamjob_checkpoint::manifest::{FileRef, Manifest, SnapshotKind};
use streamjob_checkpoint::state_file::{read_state_file, VerifyError};
use streamjob_checkpoint::store::SnapshotStore;
use tokio_util::task::AbortOnDropHandle;

use crate::incremental::AdoptedGroup;
use crate::operator::{RestoredLineage, RestoredState, StateFileBody};

/// Why a snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A state file is missing or corrupt.
    #[error("snapshot {location} cannot be restored: {source}")]
    Verify {
        location: String,
        #[source]
        source: VerifyError,
    },
    /// A state file does not decode.
    #[error("state file {key} of snapshot {location} does not decode: {reason}")]
    Decode {
        location: String,
        key: String,
        reason: String,
    },
    /// A download task panicked or was cancelled (the runtime shut down).
    #[error(
        "restoring snapshot {location} was interrupted: {reason}; the next attempt restores again"
    )]
    Interrupted { location: String, reason: String },
    /// The snapshot has state for operators the job does not have.
    #[error("snapshot {location} holds state for operators this job does not have: {operators:?}; set allowNonRestoredState to drop it")]
    UnknownOperators {
        location: String,
        operators: Vec<String>,
    },
    /// A subtask asked for key groups outside what this process restored (a bug: report it).
    #[error("the restore loaded key groups {scope:?}, not the {wanted:?} of subtask {subtask}; this is a bug in streamjob, please report it")]
    OutOfScope {
        scope: Range<u32>,
        wanted: Range<u32>,
        subtask: u32,
    },
    /// The snapshot was taken with another number of key groups.
    #[error("snapshot {location} was taken with maxParallelism {snapshot}, the job has {job}; maxParallelism cannot change once a job has state")]
    MaxParallelismChanged {
        location: String,
        snapshot: u32,
        job: u32,
    },
}

/// The key groups this process restores: all of them in local mode, a worker's block in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreScope {
    /// The key groups of the subtasks that run here.
    pub key_groups: Range<u32>,
}

impl RestoreScope {
    /// Every key group of a job with `max_parallelism` (the whole job runs in this process).
    pub fn everything(max_parallelism: u32) -> Self {
        Self {
            key_groups: 0..max_parallelism,
        }
    }

    /// Whether a restore in this scope needs `file`, listed by an old subtask that owned
    /// `listed_by` (only those groups of the file count; `0..0`: a manifest without the range).
    pub fn needs(&self, file: &FileRef, listed_by: &Range<u32>) -> bool {
        let Some(contents) = &file.contents else {
            return true; // unknown contents: download
        };
        if contents.list_entries > 0 {
            return true; // list state is shared out round-robin over every old entry
        }
        let counted = if listed_by.is_empty() {
            self.key_groups.clone()
        } else {
            self.key_groups.start.max(listed_by.start)..self.key_groups.end.min(listed_by.end)
        };
        contents.has_key_groups_in(&counted)
    }
}

/// Old subtask's state of one operator: its files in manifest order (oldest first), each decoded
/// or, when this process needs nothing in it, `None`.
#[derive(Debug)]
struct OldSubtask {
    subtask: u32,
    /// The key groups it owned: its files may hold others (files written before a rescale).
    key_groups: Range<u32>,
    files: Vec<(FileRef, Option<Arc<StateFileBody>>)>,
}

impl OldSubtask {
    fn has_keyed_state(&self) -> bool {
        self.files.iter().any(|(file, body)| match body {
            Some(f) => !f.keyed.is_empty() || !f.keyed_changes.is_empty(),
            None => file.contents.is_some_and(|c| c.has_keyed_state()),
        })
    }
}

/// How much of a snapshot a restore downloaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadSummary {
    /// Distinct files the manifest lists.
    pub files: usize,
    /// Of those, downloaded and verified.
    pub downloaded: usize,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Bytes of the files not needed here (other workers' key groups).
    pub skipped_bytes: u64,
}

/// The decoded state of a snapshot, shared by all tasks of the new attempt.
#[derive(Debug)]
pub struct RestoreData {
    operators: BTreeMap<String, Vec<OldSubtask>>,
    /// A checkpoint (not a savepoint): later incremental checkpoints may reference its files.
    adoptable: bool,
    scope: RestoreScope,
    summary: DownloadSummary,
}

impl RestoreData {
    /// Download, verify (size + CRC-32C) and decode the state files of `manifest` that `scope`
    /// needs.
    ///
    /// A file that is missing or fails its checksum marks the whole snapshot unusable in storage
    /// (see [`mark_unusable`]) before the error is returned: the attempt fails, and the next one —
    /// whoever picks it, the operator or `--restore latest` — restores an older snapshot.
    pub async fn load(
        store: Arc<dyn SnapshotStore>,
        manifest: &Manifest,
        location: &str,
        scope: RestoreScope,
    ) -> Result<Self, RestoreError> {
        let result = Self::download(Arc::clone(&store), manifest, location, scope).await;
        if let Err(RestoreError::Verify { source, .. }) = &result {
            if !source.is_transient() {
                let dir =
                    SnapshotLayout::dir(manifest.kind, manifest.attempt, manifest.checkpoint_id);
                match mark_unusable(store.as_ref(), &dir, &source.to_string()).await {
                    Ok(()) => tracing::warn!(
                        snapshot = location,
                        error = %source,
                        "the snapshot failed verification and is marked unusable; the next attempt restores an older one"
                    ),
                    Err(e) => tracing::warn!(
                        snapshot = location,
                        error = %e,
                        "could not mark the snapshot unusable"
                    ),
                }
            }
        }
        result
    }

    async fn download(
        store: Arc<dyn SnapshotStore>,
        manifest: &Manifest,
        location: &str,
        scope: RestoreScope,
    ) -> Result<Self, RestoreError> {
        // Each distinct file once, however many subtasks list it; needed if any listing needs it.
        let mut unique: BTreeMap<&str, (&FileRef, bool)> = BTreeMap::new();
        for subtask in manifest.operators.iter().flat_map(|o| &o.subtasks) {
            let listed_by = subtask.key_group_start..subtask.key_group_end;
            for file in &subtask.files {
                let needed = scope.needs(file, &listed_by);
                let entry = unique.entry(file.key.as_str()).or_insert((file, false));
                entry.1 |= needed;
            }
        }
        let mut summary = DownloadSummary {
            files: unique.len(),
            ..DownloadSummary::default()
        };
        for (file, needed) in unique.values() {
            if *needed {
                summary.downloaded += 1;
                summary.downloaded_bytes += file.size;
            } else {
                summary.skipped_bytes += file.size;
            }
        }
        let needed = unique
            .into_values()
            .filter_map(|(file, needed)| needed.then_some(file));
        // Each file is a task of its own (the caller may be polling this on one thread): its body
        // arrives and is checked on the runtime's workers, and it is decoded on a blocking thread,
        // so all cores work on a restore. When one file fails, dropping the stream aborts the
        // downloads still running.
        let decoded: BTreeMap<String, Arc<StateFileBody>> = stream::iter(needed)
            .map(|file| {
                let store = Arc::clone(&store);
                let file = file.clone();
                let location = location.to_string();
                AbortOnDropHandle::new(tokio::spawn(async move {
                    let bytes = read_state_file(store.as_ref(), &file)
                        .await
                        .map_err(|source| RestoreError::Verify {
                            location: location.clone(),
                            source,
                        })?;
                    let state = tokio::task::spawn_blocking(move || StateFileBody::decode(&bytes))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|decoded| decoded.map_err(|e| e.to_string()))
                        .map_err(|reason| RestoreError::Decode {
                            location,
                            key: file.key.clone(),
                            reason,
                        })?;
                    Ok::<_, RestoreError>((file.key, Arc::new(state)))
                }))
            })
            .buffer_unordered(8)
            .map(|joined| {
                joined.map_err(|e| RestoreError::Interrupted {
                    location: location.to_string(),
                    reason: e.to_string(),
                })?
            })
            .try_collect()
            .await?;
        let mut operators: BTreeMap<String, Vec<OldSubtask>> = BTreeMap::new();
        for operator in &manifest.operators {
            let subtasks = operators.entry(operator.operator_id.clone()).or_default();
            for subtask in &operator.subtasks {
                let files = subtask
                    .files
                    .iter()
                    .map(|f| (f.clone(), decoded.get(&f.key).map(Arc::clone)))
                    .collect();
                subtasks.push(OldSubtask {
                    subtask: subtask.subtask,
                    key_groups: subtask.key_group_start..subtask.key_group_end,
                    files,
                });
            }
            subtasks.sort_by_key(|s| s.subtask);
        }
        tracing::info!(
            snapshot = location,
            key_groups = ?scope.key_groups,
            files = summary.files,
            downloaded = summary.downloaded,
            downloaded_bytes = summary.downloaded_bytes,
            skipped_bytes = summary.skipped_bytes,
            "restore downloaded the state files this process needs"
        );
        Ok(Self {
            operators,
            adoptable: manifest.kind == SnapshotKind::Checkpoint,
            scope,
            summary,
        })
    }

    /// How much of the snapshot was downloaded.
    pub fn summary(&self) -> DownloadSummary {
        self.summary
    }

    /// Check the snapshot fits a job with these operators and key groups.
    pub fn check_compatible(
        &self,
        job_operators: &BTreeSet<String>,
        max_parallelism: u32,
        manifest: &Manifest,
        location: &str,
        allow_non_restored: bool,
    ) -> Result<(), RestoreError> {
        if manifest.max_parallelism != max_parallelism
            && self
                .operators
                .values()
                .flatten()
                .any(OldSubtask::has_keyed_state)
        {
            return Err(RestoreError::MaxParallelismChanged {
                location: location.to_string(),
                snapshot: manifest.max_parallelism,
                job: max_parallelism,
            });
        }
        let unknown: Vec<String> = self
            .operators
            .keys()
            .filter(|o| !job_operators.contains(*o))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            if allow_non_restored {
                tracing::warn!(operators = ?unknown, "dropping state of operators the job no longer has");
            } else {
                return Err(RestoreError::UnknownOperators {
                    location: location.to_string(),
                    operators: unknown,
                });
            }
        }
        Ok(())
    }
}

/// One new subtask's window onto the restore data.
#[derive(Clone, Default)]
pub struct RestoreView {
    data: Option<Arc<RestoreData>>,
    subtask: u32,
    parallelism: u32,
    key_groups: Range<u32>,
}

impl RestoreView {
    /// No state: a fresh start.
    pub fn empty() -> Self {
        Self::default()
    }
    /// The share of `data` for `subtask` of `parallelism` owning `key_groups`, which must lie in
    /// the scope `data` was loaded for.
    pub fn new(
        data: Arc<RestoreData>,
        subtask: u32,
        parallelism: u32,
        key_groups: Range<u32>,
    ) -> Result<Self, RestoreError> {
        let scope = &data.scope.key_groups;
        if !key_groups.is_empty() && (key_groups.start < scope.start || key_groups.end > scope.end)
        {
            return Err(RestoreError::OutOfScope {
                scope: scope.clone(),
                wanted: key_groups,
                subtask,
            });
        }
        Ok(Self {
            data: Some(data),
            subtask,
            parallelism,
            key_groups,
        })
    }
    /// True when the job restored a snapshot.
    pub fn is_restoring(&self) -> bool {
        self.data.is_some()
    }
    /// This subtask's state of `operator_id`, if the snapshot has any.
    pub fn state_for(&self, operator_id: &str) -> Option<RestoredState> {
        let data = self.data.as_ref()?;
        let old = data.operators.get(operator_id)?;
        let mut restored = RestoredState::default();
        let mut lineage = LineageBuilder::default();
        let mut list_index = 0usize;
        for subtask in old {
            // An empty range: a manifest that did not record one; its files hold only its groups.
            let ours = |kg: &u32| {
                self.key_groups.contains(kg)
                    && (subtask.key_groups.is_empty() || subtask.key_groups.contains(kg))
            };
            // Files not downloaded hold none of this process's groups (`RestoreScope::needs`)
            // and no list state; this subtask's groups are in the scope (`RestoreView::new`).
            let downloaded = subtask
                .files
                .iter()
                .enumerate()
                .filter_map(|(index, (file_ref, body))| Some((index, file_ref, body.as_deref()?)));
            // Per key group: the index of the file with its newest image.
            let mut image_in: BTreeMap<u32, usize> = BTreeMap::new();
            for (index, _, file) in downloaded.clone() {
                for (kg, _) in &file.keyed {
                    if ours(kg) {
                        image_in.insert(*kg, index);
                    }
                }
            }
            for (index, file_ref, file) in downloaded {
                for (kg, blob) in &file.keyed {
                    if image_in.get(kg) == Some(&index) {
                        restored.keyed.push((*kg, blob.clone()));
                        lineage.image(*kg, file_ref, blob.len() as u64);
                    }
                }
                for (kg, blob) in &file.keyed_changes {
                    if image_in.get(kg).is_some_and(|image| index > *image) {
                        restored.keyed_changes.push((*kg, blob.clone()));
                        lineage.change(*kg, file_ref, blob.len() as u64);
                    }
                }
            }
            // The newest file, never an older one in its place: a file not downloaded has no list.
            let newest_list = subtask
                .files
                .last()
                .and_then(|(_, f)| f.as_deref())
                .map_or(&[][..], |f| f.list.as_slice());
            for entry in newest_list {
                if list_index % self.parallelism.max(1) as usize == self.subtask as usize {
                    restored.list.push(entry.clone());
                }
                list_index += 1;
            }
        }
        if data.adoptable && !lineage.groups.is_empty() {
            restored.lineage = Some(lineage.build());
        }
        Some(restored)
    }
}

/// Collects which files restored key groups came from.
#[derive(Default)]
struct LineageBuilder {
    files: BTreeMap<String, FileRef>,
    groups: BTreeMap<u32, GroupFiles>,
}

/// One key group's image file key and size, then its change files' keys and sizes.
struct GroupFiles {
    image: (String, u64),
    changes: Vec<(String, u64)>,
}

impl LineageBuilder {
    fn image(&mut self, kg: u32, file: &FileRef, bytes: u64) {
        self.files.insert(file.key.clone(), file.clone());
        let image = (file.key.clone(), bytes);
        self.groups.insert(
            kg,
            GroupFiles {
                image,
                changes: Vec::new(),
            },
        );
    }

    fn change(&mut self, kg: u32, file: &FileRef, bytes: u64) {
        self.files.insert(file.key.clone(), file.clone());
        if let Some(group) = self.groups.get_mut(&kg) {
            group.changes.push((file.key.clone(), bytes));
        }
    }

    /// Files in age order: by snapshot folder (attempt, then checkpoint id), which is the order
    /// they were written in; so a group's image comes before its changes in every later list.
    fn build(self) -> RestoredLineage {
        let mut files: Vec<FileRef> = self.files.into_values().collect();
        files.sort_by_cached_key(|f| (age_of(&f.key), f.key.clone()));
        let index: BTreeMap<&str, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.key.as_str(), i))
            .collect();
        let groups = self
            .groups
            .iter()
            .map(|(kg, group)| {
                (
                    *kg,
                    AdoptedGroup {
                        image: (index[group.image.0.as_str()], group.image.1),
                        changes: group
                            .changes
                            .iter()
                            .map(|(key, bytes)| (index[key.as_str()], *bytes))
                            .collect(),
                    },
                )
            })
            .collect();
        RestoredLineage { files, groups }
    }
}

/// (attempt, checkpoint id) of the checkpoint folder a state file is in.
fn age_of(key: &str) -> Option<(u64, u64)> {
    let dir = SnapshotLayout::dir_of_key(key)?;
    SnapshotLayout::parse_dir_name(dir.kind, &dir.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use streamjob_checkpoint::file_store::FileStore;
    use streamjob_checkpoint::manifest::{OperatorState, SubtaskState};
    use streamjob_checkpoint::state_file::write_state_file;

    async fn put(store: &dyn SnapshotStore, key: &str, body: StateFileBody) -> FileRef {
        write_state_file(
            store,
            key,
            body.encode(crate::config::SnapshotCompression::None),
        )
        .await
        .unwrap()
    }

    fn image(groups: &[u32], tag: u8) -> StateFileBody {
        StateFileBody {
            keyed: groups
                .iter()
                .map(|g| (*g, Bytes::from(vec![tag; 4])))
                .collect(),
            ..StateFileBody::default()
        }
    }

    /// Attempt 1 at parallelism 1 wrote `old` (groups 0..4); attempt 2 at parallelism 2 built on
    /// it: subtask 0 (groups 0..2) and subtask 1 (groups 2..4) both list it, then their own
    /// changes. Restoring attempt 2's checkpoint must take from `old` only each listing subtask's
    /// groups, download it once, and give the lineage in age order.
    #[tokio::test]
    async fn files_listed_by_several_subtasks_count_only_for_their_groups() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(tmp.path()).unwrap());
        let old = put(
            store.as_ref(),
            "checkpoints/000001-0000000003/op-0.state",
            image(&[0, 1, 2, 3], 1),
        )
        .await;
        let changes = |group: u32| StateFileBody {
            keyed_changes: vec![(group, Bytes::from(vec![9; 2]))],
            ..StateFileBody::default()
        };
        let own0 = put(
            store.as_ref(),
            "checkpoints/000002-0000000004/op-0.state",
            changes(1),
        )
        .await;
        let own1 = put(
            store.as_ref(),
            "checkpoints/000002-0000000004/op-1.state",
            changes(3),
        )
        .await;
        let manifest_of = |kind| {
            let mut m = Manifest::new(kind, 2, 4, "job");
            m.parallelism = 2;
            m.max_parallelism = 4;
            m.operators = vec![OperatorState {
                operator_id: "op".into(),
                subtasks: vec![
                    SubtaskState {
                        subtask: 0,
                        key_group_start: 0,
                        key_group_end: 2,
                        files: vec![old.clone(), own0.clone()],
                    },
                    SubtaskState {
                        subtask: 1,
                        key_group_start: 2,
                        key_group_end: 4,
                        files: vec![old.clone(), own1.clone()],
                    },
                ],
            }];
            m
        };
        let data = Arc::new(
            RestoreData::load(
                Arc::clone(&store),
                &manifest_of(SnapshotKind::Checkpoint),
                "cp",
                RestoreScope::everything(4),
            )
            .await
            .unwrap(),
        );
        assert!(Arc::ptr_eq(
            data.operators["op"][0].files[0].1.as_ref().unwrap(),
            data.operators["op"][1].files[0].1.as_ref().unwrap()
        ));
        assert_eq!(data.summary().downloaded, 3, "each distinct file once");
        // One new subtask owning everything (a rescale to 1).
        let state = RestoreView::new(Arc::clone(&data), 0, 1, 0..4)
            .unwrap()
            .state_for("op")
            .unwrap();
        let mut groups: Vec<u32> = state.keyed.iter().map(|(g, _)| *g).collect();
        groups.sort();
        assert_eq!(groups, vec![0, 1, 2, 3], "each group's image once");
        assert_eq!(state.keyed_changes.len(), 2);
        let lineage = state.lineage.expect("a checkpoint is adopted");
        let keys: Vec<&str> = lineage.files.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![old.key.as_str(), own0.key.as_str(), own1.key.as_str()]
        );
        let group = |g: u32| {
            lineage
                .groups
                .iter()
                .find(|(kg, _)| *kg == g)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(group(0).image.0, 0);
        assert!(group(0).changes.is_empty());
        assert_eq!(
            group(3).changes.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![2]
        );

        // A savepoint's files are restored the same way but never adopted.
        let data = Arc::new(
            RestoreData::load(
                Arc::clone(&store),
                &manifest_of(SnapshotKind::Savepoint),
                "sp",
                RestoreScope::everything(4),
            )
            .await
            .unwrap(),
        );
        let state = RestoreView::new(data, 1, 2, 2..4)
            .unwrap()
            .state_for("op")
            .unwrap();
        assert_eq!(state.keyed.len(), 2);
        assert!(state.lineage.is_none());
    }

    /// Two old subtasks (groups 0..2 and 2..4), each with an image file; a source's list state in
    /// a file of its own. A worker restoring groups 2..4 downloads its image and the list file
    /// only (the other image is deleted from storage to prove it is never read), gets the same
    /// state as a restore of everything, and the whole list state to share out.
    #[tokio::test]
    async fn a_worker_downloads_only_the_files_with_its_key_groups_or_list_state() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(tmp.path()).unwrap());
        let with_contents = |mut file: FileRef, body: &StateFileBody| {
            file.contents = Some(body.contents());
            file
        };
        let mut files = Vec::new();
        for (key, body) in [
            (
                "checkpoints/000001-0000000002/op/0000.state",
                image(&[0, 1], 1),
            ),
            (
                "checkpoints/000001-0000000002/op/0001.state",
                image(&[2, 3], 2),
            ),
            (
                "checkpoints/000001-0000000002/src/0000.state",
                StateFileBody {
                    list: vec![b"split-0".to_vec(), b"split-1".to_vec()],
                    ..StateFileBody::default()
                },
            ),
        ] {
            files.push(with_contents(
                put(store.as_ref(), key, body.clone()).await,
                &body,
            ));
        }
        let subtask = |i: u32, range: Range<u32>, files: Vec<FileRef>| SubtaskState {
            subtask: i,
            key_group_start: range.start,
            key_group_end: range.end,
            files,
        };
        let mut manifest = Manifest::new(SnapshotKind::Checkpoint, 1, 2, "job");
        manifest.parallelism = 2;
        manifest.max_parallelism = 4;
        manifest.operators = vec![
            OperatorState {
                operator_id: "op".into(),
                subtasks: vec![
                    subtask(0, 0..2, vec![files[0].clone()]),
                    subtask(1, 2..4, vec![files[1].clone()]),
                ],
            },
            OperatorState {
                operator_id: "src".into(),
                subtasks: vec![subtask(0, 0..0, vec![files[2].clone()])],
            },
        ];
        let everything = Arc::new(
            RestoreData::load(
                Arc::clone(&store),
                &manifest,
                "cp",
                RestoreScope::everything(4),
            )
            .await
            .unwrap(),
        );
        assert_eq!(everything.summary().downloaded, 3);
        let want = RestoreView::new(Arc::clone(&everything), 1, 2, 2..4)
            .unwrap()
            .state_for("op")
            .unwrap();

        store.delete(&[files[0].key.clone()]).await.unwrap();
        let worker = Arc::new(
            RestoreData::load(
                Arc::clone(&store),
                &manifest,
                "cp",
                RestoreScope { key_groups: 2..4 },
            )
            .await
            .expect("the deleted file holds no group of this worker"),
        );
        let summary = worker.summary();
        assert_eq!((summary.files, summary.downloaded), (3, 2), "{summary:?}");
        assert_eq!(summary.skipped_bytes, files[0].size);
        let got = RestoreView::new(Arc::clone(&worker), 1, 2, 2..4)
            .unwrap()
            .state_for("op")
            .unwrap();
        assert_eq!(got.keyed, want.keyed);
        assert_eq!(
            got.lineage.map(|l| l.files),
            want.lineage.map(|l| l.files),
            "adopts the same files"
        );
        let lists: Vec<Vec<u8>> = (0..2)
            .flat_map(|s| {
                RestoreView::new(Arc::clone(&worker), s, 2, 2..4)
                    .unwrap()
                    .state_for("src")
                    .unwrap()
                    .list
            })
            .collect();
        assert_eq!(lists, vec![b"split-0".to_vec(), b"split-1".to_vec()]);
        // A subtask outside the scope is refused, not given a silently partial state.
        let err = RestoreView::new(worker, 0, 2, 0..2)
            .err()
            .expect("out of scope");
        assert!(matches!(err, RestoreError::OutOfScope { .. }), "{err}");

        // Without recorded contents (manifest format 1) every file is needed: the restore fails
        // on the deleted one instead of guessing.
        for file in manifest
            .operators
            .iter_mut()
            .flat_map(|o| o.subtasks.iter_mut())
            .flat_map(|s| s.files.iter_mut())
        {
            file.contents = None;
        }
        let err = RestoreData::load(
            Arc::clone(&store),
            &manifest,
            "cp",
            RestoreScope { key_groups: 2..4 },
        )
        .await
        .expect_err("a file it needs is missing");
        assert!(matches!(err, RestoreError::Verify { .. }), "{err}");
    }
}
