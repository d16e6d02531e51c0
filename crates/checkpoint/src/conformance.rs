//! A behaviour suite that every [`SnapshotStore`] must pass (used by this crate's tests on memory, file and S3).
//!
//! Each check uses keys under `conformance/` of a store that starts empty there.

use std::sync::Arc;

use bytes::Bytes;

use crate::segments::Segments;
use crate::store::{ObjectInfo, PutOutcome, SnapshotStore, StoreError};

/// A store broke a promise of the [`SnapshotStore`] contract.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// A check failed.
    #[error("store {url} fails the store contract: {what}")]
    Broken {
        /// The store's URL.
        url: String,
        /// Which promise and what happened.
        what: String,
    },
    /// A call that must succeed failed.
    #[error("store {url}: {call} failed: {source}")]
    Call {
        /// The store's URL.
        url: String,
        /// The call.
        call: String,
        /// Why.
        #[source]
        source: StoreError,
    },
}

struct Checker<'a> {
    store: &'a dyn SnapshotStore,
}

impl Checker<'_> {
    fn broken(&self, what: impl Into<String>) -> ConformanceError {
        ConformanceError::Broken {
            url: self.store.url(),
            what: what.into(),
        }
    }

    fn ensure(&self, ok: bool, what: impl FnOnce() -> String) -> Result<(), ConformanceError> {
        if ok {
            Ok(())
        } else {
            Err(self.broken(what()))
        }
    }

    fn call<T>(&self, call: &str, r: Result<T, StoreError>) -> Result<T, ConformanceError> {
        r.map_err(|source| ConformanceError::Call {
            url: self.store.url(),
            call: call.to_owned(),
            source,
        })
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, ConformanceError> {
        let listed = self.call(&format!("list({prefix:?})"), self.store.list(prefix).await)?;
        Ok(listed.into_iter().map(|o| o.key).collect())
    }
}

/// Runs every check except the concurrency race (see [`check_put_if_absent_race`]).
pub async fn check_store(store: &dyn SnapshotStore) -> Result<(), ConformanceError> {
    let c = Checker { store };
    check_get_put(&c).await?;
    check_invalid_keys(&c).await?;
    check_put_if_absent(&c).await?;
    check_list(&c).await?;
    check_delete(&c).await?;
    Ok(())
}

async fn check_get_put(c: &Checker<'_>) -> Result<(), ConformanceError> {
    let key = "conformance/get/a.bin";
    match c.store.get(key).await {
        Err(StoreError::NotFound { key: k, location }) => {
            c.ensure(k == key, || {
                format!("NotFound names key {k:?} instead of {key:?}")
            })?;
            c.ensure(location == c.store.location(key), || {
                format!("NotFound names location {location}")
            })?;
        }
        other => {
            return Err(c.broken(format!(
                "get of a missing key returned {other:?} instead of NotFound"
            )))
        }
    }
    c.call("put", c.store.put(key, Bytes::from_static(b"first")).await)?;
    let got = c.call("get", c.store.get(key).await)?;
    c.ensure(got == b"first"[..], || {
        format!("get returned {got:?} after put of \"first\"")
    })?;
    c.call(
        "put (overwrite)",
        c.store.put(key, Bytes::from_static(b"second!")).await,
    )?;
    let got = c.call("get", c.store.get(key).await)?;
    c.ensure(got == b"second!"[..], || {
        format!("get returned {got:?} after overwrite")
    })?;
    c.call(
        "put (empty)",
        c.store.put("conformance/get/empty", Bytes::new()).await,
    )?;
    let got = c.call("get (empty)", c.store.get("conformance/get/empty").await)?;
    c.ensure(got.is_empty(), || {
        "an empty object reads back non-empty".into()
    })?;
    let pieces = [&b"in "[..], b"", b"three", b" pieces"]
        .map(Bytes::from_static)
        .to_vec();
    c.call(
        "put_segments",
        c.store
            .put_segments("conformance/get/pieces", Segments::new(pieces))
            .await,
    )?;
    let got = c.call("get (pieces)", c.store.get("conformance/get/pieces").await)?;
    c.ensure(got == b"in three pieces"[..], || {
        format!("put_segments of \"in three pieces\" reads back as {got:?}")
    })?;
    let location = c.store.location(key);
    c.ensure(
        location.starts_with(&c.store.url()) && location.ends_with(key),
        || format!("location {location} does not extend url"),
    )
}

async fn check_invalid_keys(c: &Checker<'_>) -> Result<(), ConformanceError> {
    for bad in ["", "/abs", "a//b", "a/../b", "a\\b", "trailing/"] {
        let results = [
            c.store.get(bad).await.err(),
            c.store.put(bad, Bytes::new()).await.err(),
            c.store.put_if_absent(bad, Bytes::new()).await.err(),
            c.store.delete(&[bad.to_owned()]).await.err(),
        ];
        for r in results {
            c.ensure(matches!(r, Some(StoreError::InvalidKey { .. })), || {
                format!("key {bad:?} was not rejected: {r:?}")
            })?;
        }
    }
    let r = c.store.list("../").await;
    c.ensure(matches!(r, Err(StoreError::InvalidKey { .. })), || {
        format!("prefix \"../\" was not rejected: {r:?}")
    })
}

