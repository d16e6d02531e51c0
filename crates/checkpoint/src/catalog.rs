//! The I/O edge of the protocol: reads snapshot facts from a job's store, commits manifests, applies decisions.
//!
//! Everything here is relative to one job's root store (see [`crate::job_store`]). Decisions are
//! made by the pure functions in [`crate::decide`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::attempts::{newest_attempt, read_attempts, AttemptError};
use crate::decide::{
    retention_plan, savepoint_history_plan, select_restore, RestoreDecision, RetentionInput,
    RetentionPlan, SnapshotFacts,
};
use crate::layout::{SnapshotDir, SnapshotLayout, MANIFEST_FILE, SHARED, UNUSABLE_FILE};
use crate::manifest::{Manifest, ManifestError};
use crate::state_file::{read_state_file, VerifyError};
use crate::store::{ObjectInfo, PutOutcome, SnapshotStore, StoreError};

/// Manifests read at the same time.
const READ_CONCURRENCY: usize = 8;
/// State files downloaded at the same time by [`verify_deep`].
const VERIFY_CONCURRENCY: usize = 4;

/// Errors of the catalog operations.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store failed; see [`StoreError::is_transient`] to decide whether to retry.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Attempt records could not be read.
    #[error(transparent)]
    Attempts(#[from] AttemptError),
    /// A manifest could not be encoded or is invalid.
    #[error("failed to write the manifest of {dir}: {source}")]
    Manifest {
        /// The snapshot folder.
        dir: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// A manifest cannot be read back.
    #[error("manifest {location} cannot be used: {source}")]
    BadManifest {
        /// URL of the manifest.
        location: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// The snapshot already has a manifest; snapshots are written once.
    #[error("snapshot {location} already has a manifest; it was completed before (use a new checkpoint id)")]
    ManifestExists {
        /// URL of the snapshot folder.
        location: String,
    },
    /// A newer attempt has started: this attempt must not complete snapshots any more.
    #[error("attempt {attempt} is fenced: attempt {newest} has started; this worker must stop")]
    Fenced {
        /// The attempt that tried to commit.
        attempt: u64,
        /// The newest attempt.
        newest: u64,
    },
    /// A folder that is not a snapshot folder was asked to be deleted (a bug in the caller).
    #[error("refusing to delete {0:?}: it is not a snapshot folder (checkpoints/<attempt>-<id> or savepoints/sp-<id>-<attempt>)")]
    NotASnapshotDir(String),
    /// A state file failed verification while the store itself answered transiently.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl CatalogError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            CatalogError::Store(e) => e.is_transient(),
            CatalogError::Attempts(AttemptError::Store(e)) => e.is_transient(),
            CatalogError::Verify(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// How much of a snapshot to check before using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyLevel {
    /// Manifest checksum, and every file listed with the right size (one listing, no downloads).
    Shallow,
    /// Shallow, plus download every file of the chosen snapshot and check its CRC-32C.
    Deep,
}

/// Writes the manifest of a finished snapshot (create-if-absent) and returns its folder.
///
/// Refuses if a newer attempt has a record ([`CatalogError::Fenced`]). That check and the write
/// are not atomic; restores therefore also fence by attempt records (see [`crate::decide`]).
pub async fn commit_manifest(
    store: &dyn SnapshotStore,
    manifest: &Manifest,
) -> Result<SnapshotDir, CatalogError> {
    let dir = SnapshotLayout::dir(manifest.kind, manifest.attempt, manifest.checkpoint_id);
    let manifest_error = |source| CatalogError::Manifest {
        dir: dir.path(),
        source,
    };
    manifest.validate().map_err(manifest_error)?;
    let body = manifest.to_json().map_err(manifest_error)?;
    if let Some(newest) = newest_attempt(store).await? {
        if newest > manifest.attempt {
            return Err(CatalogError::Fenced {
                attempt: manifest.attempt,
                newest,
            });
        }
    }
    let key = SnapshotLayout::manifest(&dir);
    let body = Bytes::from(body);
    match store.put_if_absent(&key, body.clone()).await? {
        PutOutcome::Created => Ok(dir),
        // The store client retries a PUT whose answer was lost; the retry then finds our own
        // write. The same bytes (they hold this writer's timestamps and checksums) mean it is ours.
        PutOutcome::AlreadyExists if store.get(&key).await? == body => {
            tracing::info!(
                dir = dir.path(),
                "the manifest was already written by this commit (a retried request); keeping it"
            );
            Ok(dir)
        }
        PutOutcome::AlreadyExists => Err(CatalogError::ManifestExists {
            location: store.location(&dir.path()),
        }),
    }
}

/// Reads and verifies the manifest of `dir` (JSON, checksum, structure).
pub async fn read_manifest(
    store: &dyn SnapshotStore,
    dir: &SnapshotDir,
) -> Result<Manifest, CatalogError> {
    let key = SnapshotLayout::manifest(dir);
    let body = store.get(&key).await?;
    Manifest::from_json(&body).map_err(|source| CatalogError::BadManifest {
        location: store.location(&key),
        source,
    })
}

/// Every snapshot folder with its verified manifest or the reason it is unusable (shallow check).
pub async fn list_snapshots(store: &dyn SnapshotStore) -> Result<Vec<SnapshotFacts>, CatalogError> {
    let listing = store.list("").await?;
    facts_from_listing(store, &listing).await
}

async fn facts_from_listing(
    store: &dyn SnapshotStore,
    listing: &[ObjectInfo],
) -> Result<Vec<SnapshotFacts>, CatalogError> {
    let sizes: HashMap<&str, u64> = listing.iter().map(|o| (o.key.as_str(), o.size)).collect();
    // Per folder: (has a manifest, carries an unusable marker).
    let mut dirs: BTreeMap<SnapshotDir, (bool, bool)> = BTreeMap::new();
    for object in listing {
        if let Some(dir) = SnapshotLayout::dir_of_key(&object.key) {
            let is_manifest =
                object.key.ends_with(MANIFEST_FILE) && object.key == SnapshotLayout::manifest(&dir);
            let is_marker = object.key.ends_with(UNUSABLE_FILE)
                && object.key == SnapshotLayout::unusable_marker(&dir);
            let entry = dirs.entry(dir).or_default();
            entry.0 |= is_manifest;
            entry.1 |= is_marker;
        }
    }
    futures::stream::iter(dirs)
        .filter_map(|(dir, flags)| async move {
            match SnapshotLayout::parse_dir_name(dir.kind, &dir.name) {
                Some((attempt, id)) => Some((dir, attempt, id, flags)),
                None => {
                    tracing::warn!(
                        dir = dir.path(),
                        "ignoring a folder whose name is not a snapshot name"
                    );
                    None
                }
            }
        })
        .map(|(dir, attempt, checkpoint_id, (has_manifest, marked))| {
            let sizes = &sizes;
            async move {
                let manifest = if marked {
                    Err(unusable_reason(store, &dir).await?)
                } else if has_manifest {
                    check_manifest(store, &dir, attempt, checkpoint_id, sizes).await?
                } else {
                    Err("no manifest: the snapshot is incomplete or was aborted".to_owned())
                };
                Ok::<_, CatalogError>(SnapshotFacts {
                    attempt,
                    checkpoint_id,
                    kind: dir.kind,
                    dir: dir.path(),
                    manifest,
                })
            }
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await
        .map(unusable_through_references)
}

/// Incremental checkpoints reference files of earlier folders. A restore that found such a file
/// bad marked only the snapshot it restored; every other snapshot listing that file is unusable too
/// (the marker's reason names the file's location), so none of them is handed out to fail the same
/// way, one attempt each.
fn unusable_through_references(mut facts: Vec<SnapshotFacts>) -> Vec<SnapshotFacts> {
    let reasons: Vec<(String, String)> = facts
        .iter()
        .filter_map(|f| {
            f.manifest
                .as_ref()
                .err()
                .map(|r| (f.dir.clone(), r.clone()))
        })
        .filter(|(_, r)| r.starts_with(MARKED_PREFIX))
        .collect();
    if reasons.is_empty() {
        return facts;
    }
    for fact in &mut facts {
        let Ok(manifest) = &fact.manifest else {
            continue;
        };
        let bad = manifest.files().find_map(|file| {
            reasons
                .iter()
                .find(|(_, reason)| reason.contains(file.key.as_str()))
                .map(|(dir, _)| (file.key.clone(), dir.clone()))
        });
        if let Some((key, dir)) = bad {
            fact.manifest = Err(format!(
                "references {key}, which a restore of {dir} found missing or corrupt"
            ));
        }
    }
    facts
}

/// Records that `dir` failed verification (a CRC-32C or size mismatch, a missing file), so that every
/// later reader — the operator's shallow index too — skips it without downloading it again, and a
/// restart after a failed restore picks an older snapshot instead of failing the same way forever.
pub async fn mark_unusable(
    store: &dyn SnapshotStore,
    dir: &SnapshotDir,
    reason: &str,
) -> Result<(), CatalogError> {
    store
        .put(
            &SnapshotLayout::unusable_marker(dir),
            Bytes::from(reason.to_owned()),
        )
        .await?;
    Ok(())
}

/// How the reason of a folder with an unusable marker starts.
const MARKED_PREFIX: &str = "marked unusable by a restore that failed verification: ";

/// Why a marked folder is unusable (the marker's text). Outer error: the store failed (retry).
async fn unusable_reason(
    store: &dyn SnapshotStore,
    dir: &SnapshotDir,
) -> Result<String, CatalogError> {
    let reason = match store.get(&SnapshotLayout::unusable_marker(dir)).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(e) if e.is_not_found() => "reason deleted".to_owned(),
        Err(e) => return Err(e.into()),
    };
    Ok(format!("{MARKED_PREFIX}{reason}"))
}

/// Reads the manifest of `dir` and checks it against the folder name and the listed sizes.
/// Outer error: the store failed (retry); inner error: the snapshot is unusable.
async fn check_manifest(
    store: &dyn SnapshotStore,
    dir: &SnapshotDir,
    attempt: u64,
    checkpoint_id: u64,
    sizes: &HashMap<&str, u64>,
) -> Result<Result<Manifest, String>, CatalogError> {
    let manifest = match read_manifest(store, dir).await {
        Ok(m) => m,
        Err(CatalogError::BadManifest { source, .. }) => return Ok(Err(source.to_string())),
        // Deleted by retention between the listing and the read.
        Err(CatalogError::Store(e)) if e.is_not_found() => {
            return Ok(Err("no manifest: deleted while reading".into()))
        }
        Err(e) => return Err(e),
    };
    if (manifest.kind, manifest.attempt, manifest.checkpoint_id)
        != (dir.kind, attempt, checkpoint_id)
    {
        return Ok(Err(format!(
            "manifest describes {} {} of attempt {} but lies in {}",
            manifest.kind.as_str(),
            manifest.checkpoint_id,
            manifest.attempt,
            dir.path()
        )));
    }
    for file in manifest.files() {
        match sizes.get(file.key.as_str()) {
            None => {
                return Ok(Err(format!(
                    "state file {} is missing",
                    store.location(&file.key)
                )))
            }
            Some(&size) if size != file.size => {
                return Ok(Err(format!(
                    "state file {} has {size} bytes but the manifest says {}",
                    store.location(&file.key),
                    file.size
                )))
            }
            Some(_) => {}
        }
    }
    Ok(Ok(manifest))
}

/// Downloads every file of `manifest` and checks size and CRC-32C; the first failure is returned.
pub async fn verify_deep(
    store: &dyn SnapshotStore,
    manifest: &Manifest,
) -> Result<(), VerifyError> {
    futures::stream::iter(manifest.files())
        .map(|file| async move { read_state_file(store, file).await.map(drop) })
        .buffer_unordered(VERIFY_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Reads attempts and snapshots and picks what a new attempt should restore.
///
/// With [`VerifyLevel::Deep`], a chosen snapshot whose files fail verification is marked unusable
/// and the next one is tried; it then appears in `skipped` with the reason.
pub async fn find_restore_point(
    store: &dyn SnapshotStore,
    level: VerifyLevel,
) -> Result<RestoreDecision, CatalogError> {
    let attempts = read_attempts(store).await?;
    let mut snapshots = list_snapshots(store).await?;
    loop {
        let decision = select_restore(&attempts, &snapshots);
        let Some(chosen) = (level == VerifyLevel::Deep)
            .then_some(decision.chosen.as_ref())
            .flatten()
        else {
            return Ok(decision);
        };
        match verify_deep(store, &chosen.manifest).await {
            Ok(()) => return Ok(decision),
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(dir = chosen.dir, error = %e, "snapshot failed deep verification");
                let dir = chosen.dir.clone();
                if let Some((parsed, _, _)) = SnapshotLayout::parse_dir(&dir) {
                    if let Err(mark) = mark_unusable(store, &parsed, &e.to_string()).await {
                        tracing::warn!(dir, error = %mark, "could not mark the snapshot unusable");
                    }
                }
                if let Some(facts) = snapshots.iter_mut().find(|s| s.dir == dir) {
                    facts.manifest = Err(e.to_string());
                }
            }
        }
    }
}

/// Deletes a snapshot folder: the manifest first (so a partly deleted folder is never complete), then the rest.
///
/// `dir` must be a snapshot folder key (`checkpoints/<attempt>-<id>` or `savepoints/sp-<id>-<attempt>`).
pub async fn delete_snapshot_dir(store: &dyn SnapshotStore, dir: &str) -> Result<(), CatalogError> {
    let (parsed, _, _) = SnapshotLayout::parse_dir(dir)
        .ok_or_else(|| CatalogError::NotASnapshotDir(dir.to_owned()))?;
    let manifest = SnapshotLayout::manifest(&parsed);
    let keys: Vec<String> = store
        .list(&format!("{}/", parsed.path()))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    if keys.contains(&manifest) {
        store.delete(std::slice::from_ref(&manifest)).await?;
    }
    let rest: Vec<String> = keys.into_iter().filter(|k| *k != manifest).collect();
    if !rest.is_empty() {
        store.delete(&rest).await?;
    }
    Ok(())
}

/// Computes and executes the retention plan of a job (see [`retention_plan`]).
///
/// Run it where checkpoints complete (the job coordinator), after a checkpoint completed and
/// before the next one reuses shared files, passing in-flight folders and shared keys as protected.
pub async fn apply_retention(
    store: &dyn SnapshotStore,
    retained: usize,
    protected_dirs: &BTreeSet<String>,
    protected_keys: &BTreeSet<String>,
) -> Result<RetentionPlan, CatalogError> {
    let attempts = read_attempts(store).await?;
    let listing = store.list("").await?;
    let snapshots = facts_from_listing(store, &listing).await?;
    let shared_files: Vec<String> = listing
        .iter()
        .filter(|o| o.key.starts_with(SHARED))
        .map(|o| o.key.clone())
        .collect();
    let plan = retention_plan(&RetentionInput {
        attempts: &attempts,
        snapshots: &snapshots,
        retained,
        protected_dirs,
        protected_keys,
        shared_files: &shared_files,
    });
    for dir in &plan.delete_dirs {
        delete_snapshot_dir(store, dir).await?;
    }
    if !plan.delete_shared.is_empty() {
        store.delete(&plan.delete_shared).await?;
    }
    if !plan.delete_dirs.is_empty() || !plan.delete_shared.is_empty() {
        tracing::info!(
            dirs = plan.delete_dirs.len(),
            shared = plan.delete_shared.len(),
            "retention deleted old snapshots"
        );
    }
    Ok(plan)
}

/// Applies the savepoint history policy (see [`savepoint_history_plan`]) and returns the deleted folders.
/// Incomplete savepoint folders older than the newest complete savepoint are deleted too.
pub async fn apply_savepoint_history(
    store: &dyn SnapshotStore,
    max_count: usize,
    max_age_ms: Option<u64>,
    now_ms: u64,
) -> Result<Vec<String>, CatalogError> {
    let snapshots = list_snapshots(store).await?;
    let savepoints: Vec<&SnapshotFacts> = snapshots
        .iter()
        .filter(|s| s.kind == crate::SnapshotKind::Savepoint)
        .collect();
    let complete: Vec<(String, u64)> = savepoints
        .iter()
        .filter_map(|s| {
            s.manifest
                .as_ref()
                .ok()
                .map(|m| (s.dir.clone(), m.created_at_ms))
        })
        .collect();
    let mut delete = savepoint_history_plan(&complete, max_count, max_age_ms, now_ms);
    if let Some(newest) = savepoints
        .iter()
        .filter(|s| s.manifest.is_ok())
        .map(|s| s.checkpoint_id)
        .max()
    {
        delete.extend(
            savepoints
                .iter()
                .filter(|s| s.manifest.is_err() && s.checkpoint_id < newest)
                .map(|s| s.dir.clone()),
        );
    }
    for dir in &delete {
        delete_snapshot_dir(store, dir).await?;
    }
    Ok(delete)
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
