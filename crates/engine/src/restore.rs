//! Restoring a job from a snapshot: download and verify every state file of the manifest once, then
//! give each new subtask exactly its share — the key groups it owns (whatever the old parallelism
//! was) and a round-robin share of operator list state (source splits, pending sink commits).
//!
//! An incremental checkpoint lists several files per old subtask, oldest first. A key group's
//! state is its last full image plus the changes written after it; operator list state comes from
//! the subtask's newest file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use streamjob_checkpoint::catalog::mark_unusable;
use streamjob_checkpoint::layout::SnapshotLayout;
use streamjob_checkpoint::manifest::Manifest;
use streamjob_checkpoint::state_file::{read_state_file, VerifyError};
use streamjob_checkpoint::store::SnapshotStore;

use crate::operator::{RestoredState, StateFileBody};

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
    /// The snapshot has state for operators the job does not have.
    #[error("snapshot {location} holds state for operators this job does not have: {operators:?}; set allowNonRestoredState to drop it")]
    UnknownOperators {
        location: String,
        operators: Vec<String>,
    },
    /// The snapshot was taken with another number of key groups.
    #[error("snapshot {location} was taken with maxParallelism {snapshot}, the job has {job}; maxParallelism cannot change once a job has state")]
    MaxParallelismChanged {
        location: String,
        snapshot: u32,
        job: u32,
    },
}

/// Old subtask's state of one operator: its files in manifest order (oldest first).
#[derive(Debug)]
struct OldSubtask {
    subtask: u32,
    files: Vec<StateFileBody>,
}

impl OldSubtask {
    fn has_keyed_state(&self) -> bool {
        self.files
            .iter()
            .any(|f| !f.keyed.is_empty() || !f.keyed_changes.is_empty())
    }
}

/// The decoded state of a snapshot, shared by all tasks of the new attempt.
#[derive(Debug, Default)]
pub struct RestoreData {
    operators: BTreeMap<String, Vec<OldSubtask>>,
}

impl RestoreData {
    /// Download, verify (size + CRC-32C) and decode every state file of `manifest`.
    ///
    /// A file that is missing or fails its checksum marks the whole snapshot unusable in storage
    /// (see [`mark_unusable`]) before the error is returned: the attempt fails, and the next one —
    /// whoever picks it, the operator or `--restore latest` — restores an older snapshot.
    pub async fn load(
        store: Arc<dyn SnapshotStore>,
        manifest: &Manifest,
        location: &str,
    ) -> Result<Self, RestoreError> {
        let result = Self::download(Arc::clone(&store), manifest, location).await;
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
    ) -> Result<Self, RestoreError> {
        let mut jobs = Vec::new();
        for operator in &manifest.operators {
            for subtask in &operator.subtasks {
                for (index, file) in subtask.files.iter().enumerate() {
                    jobs.push((
                        operator.operator_id.clone(),
                        subtask.subtask,
                        index,
                        file.clone(),
                    ));
                }
            }
        }
        let mut loaded: Vec<(String, u32, usize, StateFileBody)> = stream::iter(jobs)
            .map(|(operator, subtask, index, file)| {
                let store = Arc::clone(&store);
                async move {
                    let bytes = read_state_file(store.as_ref(), &file)
                        .await
                        .map_err(|source| RestoreError::Verify {
                            location: location.to_string(),
                            source,
                        })?;
                    let state =
                        StateFileBody::decode(&bytes).map_err(|e| RestoreError::Decode {
                            location: location.to_string(),
                            key: file.key.clone(),
                            reason: e.to_string(),
                        })?;
                    Ok::<_, RestoreError>((operator, subtask, index, state))
                }
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        loaded.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        let mut operators: BTreeMap<String, Vec<OldSubtask>> = BTreeMap::new();
        for (operator, subtask, _, state) in loaded {
            let subtasks = operators.entry(operator).or_default();
            match subtasks.last_mut() {
                Some(last) if last.subtask == subtask => last.files.push(state),
                _ => subtasks.push(OldSubtask {
                    subtask,
                    files: vec![state],
                }),
            }
        }
        Ok(Self { operators })
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
    /// The share of `data` for `subtask` of `parallelism` owning `key_groups`.
    pub fn new(
        data: Arc<RestoreData>,
        subtask: u32,
        parallelism: u32,
        key_groups: Range<u32>,
    ) -> Self {
        Self {
            data: Some(data),
            subtask,
            parallelism,
            key_groups,
        }
    }
    /// True when the job restored a snapshot.
    pub fn is_restoring(&self) -> bool {
        self.data.is_some()
    }
    /// This subtask's state of `operator_id`, if the snapshot has any.
    pub fn state_for(&self, operator_id: &str) -> Option<RestoredState> {
        let old = self.data.as_ref()?.operators.get(operator_id)?;
        let mut restored = RestoredState::default();
        let mut list_index = 0usize;
        for subtask in old {
            // Per key group: the index of the file with its newest image.
            let mut image_in: BTreeMap<u32, usize> = BTreeMap::new();
            for (index, file) in subtask.files.iter().enumerate() {
                for (kg, _) in &file.keyed {
                    if self.key_groups.contains(kg) {
                        image_in.insert(*kg, index);
                    }
                }
            }
            for (index, file) in subtask.files.iter().enumerate() {
                for (kg, blob) in &file.keyed {
                    if image_in.get(kg) == Some(&index) {
                        restored.keyed.push((*kg, blob.clone()));
                    }
                }
                for (kg, blob) in &file.keyed_changes {
                    if image_in.get(kg).is_some_and(|image| index > *image) {
                        restored.keyed_changes.push((*kg, blob.clone()));
                    }
                }
            }
            let newest_list = subtask.files.last().map_or(&[][..], |f| f.list.as_slice());
            for entry in newest_list {
                if list_index % self.parallelism.max(1) as usize == self.subtask as usize {
                    restored.list.push(entry.clone());
                }
                list_index += 1;
            }
        }
        Some(restored)
    }
}
