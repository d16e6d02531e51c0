//! `S3Store`: the [`SnapshotStore`] on S3 (or an S3-compatible server) via aws-sdk-s3.
//!
//! Retries with backoff come from the SDK (standard mode, 5 attempts); this file maps SDK errors to
//! [`StoreError`] with the object's URL and a transient/permanent class.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};

use crate::s3_config::{build_client, S3Config};
use crate::segments::Segments;
use crate::store::{
    join_url, validate_key, validate_prefix, ObjectInfo, PutOutcome, SnapshotStore, StoreError,
};

/// Bodies larger than this are uploaded with a multipart upload.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
/// Part size of multipart uploads.
pub const MULTIPART_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at the same time.
const PART_CONCURRENCY: usize = 4;
/// Keys per DeleteObjects call (the S3 maximum).
const DELETE_BATCH: usize = 1000;
/// A [`SnapshotStore`] on an S3 bucket under a key prefix.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Normalized prefix without leading/trailing '/', "" for the bucket root.
    prefix: String,
    url: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds a client for `config` (see [`S3Config`] for retries and timeouts).
    pub async fn connect(config: S3Config) -> Result<Self, StoreError> {
        let client = build_client(&config).await?;
        Ok(Self::from_client(client, config.bucket, &config.prefix))
    }

    /// Wraps an existing client (custom HTTP client or interceptors).
    pub fn from_client(client: Client, bucket: impl Into<String>, prefix: &str) -> Self {
        let bucket = bucket.into();
        let prefix = prefix.trim_matches('/').to_owned();
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        Self {
            client,
            bucket,
            prefix,
            url,
        }
    }

    /// The SDK client, e.g. to create the bucket in tests.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    async fn put_multipart(&self, key: &str, body: Segments) -> Result<(), StoreError> {
        let full = self.full_key(key);
        let location = self.location(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| map_sdk_error("start a multipart upload of", key, &location, e))?;
        let upload_id = created.upload_id().ok_or_else(|| StoreError::Backend {
            op: "start a multipart upload of",
            location: location.clone(),
            status: None,
            detail: "the server returned no upload id".into(),
            transient: false,
        })?;

        let parts = upload_parts(
            &self.client,
            &self.bucket,
            &full,
            upload_id,
            &location,
            body,
        )
        .await;
        let completed = match parts {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map_sdk_error("complete the multipart upload of", key, &location, e)),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Best effort: an abandoned upload only costs storage until the bucket's lifecycle rule.
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload_id)
                .send();
            if let Err(e) = aborted.await {
                tracing::warn!(location, error = %DisplayErrorContext(&e), "failed to abort a multipart upload");
            }
        }
        completed
    }

    /// One conditional PUT; `Ok(None)` on 409 ConditionalRequestConflict (a concurrent conditional write).
    async fn try_put_if_absent(
        &self,
        key: &str,
        body: Bytes,
    ) -> Result<Option<PutOutcome>, StoreError> {
        let location = self.location(key);
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .if_none_match("*")
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Some(PutOutcome::Created)),
            Err(e) => match status_of(&e) {
                Some(412) => Ok(Some(PutOutcome::AlreadyExists)),
                Some(409) => Ok(None),
                _ => Err(map_sdk_error("create", key, &location, e)),
            },
        }
    }
}

