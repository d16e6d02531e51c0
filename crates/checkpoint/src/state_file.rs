//! Writing state files (size + CRC-32C recorded in a [`FileRef`]) and reading them back verified.

use bytes::Bytes;

use crate::layout::SnapshotLayout;
use crate::manifest::FileRef;
use crate::segments::Segments;
use crate::store::{SnapshotStore, StoreError};

/// A state file could not be read, or it does not match its manifest entry.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store failed (including a missing file).
    #[error("failed to read state file {location}: {source}")]
    Store {
        /// URL of the file.
        location: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// Wrong size: truncated or replaced.
    #[error("state file {location} is corrupt: it has {actual} bytes but the manifest says {expected}; the snapshot cannot be restored, use an older one")]
    SizeMismatch {
        /// URL of the file.
        location: String,
        /// Size recorded in the manifest.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// Right size, wrong content.
    #[error("state file {location} is corrupt: CRC-32C {actual:#010x} does not match the manifest's {expected:#010x}; the snapshot cannot be restored, use an older one")]
    ChecksumMismatch {
        /// URL of the file.
        location: String,
        /// CRC-32C recorded in the manifest.
        expected: u32,
        /// CRC-32C of the content found.
        actual: u32,
    },
}

impl VerifyError {
    /// Whether the file is missing (as opposed to corrupt or unreadable).
    pub fn is_missing(&self) -> bool {
        matches!(self, VerifyError::Store { source, .. } if source.is_not_found())
    }

    /// Whether retrying may help (the store failed transiently; corruption is permanent).
    pub fn is_transient(&self) -> bool {
        matches!(self, VerifyError::Store { source, .. } if source.is_transient())
    }
}

/// The [`FileRef`] describing `bytes` stored at `key`.
pub fn file_ref(key: impl Into<String>, bytes: &[u8]) -> FileRef {
    FileRef {
        key: key.into(),
        size: bytes.len() as u64,
        crc32c: crc32c::crc32c(bytes),
        contents: None,
    }
}

/// Stores `body` (one buffer, or [`Segments`] written without joining them) at `key` and returns
/// its [`FileRef`] for the manifest.
pub async fn write_state_file(
    store: &dyn SnapshotStore,
    key: &str,
    body: impl Into<Segments>,
) -> Result<FileRef, StoreError> {
    let body = body.into();
    let file = FileRef {
        key: key.into(),
        size: body.len() as u64,
        crc32c: body.crc32c(),
        contents: None,
    };
    store.put_segments(key, body).await?;
    Ok(file)
}

/// Stores `bytes` content-addressed in `shared/` (skipped if the same content is already there)
/// and returns its [`FileRef`]. Used by incremental checkpoints.
pub async fn write_shared_state_file(
    store: &dyn SnapshotStore,
    bytes: Bytes,
) -> Result<FileRef, StoreError> {
    let file = file_ref(SnapshotLayout::shared_file(&bytes), &bytes);
    // AlreadyExists is fine: the key names the content.
    store.put_if_absent(&file.key, bytes).await?;
    Ok(file)
}

/// Checks `bytes` against `file`.
pub fn verify_bytes(
    store: &dyn SnapshotStore,
    file: &FileRef,
    bytes: &[u8],
) -> Result<(), VerifyError> {
    let actual_size = bytes.len() as u64;
    if actual_size != file.size {
        return Err(VerifyError::SizeMismatch {
            location: store.location(&file.key),
            expected: file.size,
            actual: actual_size,
        });
    }
    let actual = crc32c::crc32c(bytes);
    if actual != file.crc32c {
        return Err(VerifyError::ChecksumMismatch {
            location: store.location(&file.key),
            expected: file.crc32c,
            actual,
        });
    }
    Ok(())
}

/// Reads the file `file` points to and verifies its size and CRC-32C.
pub async fn read_state_file(
    store: &dyn SnapshotStore,
    file: &FileRef,
) -> Result<Bytes, VerifyError> {
    let bytes = store
        .get(&file.key)
        .await
        .map_err(|source| VerifyError::Store {
            location: store.location(&file.key),
            source,
        })?;
    verify_bytes(store, file, &bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn round_trip() {
        let store = MemoryStore::new();
        let file = write_state_file(&store, "c/op/0000.state", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(file.size, 5);
        assert_eq!(file.crc32c, crc32c::crc32c(b"hello"));
        assert_eq!(
            read_state_file(&store, &file).await.unwrap(),
            Bytes::from_static(b"hello")
        );
    }

    #[tokio::test]
    async fn detects_corruption() {
        let store = MemoryStore::new();
        let file = write_state_file(&store, "c/op/0000.state", Bytes::from_static(b"hello"))
            .await
            .unwrap();

        store.overwrite("c/op/0000.state", Bytes::from_static(b"hellO"));
        let err = read_state_file(&store, &file).await.unwrap_err();
        assert!(matches!(err, VerifyError::ChecksumMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("c/op/0000.state") && message.contains("corrupt"),
            "{message}"
        );

        store.overwrite("c/op/0000.state", Bytes::from_static(b"hell"));
        let err = read_state_file(&store, &file).await.unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::SizeMismatch {
                    expected: 5,
                    actual: 4,
                    ..
                }
            ),
            "{err}"
        );

        store.delete(&["c/op/0000.state".to_owned()]).await.unwrap();
        assert!(read_state_file(&store, &file)
            .await
            .unwrap_err()
            .is_missing());
    }

    #[tokio::test]
    async fn shared_files_are_deduplicated() {
        let store = MemoryStore::new();
        let a = write_shared_state_file(&store, Bytes::from_static(b"same"))
            .await
            .unwrap();
        let b = write_shared_state_file(&store, Bytes::from_static(b"same"))
            .await
            .unwrap();
        assert_eq!(a, b);
        assert!(a.key.starts_with("shared/"));
        assert_eq!(store.put_count(), 1);
    }
}
