//! The asynchronous part of a task's snapshots: one upload queue per task, worked off in order on
//! the job's tokio runtime, and the ledger of files this task uploaded for its checkpoints. The
//! task thread hands over each operator's snapshot as owned blobs; laying them out as a state file
//! (one buffer, checksummed) happens here, on a blocking thread of the runtime, so the task does not
//! wait for that copy.
//!
//! In order, because an incremental checkpoint references files of earlier checkpoints of the same
//! task: before it acknowledges, every referenced file must have uploaded (it is in the ledger).
//! If one did not, the checkpoint is declined; the coordinator aborts it and the operators start
//! their chains over (see `incremental.rs`), so no manifest ever lists a file that is not there.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use crossbeam_channel::Sender;
use streamjob_checkpoint::manifest::FileRef;
use streamjob_checkpoint::state_file::write_state_file;
use streamjob_checkpoint::store::SnapshotStore;
use tokio::sync::mpsc;

use crate::config::SnapshotCompression;
use crate::control::{CoordinatorEvent, TaskAck, TaskId};
use crate::operator::StateFileBody;

/// An earlier file a snapshot references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BaseRef {
    /// A file this task uploaded for an earlier checkpoint: it must be in the ledger.
    Uploaded(String),
    /// A file of the restored checkpoint, verified when it was restored.
    Adopted(FileRef),
}

/// One operator's part of a snapshot upload.
pub(crate) struct OperatorUpload {
    /// Operator id.
    pub operator_id: String,
    /// Earlier files this snapshot references, oldest first.
    pub base: Vec<BaseRef>,
    /// This snapshot's own file, if it writes one: its key and content (laid out here).
    pub own: Option<(String, StateFileBody)>,
}

/// A whole task snapshot to upload and acknowledge.
pub(crate) struct UploadJob {
    pub checkpoint_id: u64,
    /// Files of savepoints are never referenced later: they stay out of the ledger.
    pub is_checkpoint: bool,
    pub task: TaskId,
    pub key_groups: Range<u32>,
    pub operators: Vec<OperatorUpload>,
    /// The synchronous part of the snapshot on the task thread, in microseconds.
    pub sync_micros: u64,
}

/// The upload queue of one task.
pub(crate) struct UploadQueue {
    jobs: mpsc::UnboundedSender<UploadJob>,
}

impl UploadQueue {
    /// Start the queue's worker on `runtime`; it ends when the queue is dropped.
    pub fn start(
        store: Arc<dyn SnapshotStore>,
        runtime: &tokio::runtime::Handle,
        events: Sender<CoordinatorEvent>,
        compression: SnapshotCompression,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<UploadJob>();
        runtime.spawn(async move {
            let mut ledger: HashMap<String, FileRef> = HashMap::new();
            while let Some(mut job) = rx.recv().await {
                let event = match upload(store.as_ref(), &mut ledger, &mut job, compression).await {
                    Ok((files, bytes)) => CoordinatorEvent::Ack(TaskAck {
                        checkpoint_id: job.checkpoint_id,
                        task: job.task,
                        key_groups: job.key_groups.clone(),
                        files,
                        bytes,
                        sync_micros: job.sync_micros,
                    }),
                    Err(reason) => CoordinatorEvent::Declined {
                        checkpoint_id: job.checkpoint_id,
                        task: job.task,
                        reason,
                    },
                };
                // The coordinator outlives the tasks of its attempt; a closed channel: it is gone.
                let _ = events.send(event);
            }
        });
        Self { jobs: tx }
    }

    /// Queue a snapshot; its acknowledgement (or decline) goes to the coordinator when done.
    pub fn push(&self, job: UploadJob) -> Result<(), String> {
        self.jobs
            .send(job)
            .map_err(|_| "the upload queue is gone (the job is shutting down)".to_string())
    }
}

