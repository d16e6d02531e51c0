//! `MemoryStore`: an in-process [`SnapshotStore`] for tests, with fault injection for other crates' tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use crate::store::{
    validate_key, validate_prefix, ObjectInfo, PutOutcome, SnapshotStore, StoreError,
};

/// Distinguishes the URLs of stores created in one process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An in-memory [`SnapshotStore`]. Cheap to create; every instance is independent.
///
/// Fault injection affects `put` and `put_if_absent` (the calls a checkpoint makes):
/// [`MemoryStore::fail_next_puts`] and [`MemoryStore::fail_puts_containing`]. Injected failures are
/// [`StoreError::Injected`], classified as transient.
#[derive(Debug)]
pub struct MemoryStore {
    url: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Bytes>,
    fail_next_puts: u64,
    fail_puts_containing: Vec<String>,
    fail_next_gets: u64,
    puts: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with a unique `memory://store-N` URL.
    pub fn new() -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self {
            url: format!("memory://store-{id}"),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts/removes).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next `n` puts (`put` or `put_if_absent`) fail.
    pub fn fail_next_puts(&self, n: u64) {
        self.state().fail_next_puts = n;
    }

    /// Makes every put whose key contains `fragment` fail, until [`MemoryStore::clear_faults`].
    pub fn fail_puts_containing(&self, fragment: impl Into<String>) {
        self.state().fail_puts_containing.push(fragment.into());
    }

    /// Makes the next `n` gets fail.
    pub fn fail_next_gets(&self, n: u64) {
        self.state().fail_next_gets = n;
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        let mut state = self.state();
        state.fail_next_puts = 0;
        state.fail_next_gets = 0;
        state.fail_puts_containing.clear();
    }

    /// Number of successful puts so far (both kinds).
    pub fn put_count(&self) -> u64 {
        self.state().puts
    }

    /// All keys currently stored, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }

    /// Replaces an object's bytes without fault injection, e.g. to simulate corruption in tests.
    pub fn overwrite(&self, key: &str, body: Bytes) {
        self.state().objects.insert(key.to_owned(), body);
    }

    fn check_put_faults(state: &mut State, op: &'static str, key: &str) -> Result<(), StoreError> {
        if state.fail_next_puts > 0 {
            state.fail_next_puts -= 1;
            return Err(StoreError::Injected {
                op,
                key: key.to_owned(),
            });
        }
        if state
            .fail_puts_containing
            .iter()
            .any(|f| key.contains(f.as_str()))
        {
            return Err(StoreError::Injected {
                op,
                key: key.to_owned(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let mut state = self.state();
        if state.fail_next_gets > 0 {
            state.fail_next_gets -= 1;
            return Err(StoreError::Injected {
                op: "get",
                key: key.to_owned(),
            });
        }
        state
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_owned(),
                location: self.location(key),
            })
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        validate_key(key)?;
        let mut state = self.state();
        Self::check_put_faults(&mut state, "put", key)?;
        state.objects.insert(key.to_owned(), body);
        state.puts += 1;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        let mut state = self.state();
        Self::check_put_faults(&mut state, "put_if_absent", key)?;
        if state.objects.contains_key(key) {
            return Ok(PutOutcome::AlreadyExists);
        }
        state.objects.insert(key.to_owned(), body);
        state.puts += 1;
        Ok(PutOutcome::Created)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_prefix(prefix)?;
        let state = self.state();
        Ok(state
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, body)| ObjectInfo {
                key: key.clone(),
                size: body.len() as u64,
            })
            .collect())
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            validate_key(key)?;
        }
        let mut state = self.state();
        for key in keys {
            state.objects.remove(key);
        }
        Ok(())
    }

    fn url(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fault_injection() {
        let store = MemoryStore::new();
        store.fail_next_puts(1);
        let err = store.put("a", Bytes::from_static(b"1")).await.unwrap_err();
        assert!(err.is_transient());
        store.put("a", Bytes::from_static(b"1")).await.unwrap();

        store.fail_puts_containing("_manifest");
        assert!(store
            .put_if_absent("c/_manifest.json", Bytes::new())
            .await
            .is_err());
        store.put("c/x.state", Bytes::new()).await.unwrap();
        store.clear_faults();
        assert_eq!(
            store
                .put_if_absent("c/_manifest.json", Bytes::new())
                .await
                .unwrap(),
            PutOutcome::Created
        );

        store.fail_next_gets(1);
        assert!(store.get("a").await.is_err());
        assert_eq!(store.get("a").await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(store.put_count(), 3);
    }

    #[tokio::test]
    async fn urls_are_unique() {
        let (a, b) = (MemoryStore::new(), MemoryStore::new());
        assert_ne!(a.url(), b.url());
        assert!(a.location("k").ends_with("/k"));
    }
}
