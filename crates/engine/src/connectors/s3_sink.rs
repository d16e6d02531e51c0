//! Exactly-once S3 sink with two-phase commit (as Flink's S3 FileSink), the S3 twin of
//! [`super::file_sink`]: same object names, same guarantee, only committed objects are visible.
//!
//! 1. Records of a subtask go to an in-progress part: a memory buffer that spills to a local temporary
//!    file once it holds a whole part. The record path touches memory and local disk only.
//! 2. Barrier (pre-commit): `CreateMultipartUpload` for the final key
//!    `<prefix>/part-<checkpoint id>-<subtask>`, then `UploadPart` of parts of [`PART_SIZE`] (the last
//!    one smaller; a small file is one part), **not** completed. The pending commit (bucket, key, upload
//!    id, part numbers and ETags, size, checkpoint id) goes into the operator's list state. An
//!    incomplete multipart upload is invisible, so nothing shows before the commit.
//! 3. `notify_checkpoint_complete`: `CompleteMultipartUpload`; the object appears at its final key.
//! 4. Restore: the pending commits of the restored (hence complete) checkpoint are completed.
//!    Completing twice (a zombie and its successor, or a retry) is harmless: when completing fails
//!    (`NoSuchUpload` on AWS; s3s-fs answers `AccessDenied` for an unknown upload) and the final
//!    object exists with the expected size, the commit happened before.
//! 5. Open after a restore: objects committed after the restore point are deleted (the replay writes
//!    them again). Each subtask deletes its own keys; subtask 0 also those of subtasks beyond the
//!    current parallelism (rescaled down).
//! 6. Uploads a killed attempt left incomplete are aborted at open by the next attempt, from the
//!    journal of open uploads each subtask keeps next to its output (`s3_sink/journal.rs`; one
//!    small object per subtask, rewritten at each pre-commit, deleted when the input ends).
//!
//! Blocking: `OperatorContext` carries no runtime handle and a snapshot is returned synchronously
//! (the task acknowledges the checkpoint right after uploading it), so the network calls run on a
//! small dedicated tokio runtime (2 threads, `streamjob-s3-sink`) while the task thread waits: the
//! uploads of step 2 at the barrier (as the file sink waits for fsync), the commits of steps 3-4 and
//! the rollback of step 5 (one request per object). Parts cannot be uploaded before the barrier: the
//! key names the checkpoint, known only then. The sink must not be driven from inside a tokio runtime.
//!
//! This file holds the operator; `s3_sink/output.rs` the S3 side (output, keys, listing, rollback,
//! errors, runtime), `s3_sink/upload.rs` the pre-commit and commit requests and
//! `s3_sink/journal.rs` the journal of open uploads.
//!
//! A worker killed between starting an upload and recording it in the journal leaves that upload
//! behind: give the bucket an `AbortIncompleteMultipartUpload` lifecycle rule as a backstop (longer
//! than a checkpoint takes to complete).

mod journal;
mod output;
mod upload;

#[cfg(test)]
mod tests;

use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;

pub use journal::{journal_key, parse_journal_key, Journal, JournalEntry};
pub use output::{object_key, parse_object_key, CommittedObject, S3Output, S3SinkError};
pub use streamjob_checkpoint::url::S3Options;
pub use upload::{PendingUpload, UploadedPart};

use crate::operator::{
    OperatorContext, OperatorError, OperatorSnapshot, Output, RestoredState, StreamOperator,
};
use crate::state::decode_entry;
use crate::types::{Barrier, EndOfStream};
use output::block_on;
use upload::{complete_all, upload_parts, PartSource, Spill};

/// S3's smallest part (every part but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Part size of the uploads (also the in-memory buffer beyond which records spill to a local file).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at the same time.
const PART_CONCURRENCY: usize = 4;
/// How long a commit waits for the object of an upload that someone else is completing.
const GONE_PATIENCE: Duration = Duration::from_secs(2);

/// The part being written: a memory buffer, spilled to a local file beyond one part.
struct InProgress {
    buffer: Vec<u8>,
    spill: Option<Spill>,
    records: u64,
}