async fn check_put_if_absent(c: &Checker<'_>) -> Result<(), ConformanceError> {
    let key = "conformance/pia/_manifest.json";
    let first = c.call(
        "put_if_absent",
        c.store.put_if_absent(key, Bytes::from_static(b"one")).await,
    )?;
    c.ensure(first == PutOutcome::Created, || {
        format!("first put_if_absent returned {first:?}")
    })?;
    let second = c.call(
        "put_if_absent",
        c.store.put_if_absent(key, Bytes::from_static(b"two")).await,
    )?;
    c.ensure(second == PutOutcome::AlreadyExists, || {
        format!("second put_if_absent returned {second:?}")
    })?;
    let got = c.call("get", c.store.get(key).await)?;
    c.ensure(got == b"one"[..], || {
        format!("put_if_absent replaced the object: {got:?}")
    })
}

async fn check_list(c: &Checker<'_>) -> Result<(), ConformanceError> {
    let keys = [
        "conformance/list/b/000002-0000000001/op/0000.state",
        "conformance/list/b/000001-0000000002/_manifest.json",
        "conformance/list/b/000001-0000000001/op/0001.state",
        "conformance/list/a.json",
        "conformance/listing-sibling",
    ];
    for (i, key) in keys.iter().enumerate() {
        c.call(
            "put",
            c.store.put(key, Bytes::from(vec![b'x'; i + 1])).await,
        )?;
    }
    let listed = c.call("list", c.store.list("conformance/list/").await)?;
    let expected: Vec<ObjectInfo> = {
        let mut v: Vec<ObjectInfo> = keys[..4]
            .iter()
            .enumerate()
            .map(|(i, k)| ObjectInfo {
                key: (*k).to_owned(),
                size: i as u64 + 1,
            })
            .collect();
        v.sort();
        v
    };
    c.ensure(listed == expected, || {
        format!("list(\"conformance/list/\") returned {listed:?}, expected {expected:?}")
    })?;
    let partial = c.keys("conformance/list/b/000001-").await?;
    c.ensure(partial == [keys[2], keys[1]], || {
        format!("a string prefix inside a folder listed {partial:?}")
    })?;
    let sibling = c.keys("conformance/list").await?;
    c.ensure(sibling.len() == 5, || {
        format!("prefix without '/' should also match the sibling: {sibling:?}")
    })?;
    let none = c.keys("conformance/nothing/").await?;
    c.ensure(none.is_empty(), || {
        format!("missing prefix listed {none:?}")
    })?;
    let all = c.keys("").await?;
    c.ensure(keys.iter().all(|k| all.iter().any(|a| a == k)), || {
        "the empty prefix does not list everything".into()
    })?;
    c.ensure(all.windows(2).all(|w| w[0] < w[1]), || {
        "list is not sorted by key".into()
    })
}

async fn check_delete(c: &Checker<'_>) -> Result<(), ConformanceError> {
    let keys: Vec<String> = (0..3)
        .map(|i| format!("conformance/del/d/{i}.state"))
        .collect();
    for key in &keys {
        c.call("put", c.store.put(key, Bytes::from_static(b"1")).await)?;
    }
    let mut to_delete = keys[..2].to_vec();
    to_delete.push("conformance/del/never-existed".to_owned());
    c.call("delete", c.store.delete(&to_delete).await)?;
    c.call("delete (empty)", c.store.delete(&[]).await)?;
    let left = c.keys("conformance/del/").await?;
    c.ensure(left == [keys[2].clone()], || {
        format!("after delete, list shows {left:?}")
    })?;
    let r = c.store.get(&keys[0]).await;
    c.ensure(matches!(r, Err(StoreError::NotFound { .. })), || {
        format!("get after delete returned {r:?}")
    })?;
    c.call("delete", c.store.delete(&keys[2..]).await)?;
    let r = c.call(
        "put_if_absent after delete",
        c.store
            .put_if_absent(&keys[0], Bytes::from_static(b"2"))
            .await,
    )?;
    c.ensure(r == PutOutcome::Created, || {
        format!("put_if_absent after delete returned {r:?}")
    })
}

/// Runs `writers` concurrent `put_if_absent` calls on one key: exactly one must be Created, and
/// the stored body must be the winner's.
pub async fn check_put_if_absent_race(
    store: Arc<dyn SnapshotStore>,
    writers: u8,
) -> Result<(), ConformanceError> {
    let key = "conformance/race/_manifest.json";
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                (
                    i,
                    store.put_if_absent(key, Bytes::from(vec![i; 1024])).await,
                )
            })
        })
        .collect();
    let c = Checker {
        store: store.as_ref(),
    };
    let mut winners = Vec::new();
    for task in tasks {
        let (i, result) = task
            .await
            .map_err(|e| c.broken(format!("a writer task panicked: {e}")))?;
        if c.call("put_if_absent", result)? == PutOutcome::Created {
            winners.push(i);
        }
    }
    c.ensure(winners.len() == 1, || {
        format!(
            "{} of {writers} concurrent put_if_absent calls were Created",
            winners.len()
        )
    })?;
    let body = c.call("get", store.get(key).await)?;
    c.ensure(
        body.iter().all(|b| *b == winners[0]) && body.len() == 1024,
        || "the stored body is not the winner's".into(),
    )
}
