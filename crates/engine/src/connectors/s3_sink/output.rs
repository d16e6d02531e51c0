//! The S3 side of the S3 sink: where it writes ([`S3Output`]: bucket, prefix, one shared client),
//! the object key layout, listing and rolling back committed objects, the sink's error enum, and
//! the small dedicated runtime every request runs on (blocking wrappers; no operator logic).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use streamjob_checkpoint::s3_config::S3Config;
use streamjob_checkpoint::url::{S3Options, StoreUrl, UrlError};
use streamjob_checkpoint::{S3Store, StoreError};

use super::journal::{handles_journal, journal_key, journal_prefix, parse_journal_key, Journal};
use super::upload::PendingUpload;
use super::{S3Sink, PART_SIZE};
use crate::operator::OperatorError;

/// Failures of the S3 sink.
#[derive(Debug, thiserror::Error)]
pub enum S3SinkError {
    /// The `output` URL is not a usable `s3://bucket/prefix`.
    #[error("invalid S3 output {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The sink's I/O runtime could not start.
    #[error("failed to start the S3 sink's I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The S3 client could not be built.
    #[error("failed to connect to the S3 output {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: StoreError,
    },
    /// An S3 request failed (after the SDK's retries).
    #[error("failed to {op} {location}: {detail}; check the endpoint, the credentials and that the bucket exists")]
    Request {
        op: &'static str,
        location: String,
        detail: String,
    },
    /// The local spill file failed.
    #[error("failed to {op} the S3 sink's spill file {path}: {source}; check the space in the temp folder (TMPDIR)")]
    Spill {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pre-committed upload is gone and its object is not there either.
    #[error("failed to commit {location} (checkpoint {checkpoint_id}): the pre-committed multipart upload is gone and the object {found}; a bucket lifecycle rule that aborts incomplete uploads must allow more time than a checkpoint takes to complete")]
    UploadGone {
        location: String,
        checkpoint_id: u64,
        found: String,
    },
    /// A background upload task panicked or was cancelled.
    #[error("the S3 sink's upload task failed: {0}")]
    Task(String),
}

impl S3SinkError {
    pub(super) fn request<E>(op: &'static str, location: &str, err: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let detail = match (status, err.code(), err.message()) {
            (Some(s), code, Some(m)) => format!("HTTP {s} {}: {m}", code.unwrap_or_default()),
            (Some(s), code, None) => format!("HTTP {s} {}", code.unwrap_or_default()),
            (None, ..) => DisplayErrorContext(&err).to_string(),
        };
        S3SinkError::Request {
            op,
            location: location.to_owned(),
            detail,
        }
    }

    pub(super) fn into_operator(self, operator: &str) -> OperatorError {
        OperatorError::Io {
            context: format!("S3 sink {operator}"),
            source: std::io::Error::other(self),
        }
    }
}

/// The process-wide runtime of S3 sink requests (operators get no runtime handle).
fn runtime() -> Result<&'static tokio::runtime::Runtime, S3SinkError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("streamjob-s3-sink")
        .build()
        .map_err(S3SinkError::Runtime)?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

pub(super) fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, S3SinkError> {
    Ok(runtime()?.block_on(future))
}

/// Key of the object a subtask commits for a checkpoint (the file sink's name under `prefix`).
pub fn object_key(prefix: &str, checkpoint_id: u64, subtask: u32) -> String {
    format!("{}part-{checkpoint_id:010}-{subtask:04}", key_root(prefix))
}

/// `prefix/` ("" for the bucket root).
pub(super) fn key_root(prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Checkpoint id and subtask of a committed object's key; `None` for any other key.
pub fn parse_object_key(prefix: &str, key: &str) -> Option<(u64, u32)> {
    let name = key.strip_prefix(&key_root(prefix))?.strip_prefix("part-")?;
    let (id, subtask) = name.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(id) || !digits(subtask) {
        return None;
    }
    Some((id.parse().ok()?, subtask.parse().ok()?))
}

pub(super) use crate::connectors::cleans_up;

/// Numbered byte ranges of a `total`-byte object cut into parts of `part_size` (the last smaller).
pub(super) fn part_ranges(total: u64, part_size: u64) -> Vec<(i32, Range<u64>)> {
    (0..total.div_ceil(part_size))
        .map(|i| {
            (
                i as i32 + 1,
                i * part_size..((i + 1) * part_size).min(total),
            )
        })
        .collect()
}

/// Where an S3 sink writes (bucket, key prefix, connection settings); cheap to clone, and one client
/// is shared by every subtask of the process.
#[derive(Clone)]
pub struct S3Output {
    inner: Arc<OutputInner>,
}

struct OutputInner {
    config: S3Config,
    client: Mutex<Option<Client>>,
}

impl fmt::Debug for S3Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Output")
            .field("url", &self.url())
            .field("endpoint", &self.inner.config.endpoint)
            .finish_non_exhaustive()
    }
}