/// The sink operator of one subtask; `format` renders one record as one line.
pub struct S3Sink<T, F> {
    output: S3Output,
    format: F,
    part_size: usize,
    subtask: u32,
    attempt: u64,
    operator_id: String,
    current: Option<InProgress>,
    pending: Vec<PendingUpload>,
    /// The input ended: once nothing is pending, the journal goes.
    ended: bool,
    line: String,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<T, F: Fn(&T, &mut String) + Send> S3Sink<T, F> {
    /// Parts (and the spill threshold) of `bytes`, at least [`MIN_PART_SIZE`].
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    fn err(&self) -> impl FnOnce(S3SinkError) -> OperatorError + '_ {
        move |e| e.into_operator(&self.operator_id)
    }

    /// Pre-commit: upload the in-progress part as an incomplete multipart upload.
    fn pre_commit(&mut self, checkpoint_id: u64) -> Result<Option<PendingUpload>, S3SinkError> {
        let Some(mut current) = self.current.take() else {
            return Ok(None);
        };
        if current.records == 0 {
            return Ok(None);
        }
        let source = match current.spill.as_mut() {
            Some(spill) => {
                spill.append(&current.buffer)?;
                PartSource::File(spill)
            }
            None => PartSource::Memory(Bytes::from(std::mem::take(&mut current.buffer))),
        };
        let client = self.output.client()?;
        let bucket = self.output.bucket().to_owned();
        let key = object_key(self.output.prefix(), checkpoint_id, self.subtask);
        let location = format!("s3://{bucket}/{key}");
        let created = block_on(
            client
                .create_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .send(),
        )?
        .map_err(|e| S3SinkError::request("start a multipart upload of", &location, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| S3SinkError::Request {
                op: "start a multipart upload of",
                location: location.clone(),
                detail: "the server returned no upload id".into(),
            })?
            .to_owned();
        let size = source.len();
        let mut upload = PendingUpload {
            checkpoint_id,
            bucket,
            key,
            upload_id,
            parts: Vec::new(),
            size,
        };
        // Journal first, parts then: a killed worker's upload is found and aborted by the next
        // attempt (the journal lists every upload not completed yet, this one included).
        let uploaded = self.journal_with(&upload).and_then(|()| {
            upload_parts(
                &client,
                &upload.bucket,
                &upload.key,
                &upload.upload_id,
                &source,
                self.part_size as u64,
            )
        });
        match uploaded {
            Ok(parts) => {
                upload.parts = parts;
                Ok(Some(upload))
            }
            Err(e) => {
                // Best effort: an abandoned upload only costs storage until a lifecycle rule.
                let aborted = block_on(
                    client
                        .abort_multipart_upload()
                        .bucket(&upload.bucket)
                        .key(&upload.key)
                        .upload_id(&upload.upload_id)
                        .send(),
                );
                if let Ok(Err(abort)) = aborted {
                    tracing::warn!(object = location, error = %DisplayErrorContext(&abort), "failed to abort a multipart upload");
                }
                Err(e)
            }
        }
    }

    /// Deletes this subtask's journal once the input ended and every upload is completed.
    fn delete_journal_if_done(&self) -> Result<(), OperatorError> {
        if !self.ended || !self.pending.is_empty() {
            return Ok(());
        }
        self.output
            .write_journal(self.attempt, self.subtask, &[])
            .map_err(self.err())
    }

    /// Rewrites this subtask's journal: the pending uploads and `new`.
    fn journal_with(&self, new: &PendingUpload) -> Result<(), S3SinkError> {
        let mut open = self.pending.clone();
        open.push(new.clone());
        self.output.write_journal(self.attempt, self.subtask, &open)
    }
}
impl<T: Send, F: Fn(&T, &mut String) + Send> StreamOperator<T, ()> for S3Sink<T, F> {
    fn restore(
        &mut self,
        ctx: &OperatorContext,
        state: RestoredState,
    ) -> Result<(), OperatorError> {
        self.operator_id = ctx.operator_id.clone();
        let uploads = state
            .list
            .iter()
            .map(|entry| {
                decode_entry::<PendingUpload>(entry).map_err(|e| OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: format!("{e} (was the snapshot taken with output to a folder?)"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if uploads.is_empty() {
            return Ok(());
        }
        // Everything in a restored snapshot belongs to a complete checkpoint: commit it now.
        let client = self.output.client().map_err(self.err())?;
        complete_all(&client, &uploads).map_err(self.err())
    }

    fn open(&mut self, ctx: &OperatorContext) -> Result<(), OperatorError> {
        self.subtask = ctx.subtask;
        self.attempt = ctx.attempt;
        self.operator_id = ctx.operator_id.clone();
        // Roll back output committed after the restore point (a skipped corrupt checkpoint, or an
        // attempt that started over): the replay writes it again.
        let keep_up_to = match ctx.restored_checkpoint {
            Some(id) => id,
            None if ctx.attempt > 1 => 0,
            None => return Ok(()),
        };
        self.output
            .roll_back(keep_up_to, ctx.subtask, ctx.parallelism)
            .map_err(self.err())?;
        let aborted = self
            .output
            .abort_orphaned_uploads(keep_up_to, ctx.attempt, ctx.subtask, ctx.parallelism)
            .map_err(self.err())?;
        if aborted > 0 {
            tracing::info!(
                operator = self.operator_id,
                subtask = self.subtask,
                aborted,
                restored_checkpoint = keep_up_to,
                "aborted multipart uploads earlier attempts left incomplete"
            );
        }
        Ok(())
    }

    fn process_batch(&mut self, batch: Vec<T>, _out: &mut Output<()>) -> Result<(), OperatorError> {
        let current = self.current.get_or_insert_with(|| InProgress {
            buffer: Vec::new(),
            spill: None,
            records: 0,
        });
        for record in &batch {
            self.line.clear();
            (self.format)(record, &mut self.line);
            self.line.push('\n');
            current.buffer.extend_from_slice(self.line.as_bytes());
        }
        current.records += batch.len() as u64;
        if current.buffer.len() >= self.part_size {
            if current.spill.is_none() {
                current.spill = Some(
                    Spill::create(&self.operator_id, self.subtask)
                        .map_err(|e| e.into_operator(&self.operator_id))?,
                );
            }
            if let Some(spill) = current.spill.as_mut() {
                spill
                    .append(&current.buffer)
                    .map_err(|e| e.into_operator(&self.operator_id))?;
            }
            current.buffer.clear();
        }
        Ok(())
    }

    fn snapshot(&mut self, barrier: &Barrier) -> Result<OperatorSnapshot, OperatorError> {
        if let Some(upload) = self.pre_commit(barrier.id).map_err(self.err())? {
            self.pending.push(upload);
        }
        OperatorSnapshot::from_list(&self.operator_id, &self.pending)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), OperatorError> {
        if !self
            .pending
            .iter()
            .any(|p| p.checkpoint_id <= checkpoint_id)
        {
            return Ok(());
        }
        let client = self.output.client().map_err(self.err())?;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.checkpoint_id <= checkpoint_id);
        self.pending = waiting;
        if let Err(e) = complete_all(&client, &ready) {
            // Keep them: completing again is harmless, and the attempt fails now anyway.
            self.pending.extend(ready);
            return Err(e.into_operator(&self.operator_id));
        }
        self.delete_journal_if_done()
    }

    fn end_of_input(
        &mut self,
        _end: EndOfStream,
        _out: &mut Output<()>,
    ) -> Result<(), OperatorError> {
        // Sources end only after the final (or stop) checkpoint: nothing is left to write.
        self.ended = true;
        self.delete_journal_if_done()?;
        if let Some(current) = self.current.take() {
            if current.records > 0 {
                tracing::warn!(
                    operator = self.operator_id,
                    records = current.records,
                    "records after the last barrier are dropped"
                );
            }
        }
        Ok(())
    }
}
