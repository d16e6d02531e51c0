//! Pre-commit and commit requests of the S3 sink: uploading a part's bytes (from memory or the
//! local spill file) as an incomplete multipart upload, and completing it idempotently.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::output::{block_on, part_ranges, S3SinkError};
use super::{GONE_PATIENCE, PART_CONCURRENCY};

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    /// Part number (1-based).
    pub number: i32,
    /// ETag the server returned.
    pub etag: String,
}

/// A pre-committed (uploaded, not completed) object waiting for its checkpoint to complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpload {
    /// Checkpoint whose barrier closed the object.
    pub checkpoint_id: u64,
    /// Bucket.
    pub bucket: String,
    /// Final key.
    pub key: String,
    /// Multipart upload id.
    pub upload_id: String,
    /// The uploaded parts, by number.
    pub parts: Vec<UploadedPart>,
    /// Size of the object in bytes.
    pub size: u64,
}

impl PendingUpload {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Completes the upload; `Ok(false)` when it had been completed before (by anyone).
    pub(super) async fn complete(&self, client: &Client) -> Result<bool, S3SinkError> {
        let parts = self
            .parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        let completed = client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        let err = match completed {
            Ok(_) => return Ok(true),
            Err(err) => err,
        };
        // Completed before (a zombie, our successor, or a retry whose answer was lost)? A completion
        // running right now may not have written the object yet: look again a few times.
        let location = self.location();
        let unknown_upload = matches!(err.code(), Some("NoSuchUpload" | "AccessDenied"));
        let mut delay = Duration::from_millis(50);
        let found = loop {
            let head = client
                .head_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .send()
                .await;
            let found = match head {
                Ok(out) if out.content_length() == Some(self.size as i64) => return Ok(false),
                Ok(out) => format!(
                    "has {} bytes instead of {}",
                    out.content_length().unwrap_or(-1),
                    self.size
                ),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                    "does not exist".to_owned()
                }
                Err(e) => return Err(S3SinkError::request("check", &location, e)),
            };
            if !unknown_upload || delay > GONE_PATIENCE {
                break found;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        };
        if unknown_upload {
            Err(S3SinkError::UploadGone {
                location,
                checkpoint_id: self.checkpoint_id,
                found,
            })
        } else {
            Err(S3SinkError::request(
                "complete the multipart upload of",
                &location,
                err,
            ))
        }
    }
}

/// Completes `uploads` concurrently (blocks).
pub(super) fn complete_all(client: &Client, uploads: &[PendingUpload]) -> Result<(), S3SinkError> {
    let results = block_on(futures::future::join_all(
        uploads.iter().map(|u| u.complete(client)),
    ))?;
    for (upload, result) in uploads.iter().zip(results) {
        let fresh = result?;
        tracing::debug!(object = upload.location(), fresh, "committed");
    }
    Ok(())
}

/// A local temporary file, removed on drop.
pub(super) struct Spill {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Spill {
    pub(super) fn create(operator_id: &str, subtask: u32) -> Result<Self, S3SinkError> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let operator: String = operator_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "streamjob-s3-sink-{}-{operator}-{subtask}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| S3SinkError::Spill {
                op: "create",
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, file, len: 0 })
    }

    pub(super) fn append(&mut self, bytes: &[u8]) -> Result<(), S3SinkError> {
        self.file
            .write_all(bytes)
            .map_err(|source| S3SinkError::Spill {
                op: "write",
                path: self.path.clone(),
                source,
            })?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn read(&self, range: Range<u64>) -> Result<Bytes, S3SinkError> {
        let error = |source| S3SinkError::Spill {
            op: "read",
            path: self.path.clone(),
            source,
        };
        let mut file = &self.file;
        file.seek(SeekFrom::Start(range.start)).map_err(error)?;
        let mut buf = vec![0; (range.end - range.start) as usize];
        file.read_exact(&mut buf).map_err(error)?;
        Ok(Bytes::from(buf))
    }
}

/// The bytes of a pre-committed part.
pub(super) enum PartSource<'a> {
    Memory(Bytes),
    File(&'a Spill),
}

impl PartSource<'_> {
    pub(super) fn len(&self) -> u64 {
        match self {
            PartSource::Memory(bytes) => bytes.len() as u64,
            PartSource::File(spill) => spill.len,
        }
    }
    fn read(&self, range: Range<u64>) -> Result<Bytes, S3SinkError> {
        match self {
            PartSource::Memory(bytes) => Ok(bytes.slice(range.start as usize..range.end as usize)),
            PartSource::File(spill) => spill.read(range),
        }
    }
}

/// Uploads `source` as the parts of `upload_id`, [`PART_CONCURRENCY`] at a time (blocks).
pub(super) fn upload_parts(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    source: &PartSource<'_>,
    part_size: u64,
) -> Result<Vec<UploadedPart>, S3SinkError> {
    let location = format!("s3://{bucket}/{key}");
    let location = location.as_str();
    let uploads = futures::stream::iter(part_ranges(source.len(), part_size))
        .map(|(number, range)| async move {
            // Local reads of at most one part; the runtime is the sink's own.
            let body = source.read(range)?;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| S3SinkError::request("upload a part of", location, e))?;
            let etag = out.e_tag().ok_or_else(|| S3SinkError::Request {
                op: "upload a part of",
                location: location.to_owned(),
                detail: format!("the server returned no ETag for part {number}"),
            })?;
            Ok::<_, S3SinkError>(UploadedPart {
                number,
                etag: etag.to_owned(),
            })
        })
        .buffered(PART_CONCURRENCY)
        .try_collect::<Vec<_>>();
    block_on(uploads)?
}