async fn upload_parts(
    client: &Client,
    bucket: &str,
    full_key: &str,
    upload_id: &str,
    location: &str,
    body: Segments,
) -> Result<Vec<CompletedPart>, StoreError> {
    let chunks = (0..body.len())
        .step_by(MULTIPART_PART_SIZE)
        .enumerate()
        .map(|(i, start)| {
            let end = (start + MULTIPART_PART_SIZE).min(body.len());
            // A part within one of the body's buffers shares it; one that spans several is
            // copied, a part at a time (at most PART_CONCURRENCY parts in memory).
            (i as i32 + 1, body.range(start..end))
        });
    futures::stream::iter(chunks)
        .map(|(number, chunk)| async move {
            let len = chunk.len() as i64;
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len)
                .body(ByteStream::from(chunk))
                .customize()
                .disable_payload_signing() // see `put`
                .send()
                .await
                .map_err(|e| map_sdk_error("upload a part of", full_key, location, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        })
        .buffered(PART_CONCURRENCY)
        .try_collect()
        .await
}

/// HTTP status of a failed call, when the server answered.
fn status_of<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// A failure while reading an object's body.
fn body_error(location: &str, e: aws_sdk_s3::primitives::ByteStreamError) -> StoreError {
    let detail = DisplayErrorContext(&e).to_string();
    StoreError::Backend {
        op: "read",
        location: location.to_string(),
        status: None,
        // The SDK checks the body against the checksum stored with the object: a mismatch means
        // the stored bytes changed (corruption at rest), which no retry fixes. Anything else (a
        // reset, a timeout mid-body) may pass on a retry.
        transient: !is_body_checksum_mismatch(&detail),
        detail,
    }
}

/// Whether a body error (its full display chain) is the SDK's response checksum validation failing.
fn is_body_checksum_mismatch(detail: &str) -> bool {
    detail.to_ascii_lowercase().contains("checksum mismatch")
}

/// Maps an SDK error to a [`StoreError`] carrying the URL and a transient/permanent class.
fn map_sdk_error<E>(op: &'static str, key: &str, location: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = status_of(&err);
    let code = err.code().unwrap_or_default().to_owned();
    let detail = match (status, err.message()) {
        (Some(s), Some(m)) => format!("HTTP {s} {code}: {m}"),
        (Some(s), None) => format!("HTTP {s} {code}"),
        (None, _) => DisplayErrorContext(&err).to_string(),
    };
    let location = location.to_owned();
    if status == Some(404) && matches!(code.as_str(), "NoSuchKey" | "NotFound" | "") {
        return StoreError::NotFound {
            key: key.to_owned(),
            location,
        };
    }
    if status == Some(403)
        || matches!(
            code.as_str(),
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "ExpiredToken"
        )
    {
        return StoreError::Denied { location, detail };
    }
    let transient = match &err {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(f) => f.is_io() || f.is_timeout() || f.is_other(),
        SdkError::ResponseError(_) | SdkError::ServiceError(_) => {
            matches!(status, Some(s) if s >= 500 || s == 429 || s == 408)
                || matches!(
                    code.as_str(),
                    "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                )
        }
        _ => false,
    };
    let detail = if code == "NoSuchBucket" {
        format!("{detail}; create the bucket or fix its name")
    } else {
        detail
    };
    StoreError::Backend {
        op,
        location,
        status,
        detail,
        transient,
    }
}

#[async_trait]
impl SnapshotStore for S3Store {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let location = self.location(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| map_sdk_error("read", key, &location, e))?;
        // A body that arrives in one chunk is returned as is. Otherwise each chunk is copied into
        // one buffer of the object's size as it arrives and dropped, so the HTTP client reuses its
        // read buffer: a restore touches fresh memory once per byte, not twice (holding every
        // chunk until the end made the client allocate the whole object anew).
        let size_hint = out
            .content_length
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let mut body = out.body;
        let mut only: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| body_error(&location, e))?
        {
            if let Some(first) = only.take() {
                joined.reserve(size_hint.max(first.len() + chunk.len()));
                joined.extend_from_slice(&first);
            }
            if joined.is_empty() {
                only = Some(chunk);
            } else {
                joined.extend_from_slice(&chunk);
            }
        }
        Ok(only.unwrap_or_else(|| joined.freeze()))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        validate_key(key)?;
        if body.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(key, Segments::from(body)).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            // Signing would hash every byte of a state file with SHA-256 (about 4 % of the CPU
            // during a large checkpoint to S3, and as much again on the server to check it). Their
            // integrity does not depend on it: the SDK sends a CRC checksum header of the body that
            // the server verifies, and a restore checks the CRC-32C of the manifest.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map_sdk_error("write", key, &self.location(key), e))
    }

    async fn put_segments(&self, key: &str, body: Segments) -> Result<(), StoreError> {
        validate_key(key)?;
        if body.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(key, body).await;
        }
        // At most MULTIPART_THRESHOLD bytes: one request, joined.
        self.put(key, body.into_bytes()).await
    }

    /// A single conditional PUT (`If-None-Match: *`); 412 means the object exists. A 409
    /// (ConditionalRequestConflict: a concurrent conditional write is in flight) is retried, so the
    /// answer is decided by the server once the other write finished.
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        let mut delay = Duration::from_millis(100);
        for _ in 0..5 {
            if let Some(outcome) = self.try_put_if_absent(key, body.clone()).await? {
                return Ok(outcome);
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(StoreError::Backend {
            op: "create",
            location: self.location(key),
            status: Some(409),
            detail: "conflicting conditional writes kept racing for this key".into(),
            transient: true,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_prefix(prefix)?;
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full_prefix = format!("{root}{prefix}");
        let location = join_url(&self.url, prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_sdk_error("list", prefix, &location, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(root.as_str())) else {
                    continue;
                };
                let size = object
                    .size()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0);
                out.push(ObjectInfo {
                    key: key.to_owned(),
                    size,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            validate_key(key)?;
        }
        for batch in keys.chunks(DELETE_BATCH) {
            let location = self.location(&batch[0]);
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full_key(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    StoreError::Config(format!("failed to build a delete request: {e}"))
                })?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| {
                    StoreError::Config(format!("failed to build a delete request: {e}"))
                })?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| map_sdk_error("delete", &batch[0], &location, e))?;
            if let Some(failed) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                let key = failed.key().unwrap_or_default();
                return Err(StoreError::Backend {
                    op: "delete",
                    location: format!("s3://{}/{key}", self.bucket),
                    status: None,
                    detail: format!(
                        "{}: {} ({} of {} keys in this batch failed)",
                        failed.code().unwrap_or("error"),
                        failed.message().unwrap_or_default(),
                        out.errors().len(),
                        batch.len()
                    ),
                    transient: matches!(
                        failed.code(),
                        Some("InternalError" | "SlowDown" | "ServiceUnavailable")
                    ),
                });
            }
        }
        Ok(())
    }

    fn url(&self) -> String {
        self.url.clone()
    }
}
