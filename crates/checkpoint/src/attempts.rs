//! Attempt records: written create-if-absent when a job attempt starts; the basis of fencing older attempts.
//!
//! `attempts/<attempt>.json` says which snapshot the attempt restored from. Two writers for the
//! same attempt: the second gets [`AttemptError::AttemptTaken`]. Restore decisions use the records
//! to ignore checkpoints that an older (zombie) attempt completed after a newer one started.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::layout::{SnapshotLayout, ATTEMPTS};
use crate::store::{PutOutcome, SnapshotStore, StoreError};

/// Errors of writing or reading attempt records.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Another process already started this attempt: this one is fenced and must not run.
    #[error("attempt {attempt} was already started by another process ({location}); this process is fenced and must stop")]
    AttemptTaken {
        /// The attempt.
        attempt: u64,
        /// URL of the existing record.
        location: String,
    },
    /// A newer attempt exists: starting an older one would run a zombie.
    #[error("cannot start attempt {attempt}: attempt {newest} already exists; start attempt {next} instead", next = newest + 1)]
    Superseded {
        /// The attempt that was asked for.
        attempt: u64,
        /// The newest existing attempt.
        newest: u64,
    },
    /// A record cannot be parsed.
    #[error("attempt record {location} is corrupt ({reason}); inspect it and delete it only if no worker of that attempt can still run")]
    Corrupt {
        /// URL of the record.
        location: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error("failed to access attempt records: {0}")]
    Store(#[from] StoreError),
}

/// Which snapshot an attempt restored from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// Attempt that took the snapshot.
    pub attempt: u64,
    /// Checkpoint id of the snapshot; the new attempt numbers its checkpoints from `checkpoint_id + 1`.
    pub checkpoint_id: u64,
    /// Full URL of the snapshot folder.
    pub location: String,
}

/// The record of one job attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// Attempt number (1, 2, ...).
    pub attempt: u64,
    /// When the attempt started (unix ms).
    pub started_at_ms: u64,
    /// The snapshot it restored from; `None` when it started with empty state.
    pub restored_from: Option<SnapshotRef>,
}

impl AttemptRecord {
    /// The checkpoint id this attempt continues from (0 when it started empty): checkpoints of
    /// older attempts with a larger id were written after this attempt started.
    pub fn restore_point(&self) -> u64 {
        self.restored_from.as_ref().map_or(0, |r| r.checkpoint_id)
    }
}

/// Records the start of `record.attempt`. Fails if that attempt, or a newer one, already exists.
pub async fn start_attempt(
    store: &dyn SnapshotStore,
    record: &AttemptRecord,
) -> Result<(), AttemptError> {
    if let Some(newest) = newest_attempt(store).await? {
        if newest > record.attempt {
            return Err(AttemptError::Superseded {
                attempt: record.attempt,
                newest,
            });
        }
    }
    let key = SnapshotLayout::attempt_record(record.attempt);
    let body = serde_json::to_vec_pretty(record).map_err(|e| AttemptError::Corrupt {
        location: store.location(&key),
        reason: format!("cannot encode: {e}"),
    })?;
    match store.put_if_absent(&key, Bytes::from(body)).await? {
        PutOutcome::Created => Ok(()),
        PutOutcome::AlreadyExists => Err(AttemptError::AttemptTaken {
            attempt: record.attempt,
            location: store.location(&key),
        }),
    }
}

/// The newest attempt that has a record (from the listing only; records are not read).
pub async fn newest_attempt(store: &dyn SnapshotStore) -> Result<Option<u64>, StoreError> {
    let listed = store.list(ATTEMPTS).await?;
    Ok(listed
        .iter()
        .filter_map(|o| SnapshotLayout::parse_attempt_record(&o.key))
        .max())
}

/// Every attempt record, sorted by attempt.
pub async fn read_attempts(store: &dyn SnapshotStore) -> Result<Vec<AttemptRecord>, AttemptError> {
    let mut records = Vec::new();
    for object in store.list(ATTEMPTS).await? {
        let Some(attempt) = SnapshotLayout::parse_attempt_record(&object.key) else {
            tracing::warn!(
                key = object.key,
                "ignoring an unexpected object in attempts/"
            );
            continue;
        };
        let location = store.location(&object.key);
        let body = match store.get(&object.key).await {
            Ok(body) => body,
            // Deleted between list and get: nothing to fence with.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let record: AttemptRecord =
            serde_json::from_slice(&body).map_err(|e| AttemptError::Corrupt {
                location: location.clone(),
                reason: e.to_string(),
            })?;
        if record.attempt != attempt {
            return Err(AttemptError::Corrupt {
                location,
                reason: format!(
                    "it says attempt {} but its name says {attempt}",
                    record.attempt
                ),
            });
        }
        records.push(record);
    }
    records.sort_by_key(|r| r.attempt);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::MemoryStore;

    fn record(attempt: u64, restored: Option<u64>) -> AttemptRecord {
        AttemptRecord {
            attempt,
            started_at_ms: 1000 * attempt,
            restored_from: restored.map(|id| SnapshotRef {
                attempt: attempt - 1,
                checkpoint_id: id,
                location: format!("loc-{id}"),
            }),
        }
    }

    #[tokio::test]
    async fn second_writer_is_fenced() {
        let store = Arc::new(MemoryStore::new());
        let first = record(1, None);
        let (a, b) = tokio::join!(
            start_attempt(store.as_ref(), &first),
            start_attempt(store.as_ref(), &first)
        );
        let taken = [a, b]
            .into_iter()
            .filter(|r| matches!(r, Err(AttemptError::AttemptTaken { attempt: 1, .. })))
            .count();
        assert_eq!(taken, 1);
        start_attempt(store.as_ref(), &record(2, Some(5)))
            .await
            .unwrap();
        let err = start_attempt(store.as_ref(), &record(1, None))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AttemptError::Superseded {
                    attempt: 1,
                    newest: 2
                }
            ),
            "{err}"
        );
        assert_eq!(
            read_attempts(store.as_ref()).await.unwrap(),
            vec![record(1, None), record(2, Some(5))]
        );
        assert_eq!(record(2, Some(5)).restore_point(), 5);
        assert_eq!(record(1, None).restore_point(), 0);
    }

    #[tokio::test]
    async fn corrupt_records_are_reported() {
        let store = MemoryStore::new();
        store
            .put("attempts/000003.json", Bytes::from_static(b"{\"attempt\":"))
            .await
            .unwrap();
        let err = read_attempts(&store).await.unwrap_err();
        assert!(
            matches!(err, AttemptError::Corrupt { .. }) && err.to_string().contains("000003.json"),
            "{err}"
        );

        let store = MemoryStore::new();
        let body = serde_json::to_vec(&record(4, None)).unwrap();
        store
            .put("attempts/000003.json", Bytes::from(body))
            .await
            .unwrap();
        assert!(matches!(
            read_attempts(&store).await,
            Err(AttemptError::Corrupt { .. })
        ));
    }
}
