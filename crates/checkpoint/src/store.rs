//! The `SnapshotStore` trait: the narrow storage seam (get, put, put-if-absent, list, delete) and key rules.
//!
//! Implementations: [`crate::MemoryStore`] (tests), [`crate::FileStore`] (local mode),
//! `S3Store` (production), [`crate::PrefixedStore`] (a store scoped to a sub-prefix).

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::segments::Segments;

/// Longest key accepted, in bytes (the S3 limit).
pub const MAX_KEY_LEN: usize = 1024;

/// File-name prefix reserved for temporary files of [`crate::FileStore`]; no key segment may start with it.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Errors of every [`SnapshotStore`] implementation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key (or prefix) breaks the key rules; this is a bug in the caller or a bad configuration.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The object does not exist.
    #[error("object {location} does not exist")]
    NotFound {
        /// Key relative to the store root.
        key: String,
        /// Full URL of the missing object.
        location: String,
    },

    /// The credentials were refused or lack a permission.
    #[error("access to {location} was denied ({detail}); check the access key, the secret key and the bucket policy")]
    Denied {
        /// URL of the object or prefix.
        location: String,
        /// What the server said.
        detail: String,
    },

    /// A local file-system operation failed.
    #[error("failed to {op} {location}: {source}")]
    Io {
        /// The operation, e.g. "write".
        op: &'static str,
        /// URL of the object or prefix.
        location: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A remote store (S3) call failed after the client's own retries.
    #[error("failed to {op} {location}: {detail}{hint}", hint = if *.transient { " (transient: retry later)" } else { "" })]
    Backend {
        /// The operation, e.g. "put".
        op: &'static str,
        /// URL of the object or prefix.
        location: String,
        /// HTTP status, when a response was received.
        status: Option<u16>,
        /// Error code and message from the server or the client.
        detail: String,
        /// Whether retrying later may succeed (timeouts, 5xx, throttling, connection errors).
        transient: bool,
    },

    /// The store could not be configured (bad bucket, endpoint, credentials setup).
    #[error("invalid store configuration: {0}")]
    Config(String),

    /// A failure injected by [`crate::MemoryStore`] fault injection (tests only).
    #[error("injected failure on {op} of {key}")]
    Injected {
        /// The operation that failed.
        op: &'static str,
        /// The key it was called with.
        key: String,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed (timeouts, 5xx, throttling, lost connections).
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind as K;
        match self {
            StoreError::Backend { transient, .. } => *transient,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                K::TimedOut
                    | K::Interrupted
                    | K::WouldBlock
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::ConnectionRefused
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::ResourceBusy
            ),
            StoreError::Injected { .. } => true,
            StoreError::InvalidKey { .. }
            | StoreError::NotFound { .. }
            | StoreError::Denied { .. }
            | StoreError::Config(_) => false,
        }
    }

    /// Whether this is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// Result of [`SnapshotStore::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call created the object.
    Created,
    /// An object with this key already existed; it was left unchanged.
    AlreadyExists,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectInfo {
    /// Key relative to the store root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Object storage for snapshots, used as `Arc<dyn SnapshotStore>`.
///
/// Keys are relative to the store root and follow [`validate_key`]. Objects are immutable in
/// practice: state files are written once under fresh keys, manifests and markers with
/// [`SnapshotStore::put_if_absent`].
#[async_trait]
pub trait SnapshotStore: Send + Sync + fmt::Debug {
    /// Reads a whole object; [`StoreError::NotFound`] when it does not exist.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Writes an object atomically (readers see the old object, the new one, or none; never a part).
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError>;

    /// [`SnapshotStore::put`] of an object given in pieces. Stores that can write the pieces as
    /// they are (a file, the parts of a multipart upload) do; by default they are joined first.
    async fn put_segments(&self, key: &str, body: Segments) -> Result<(), StoreError> {
        self.put(key, body.into_bytes()).await
    }

    /// Creates an object only if no object with this key exists; atomic with respect to other writers.
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError>;

    /// Every object whose key starts with `prefix` (recursively), sorted by key.
    ///
    /// `prefix` is a plain string prefix: `"checkpoints/"` lists a folder, `"checkpoints/000002-"`
    /// lists the checkpoints of attempt 2. An empty prefix lists the whole store.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes objects; keys that do not exist are ignored.
    async fn delete(&self, keys: &[String]) -> Result<(), StoreError>;

    /// The root URL of the store, e.g. `s3://bucket/prefix` or `file:///abs/dir`.
    fn url(&self) -> String;

    /// The full URL of `key`, for messages and status.
    fn location(&self, key: &str) -> String {
        join_url(&self.url(), key)
    }
}

/// Joins a root URL and a relative key with exactly one '/'.
pub fn join_url(root: &str, key: &str) -> String {
    if key.is_empty() || root.ends_with('/') {
        format!("{root}{key}")
    } else {
        format!("{root}/{key}")
    }
}

/// Checks a key: non-empty, at most [`MAX_KEY_LEN`] bytes, '/'-separated segments that are not
/// empty, `.` or `..`, no leading '/', no backslash or control characters, and no segment starting
/// with [`TEMP_PREFIX`].
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("keys must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid("keys must be at most 1024 bytes long"));
    }
    if key.starts_with('/') {
        return Err(invalid(
            "keys are relative to the store root and must not start with '/'",
        ));
    }
    if key.contains('\\') {
        return Err(invalid("keys must use '/' as separator, not '\\'"));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid("keys must not contain control characters"));
    }
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err(invalid(
                    "keys must not contain empty segments ('//' or a trailing '/')",
                ))
            }
            "." | ".." => return Err(invalid("keys must not contain '.' or '..' segments")),
            s if s.starts_with(TEMP_PREFIX) => {
                return Err(invalid(
                    "key segments must not start with '.tmp-' (reserved for temporary files)",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a list prefix: empty, or a key optionally followed by one '/'.
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let body = prefix.strip_suffix('/').unwrap_or(prefix);
    validate_key(body).map_err(|e| match e {
        StoreError::InvalidKey { reason, .. } => StoreError::InvalidKey {
            key: prefix.to_owned(),
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_layout_keys() {
        for key in [
            "a",
            "checkpoints/000001-0000000001/_manifest.json",
            "shared/ab-12.state",
            "x.y/z",
        ] {
            validate_key(key).unwrap();
        }
    }

    #[test]
    fn rejects_bad_keys() {
        for key in [
            "", "/abs", "a//b", "a/", "a/../b", "..", "./a", "a\\b", "a/.tmp-1", "a\nb",
        ] {
            let err = validate_key(key).unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidKey { .. }),
                "{key:?} gave {err}"
            );
        }
        assert!(validate_key(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn prefixes() {
        validate_prefix("").unwrap();
        validate_prefix("checkpoints/").unwrap();
        validate_prefix("checkpoints/000001-").unwrap();
        assert!(validate_prefix("/").is_err());
        assert!(validate_prefix("a//").is_err());
        assert!(validate_prefix("../").is_err());
    }

    #[test]
    fn joins_urls() {
        assert_eq!(join_url("s3://b/p", "k/x"), "s3://b/p/k/x");
        assert_eq!(join_url("s3://b/", "k"), "s3://b/k");
        assert_eq!(join_url("file:///d", ""), "file:///d");
        assert_eq!(join_url("file:///", "k"), "file:///k");
        assert_eq!(join_url("memory://t", "k"), "memory://t/k");
    }

    #[test]
    fn transient_classification() {
        let io = |kind| StoreError::Io {
            op: "read",
            location: "x".into(),
            source: std::io::Error::from(kind),
        };
        assert!(io(std::io::ErrorKind::TimedOut).is_transient());
        assert!(!io(std::io::ErrorKind::PermissionDenied).is_transient());
        assert!(!StoreError::NotFound {
            key: "k".into(),
            location: "l".into()
        }
        .is_transient());
        let backend = |transient| StoreError::Backend {
            op: "put",
            location: "s3://b/k".into(),
            status: Some(503),
            detail: "SlowDown".into(),
            transient,
        };
        assert!(backend(true).is_transient());
        assert!(backend(true).to_string().contains("retry later"));
        assert!(!backend(false).is_transient());
    }
}