/// A committed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedObject {
    /// Full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

impl S3Output {
    /// Output to `s3://bucket[/prefix]` with `options` (unset fields are NOT read from the environment
    /// here: call [`S3Options::with_env_defaults`] first). Does not connect.
    pub fn parse(url: &str, options: S3Options) -> Result<Self, S3SinkError> {
        let invalid = |reason: String| S3SinkError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let (bucket, prefix) = match StoreUrl::parse(url) {
            Ok(StoreUrl::S3 { bucket, prefix }) => (bucket, prefix),
            Ok(StoreUrl::File { .. }) => {
                return Err(invalid("not an s3:// URL; use s3://bucket/prefix".into()))
            }
            Err(UrlError::Invalid { reason, .. }) => return Err(invalid(reason)),
            Err(other) => return Err(invalid(other.to_string())),
        };
        let config = options
            .into_config(bucket, prefix)
            .map_err(|reason| invalid(reason.into()))?;
        Ok(Self::new(config))
    }

    /// Output with explicit settings (`config.prefix` is the key prefix of the objects).
    pub fn new(config: S3Config) -> Self {
        Self {
            inner: Arc::new(OutputInner {
                config,
                client: Mutex::new(None),
            }),
        }
    }

    /// `s3://bucket[/prefix]`.
    pub fn url(&self) -> String {
        let c = &self.inner.config;
        format!("s3://{}/{}", c.bucket, c.prefix.trim_matches('/'))
            .trim_end_matches('/')
            .to_owned()
    }

    pub(super) fn bucket(&self) -> &str {
        &self.inner.config.bucket
    }

    pub(super) fn prefix(&self) -> &str {
        &self.inner.config.prefix
    }

    /// The sink operator of one subtask; `format` renders one record as one line.
    pub fn sink<T, F: Fn(&T, &mut String) + Send>(&self, format: F) -> S3Sink<T, F> {
        S3Sink {
            output: self.clone(),
            format,
            part_size: PART_SIZE,
            subtask: 0,
            operator_id: String::new(),
            attempt: 0,
            current: None,
            pending: Vec::new(),
            ended: false,
            line: String::new(),
            _t: std::marker::PhantomData,
        }
    }

    /// The SDK client (connects on first use; blocks). Use it on the sink's runtime only: its
    /// connections belong to the runtime that opened them.
    pub(super) fn client(&self) -> Result<Client, S3SinkError> {
        let mut client = self
            .inner
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let store = block_on(S3Store::connect(self.inner.config.clone()))?.map_err(|source| {
            S3SinkError::Connect {
                url: self.url(),
                source,
            }
        })?;
        Ok(client.insert(store.client().clone()).clone())
    }