/// Upload one snapshot (its own files are laid out first, on a blocking thread: that copies every
/// blob once); returns the files to acknowledge (per operator: referenced ones first, in order,
/// then its own) and the bytes uploaded.
async fn upload(
    store: &dyn SnapshotStore,
    ledger: &mut HashMap<String, FileRef>,
    job: &mut UploadJob,
    compression: SnapshotCompression,
) -> Result<(Vec<(String, FileRef)>, u64), String> {
    let mut files = Vec::new();
    let mut bytes = 0;
    for op in &mut job.operators {
        for base in &op.base {
            let key = match base {
                BaseRef::Adopted(file) => {
                    files.push((op.operator_id.clone(), file.clone()));
                    continue;
                }
                BaseRef::Uploaded(key) => key,
            };
            match ledger.get(key) {
                Some(file) => files.push((op.operator_id.clone(), file.clone())),
                None => {
                    return Err(format!(
                        "incremental checkpoint {} builds on {key}, which this task did not upload (its checkpoint failed); the next checkpoint writes full state",
                        job.checkpoint_id
                    ))
                }
            }
        }
        if let Some((key, body)) = &mut op.own {
            // The file's framing around the state's own buffers: nothing large is copied. Compressing
            // takes CPU time in proportion to the state: off the runtime's threads.
            let contents = body.contents();
            let body = std::mem::take(body);
            let body = match compression {
                SnapshotCompression::None => body.encode(compression),
                _ => tokio::task::spawn_blocking(move || body.encode(compression))
                    .await
                    .map_err(|e| format!("compressing the state file {key} failed: {e}"))?,
            };
            bytes += body.len() as u64;
            let mut file = write_state_file(store, key, body)
                .await
                .map_err(|e| format!("failed to upload {key}: {e}"))?;
            file.contents = Some(contents);
            if job.is_checkpoint {
                ledger.insert(key.clone(), file.clone());
            }
            files.push((op.operator_id.clone(), file));
        }
    }
    if job.is_checkpoint {
        // Later checkpoints reference at most what this one does (chains only move forward).
        ledger.retain(|key, _| files.iter().any(|(_, f)| &f.key == key));
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use streamjob_checkpoint::manifest::FileContents;
    use streamjob_checkpoint::memory_store::MemoryStore;

    fn job(id: u64, base: &[&str], own: Option<&str>) -> UploadJob {
        UploadJob {
            checkpoint_id: id,
            is_checkpoint: true,
            task: TaskId {
                vertex: 0,
                subtask: 0,
            },
            key_groups: 0..4,
            sync_micros: 0,
            operators: vec![OperatorUpload {
                operator_id: "op".into(),
                base: base
                    .iter()
                    .map(|s| BaseRef::Uploaded(s.to_string()))
                    .collect(),
                own: own.map(|k| {
                    (
                        k.to_string(),
                        StateFileBody {
                            keyed: vec![
                                (0, Bytes::from_static(b"ab")),
                                (3, Bytes::from_static(b"cd")),
                            ],
                            ..StateFileBody::default()
                        },
                    )
                }),
            }],
        }
    }

    #[tokio::test]
    async fn references_resolve_from_the_ledger_and_missing_ones_decline() {
        let store = MemoryStore::default();
        let mut ledger = HashMap::new();
        let (files, bytes) = upload(
            &store,
            &mut ledger,
            &mut job(1, &[], Some("c/1/op-0.state")),
            SnapshotCompression::Lz4,
        )
        .await
        .unwrap();
        assert_eq!((files.len(), bytes), (1, files[0].1.size));
        assert!(bytes > 4, "the encoded file, not the blobs alone");
        assert_eq!(
            files[0].1.contents,
            Some(FileContents::new([0, 3], 0)),
            "the manifest learns what the file holds"
        );
        let (files, _) = upload(
            &store,
            &mut ledger,
            &mut job(2, &["c/1/op-0.state"], Some("c/2/op-0.state")),
            SnapshotCompression::None,
        )
        .await
        .unwrap();
        let keys: Vec<&str> = files.iter().map(|(_, f)| f.key.as_str()).collect();
        assert_eq!(
            keys,
            ["c/1/op-0.state", "c/2/op-0.state"],
            "base first, then own"
        );
        let err = upload(
            &store,
            &mut ledger,
            &mut job(3, &["c/9/op-0.state"], None),
            SnapshotCompression::None,
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("c/9/op-0.state") && err.contains("full state"),
            "{err}"
        );
        // Chain moved on to 2 only: 1 leaves the ledger.
        upload(
            &store,
            &mut ledger,
            &mut job(4, &["c/2/op-0.state"], None),
            SnapshotCompression::None,
        )
        .await
        .unwrap();
        assert!(upload(
            &store,
            &mut ledger,
            &mut job(5, &["c/1/op-0.state"], None),
            SnapshotCompression::None
        )
        .await
        .is_err());
    }
}
