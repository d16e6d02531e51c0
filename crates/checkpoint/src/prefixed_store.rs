//! `PrefixedStore`: a [`SnapshotStore`] scoped to a sub-prefix of another store (e.g. `<namespace>/<job>/`).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::segments::Segments;
use crate::store::{
    validate_key, validate_prefix, ObjectInfo, PutOutcome, SnapshotStore, StoreError,
};

/// A view of `inner` where every key is relative to `prefix`.
#[derive(Debug, Clone)]
pub struct PrefixedStore {
    inner: Arc<dyn SnapshotStore>,
    /// Always ends with '/'.
    prefix: String,
}

impl PrefixedStore {
    /// Scopes `inner` to `prefix` (a key, e.g. `"team-a/orders"`; '/' at the ends is ignored).
    pub fn new(inner: Arc<dyn SnapshotStore>, prefix: &str) -> Result<Self, StoreError> {
        let trimmed = prefix.trim_matches('/');
        validate_key(trimmed)?;
        Ok(Self {
            inner,
            prefix: format!("{trimmed}/"),
        })
    }

    /// The prefix inside the inner store, ending with '/'.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn inner_key(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }
}

/// `store` scoped to `prefix`, as a trait object.
pub fn child(
    store: &Arc<dyn SnapshotStore>,
    prefix: &str,
) -> Result<Arc<dyn SnapshotStore>, StoreError> {
    Ok(Arc::new(PrefixedStore::new(Arc::clone(store), prefix)?))
}

/// The store of one job: `root` scoped to `<namespace>/<job>/`.
pub fn job_store(
    root: &Arc<dyn SnapshotStore>,
    namespace: &str,
    job: &str,
) -> Result<Arc<dyn SnapshotStore>, StoreError> {
    for (what, name) in [("namespace", namespace), ("job name", job)] {
        if name.is_empty() || name.contains('/') {
            return Err(StoreError::InvalidKey {
                key: name.to_owned(),
                reason: if what == "namespace" {
                    "a namespace must be one non-empty path segment"
                } else {
                    "a job name must be one non-empty path segment"
                },
            });
        }
    }
    child(root, &format!("{namespace}/{job}"))
}

#[async_trait]
impl SnapshotStore for PrefixedStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner
            .get(&self.inner_key(key)?)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { location, .. } => StoreError::NotFound {
                    key: key.to_owned(),
                    location,
                },
                other => other,
            })
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.inner.put(&self.inner_key(key)?, body).await
    }

    async fn put_segments(&self, key: &str, body: Segments) -> Result<(), StoreError> {
        self.inner.put_segments(&self.inner_key(key)?, body).await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        self.inner.put_if_absent(&self.inner_key(key)?, body).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_prefix(prefix)?;
        let listed = self.inner.list(&format!("{}{prefix}", self.prefix)).await?;
        Ok(listed
            .into_iter()
            .filter_map(|o| {
                let key = o.key.strip_prefix(self.prefix.as_str())?.to_owned();
                Some(ObjectInfo { key, size: o.size })
            })
            .collect())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        let keys = keys
            .iter()
            .map(|k| self.inner_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.delete(&keys).await
    }

    fn url(&self) -> String {
        self.inner.location(self.prefix.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn scopes_keys() {
        let root: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
        let job = job_store(&root, "ns", "orders").unwrap();
        job.put("checkpoints/a", Bytes::from_static(b"x"))
            .await
            .unwrap();
        root.put("ns/other/checkpoints/a", Bytes::from_static(b"y"))
            .await
            .unwrap();

        assert_eq!(
            root.get("ns/orders/checkpoints/a").await.unwrap(),
            Bytes::from_static(b"x")
        );
        let listed = job.list("").await.unwrap();
        assert_eq!(
            listed,
            vec![ObjectInfo {
                key: "checkpoints/a".into(),
                size: 1
            }]
        );
        assert_eq!(job.url(), format!("{}/ns/orders", root.url()));
        assert_eq!(job.location("k"), format!("{}/ns/orders/k", root.url()));

        match job.get("missing").await.unwrap_err() {
            StoreError::NotFound { key, location } => {
                assert_eq!(key, "missing");
                assert!(location.ends_with("/ns/orders/missing"));
            }
            other => panic!("unexpected {other}"),
        }
        job.delete(&["checkpoints/a".to_owned()]).await.unwrap();
        assert_eq!(root.list("").await.unwrap().len(), 1);
    }

    #[test]
    fn rejects_bad_scopes() {
        let root: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
        assert!(job_store(&root, "", "j").is_err());
        assert!(job_store(&root, "ns", "a/b").is_err());
        assert!(child(&root, "../x").is_err());
    }
}