    /// Every object under `list_prefix` as `(key, size)` (blocks).
    fn list(&self, list_prefix: &str) -> Result<Vec<(String, u64)>, S3SinkError> {
        let client = self.client()?;
        let location = format!("s3://{}/{list_prefix}*", self.bucket());
        block_on(async {
            let mut pages = client
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(list_prefix)
                .into_paginator()
                .send();
            let mut objects = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| S3SinkError::request("list", &location, e))?;
                objects.extend(page.contents().iter().filter_map(|object| {
                    let size = object.size().unwrap_or(0).max(0) as u64;
                    object.key().map(|key| (key.to_owned(), size))
                }));
            }
            Ok(objects)
        })?
    }

    /// The committed objects, sorted by key (blocks).
    pub fn committed(&self) -> Result<Vec<CommittedObject>, S3SinkError> {
        let list_prefix = format!("{}part-", key_root(self.prefix()));
        let mut objects: Vec<CommittedObject> = self
            .list(&list_prefix)?
            .into_iter()
            .filter(|(key, _)| parse_object_key(self.prefix(), key).is_some())
            .map(|(key, size)| CommittedObject { key, size })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Completes a pre-committed upload (blocks); `Ok(false)` when it had been completed before (by
    /// anyone: completing twice is harmless).
    pub fn complete(&self, upload: &PendingUpload) -> Result<bool, S3SinkError> {
        let client = self.client()?;
        block_on(upload.complete(&client))?
    }

    /// The bytes of an object (blocks; for checks and tests).
    pub fn read(&self, key: &str) -> Result<Vec<u8>, S3SinkError> {
        let client = self.client()?;
        let location = format!("s3://{}/{key}", self.bucket());
        block_on(async {
            let out = client
                .get_object()
                .bucket(self.bucket())
                .key(key)
                .send()
                .await
                .map_err(|e| S3SinkError::request("read", &location, e))?;
            let body = out.body.collect().await.map_err(|e| S3SinkError::Request {
                op: "read",
                location: location.clone(),
                detail: e.to_string(),
            })?;
            Ok(body.into_bytes().to_vec())
        })?
    }

    /// Deletes committed objects after checkpoint `keep_up_to` that `subtask` cleans up.
    pub(super) fn roll_back(
        &self,
        keep_up_to: u64,
        subtask: u32,
        parallelism: u32,
    ) -> Result<(), S3SinkError> {
        let client = self.client()?;
        for object in self.committed()? {
            let Some((id, owner)) = parse_object_key(self.prefix(), &object.key) else {
                continue;
            };
            if id <= keep_up_to || !cleans_up(owner, subtask, parallelism) {
                continue;
            }
            let location = format!("s3://{}/{}", self.bucket(), object.key);
            block_on(
                client
                    .delete_object()
                    .bucket(self.bucket())
                    .key(&object.key)
                    .send(),
            )?
            .map_err(|e| S3SinkError::request("roll back", &location, e))?;
            tracing::warn!(
                object = location,
                restored_checkpoint = keep_up_to,
                "rolled back output committed after the restore point"
            );
        }
        Ok(())
    }

    /// Records `pending` as the open uploads of `subtask` in `attempt` (an empty list deletes the
    /// journal). Blocks.
    pub(super) fn write_journal(
        &self,
        attempt: u64,
        subtask: u32,
        pending: &[PendingUpload],
    ) -> Result<(), S3SinkError> {
        let client = self.client()?;
        let key = journal_key(self.prefix(), attempt, subtask);
        let location = format!("s3://{}/{key}", self.bucket());
        if pending.is_empty() {
            block_on(
                client
                    .delete_object()
                    .bucket(self.bucket())
                    .key(&key)
                    .send(),
            )?
            .map_err(|e| S3SinkError::request("delete the upload journal", &location, e))?;
            return Ok(());
        }
        let body = serde_json::to_vec(&Journal::of(pending)).map_err(|e| S3SinkError::Request {
            op: "encode the upload journal",
            location: location.clone(),
            detail: e.to_string(),
        })?;
        block_on(
            client
                .put_object()
                .bucket(self.bucket())
                .key(&key)
                .content_type("application/json")
                .body(body.into())
                .send(),
        )?
        .map_err(|e| S3SinkError::request("write the upload journal", &location, e))?;
        Ok(())
    }

    /// Aborts the uploads that older attempts' journals list for checkpoints after `keep_up_to`,
    /// for the journals `subtask` handles, and deletes those journals. Returns how many uploads
    /// were aborted. Best effort per upload: an upload that cannot be aborted for another reason
    /// than being gone keeps its journal for the next attempt, with a warning. Blocks.
    pub fn abort_orphaned_uploads(
        &self,
        keep_up_to: u64,
        attempt: u64,
        subtask: u32,
        parallelism: u32,
    ) -> Result<usize, S3SinkError> {
        let client = self.client()?;
        let bucket = self.bucket();
        let journals: Vec<String> = self
            .list(&journal_prefix(self.prefix()))?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| {
                parse_journal_key(self.prefix(), key)
                    .is_some_and(|owner| handles_journal(owner, attempt, subtask, parallelism))
            })
            .collect();
        let mut aborted = 0;
        for key in journals {
            let location = format!("s3://{bucket}/{key}");
            let journal: Journal = match serde_json::from_slice(&self.read(&key)?) {
                Ok(journal) => journal,
                Err(e) => {
                    // Not ours to interpret: leave it, say so, abort nothing.
                    tracing::warn!(journal = location, error = %e, "unreadable upload journal left in place");
                    continue;
                }
            };
            let mut all_done = true;
            for upload in journal.orphans(keep_up_to) {
                let object = format!("s3://{bucket}/{}", upload.key);
                let result = block_on(
                    client
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(&upload.key)
                        .upload_id(&upload.upload_id)
                        .send(),
                )?;
                match result {
                    Ok(_) => {
                        aborted += 1;
                        tracing::info!(
                            object,
                            upload_id = upload.upload_id,
                            checkpoint = upload.checkpoint_id,
                            "aborted a multipart upload an earlier attempt left behind"
                        );
                    }
                    // Gone already (completed, or aborted by someone else): AWS answers
                    // NoSuchUpload, s3s-fs AccessDenied for an upload id it does not know.
                    Err(e) if matches!(e.code(), Some("NoSuchUpload" | "AccessDenied")) => {
                        tracing::debug!(
                            object,
                            upload_id = upload.upload_id,
                            code = e.code(),
                            "upload already gone"
                        );
                    }
                    Err(e) => {
                        all_done = false;
                        tracing::warn!(object, upload_id = upload.upload_id, error = %S3SinkError::request("abort the upload of", &object, e), "failed to abort a multipart upload an earlier attempt left behind; the next attempt tries again");
                    }
                }
            }
            if all_done {
                block_on(client.delete_object().bucket(bucket).key(&key).send())?
                    .map_err(|e| S3SinkError::request("delete the upload journal", &location, e))?;
            }
        }
        Ok(aborted)
    }
}
