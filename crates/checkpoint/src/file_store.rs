//! `FileStore`: a [`SnapshotStore`] in a local folder (local mode, tests), with atomic writes via temp files.
//!
//! put = temp file in the target folder + fsync + rename; put_if_absent = temp file + `hard_link`
//! (which fails atomically if the name exists) + remove temp. Temp files start with
//! [`TEMP_PREFIX`] and are never listed. Blocking calls run on `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::segments::Segments;

use crate::store::{
    join_url, validate_key, validate_prefix, ObjectInfo, PutOutcome, SnapshotStore, StoreError,
    TEMP_PREFIX,
};

/// A [`SnapshotStore`] rooted at a folder; keys map to relative paths.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    url: String,
}

impl FileStore {
    /// Opens (and creates if needed) a store rooted at `root`; relative paths are made absolute.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = std::path::absolute(root.as_ref()).map_err(|source| StoreError::Io {
            op: "resolve the store folder",
            location: root.as_ref().display().to_string(),
            source,
        })?;
        let url = format!("file://{}", root.display());
        fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            op: "create the store folder",
            location: url.clone(),
            source,
        })?;
        Ok(Self { root, url })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    async fn blocking<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let location = join_url(&self.url, key);
        match tokio::task::spawn_blocking(f).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) if source.kind() == io::ErrorKind::NotFound && op == "read" => {
                Err(StoreError::NotFound {
                    key: key.to_owned(),
                    location,
                })
            }
            Ok(Err(source)) => Err(StoreError::Io {
                op,
                location,
                source,
            }),
            Err(join) => Err(StoreError::Io {
                op,
                location,
                source: io::Error::other(join.to_string()),
            }),
        }
    }
}

/// Writes `body` to a fresh temp file next to `target` and fsyncs it; returns the temp path.
fn write_temp(target: &Path, body: &[Bytes]) -> io::Result<PathBuf> {
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other("object path has no parent folder"))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{name}-{:016x}",
        rand::random::<u64>()
    ));
    // A concurrent delete may remove an empty parent folder between create_dir_all and create.
    let mut attempts = 0;
    let mut file = loop {
        fs::create_dir_all(dir)?;
        match File::options().write(true).create_new(true).open(&temp) {
            Ok(file) => break file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let written = body
        .iter()
        .try_for_each(|part| file.write_all(part))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Ok(temp)
}

/// Makes a rename or link in `dir` durable. Best effort: some file systems refuse to open folders.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn put_blocking(target: &Path, body: &[Bytes]) -> io::Result<()> {
    let temp = write_temp(target, body)?;
    if let Err(e) = fs::rename(&temp, target) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    if let Some(dir) = target.parent() {
        sync_dir(dir);
    }
    Ok(())
}

fn put_if_absent_blocking(target: &Path, body: Bytes) -> io::Result<PutOutcome> {
    let temp = write_temp(target, &[body])?;
    let linked = fs::hard_link(&temp, target);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            if let Some(dir) = target.parent() {
                sync_dir(dir);
            }
            Ok(PutOutcome::Created)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
        Err(e) => Err(e),
    }
}

/// Walks `dir` (whose key is `dir_key`, "" for the root) and collects files whose key starts with `prefix`.
fn walk(dir: &Path, dir_key: &str, prefix: &str, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(path = %entry.path().display(), "ignoring a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let key = if dir_key.is_empty() {
            name.to_owned()
        } else {
            format!("{dir_key}/{name}")
        };
        let file_type = match entry.file_type() {
            Ok(t) => t,
            // Removed between read_dir and here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            let folder = format!("{key}/");
            if folder.starts_with(prefix) || prefix.starts_with(&folder) {
                walk(&entry.path(), &key, prefix, out)?;
            }
        } else if file_type.is_file() && key.starts_with(prefix) {
            match entry.metadata() {
                Ok(meta) => out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Removes empty folders from `dir` up to (not including) `root`.
fn prune_empty_dirs(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        if fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return,
        }
    }
}

#[async_trait]
impl SnapshotStore for FileStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let path = self.path_of(key);
        let bytes = self.blocking("read", key, move || fs::read(path)).await?;
        Ok(Bytes::from(bytes))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        validate_key(key)?;
        let path = self.path_of(key);
        self.blocking("write", key, move || {
            put_blocking(&path, std::slice::from_ref(&body))
        })
        .await
    }

    async fn put_segments(&self, key: &str, body: Segments) -> Result<(), StoreError> {
        validate_key(key)?;
        let path = self.path_of(key);
        self.blocking("write", key, move || put_blocking(&path, body.parts()))
            .await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        let path = self.path_of(key);
        self.blocking("create", key, move || put_if_absent_blocking(&path, body))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_prefix(prefix)?;
        // Start at the deepest folder named by the prefix.
        let dir_key = prefix.rfind('/').map_or("", |i| &prefix[..i]).to_owned();
        let start = if dir_key.is_empty() {
            self.root.clone()
        } else {
            self.path_of(&dir_key)
        };
        let prefix_owned = prefix.to_owned();
        let mut found = self
            .blocking("list", prefix, move || {
                let mut out = Vec::new();
                walk(&start, &dir_key, &prefix_owned, &mut out)?;
                Ok(out)
            })
            .await?;
        found.sort_unstable();
        Ok(found)
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            validate_key(key)?;
        }
        let root = self.root.clone();
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.path_of(k)).collect();
        let first = keys.first().map_or("", String::as_str);
        self.blocking("delete", first, move || {
            for path in &paths {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            for path in &paths {
                if let Some(dir) = path.parent() {
                    prune_empty_dirs(&root, dir);
                }
            }
            Ok(())
        })
        .await
    }

    fn url(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn list_ignores_temp_files_and_prunes_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        store
            .put("a/b/c.state", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        fs::write(dir.path().join("a/b/.tmp-c.state-1"), b"partial").unwrap();
        fs::write(dir.path().join(".tmp-x"), b"partial").unwrap();
        let listed = store.list("").await.unwrap();
        assert_eq!(
            listed,
            vec![ObjectInfo {
                key: "a/b/c.state".into(),
                size: 3
            }]
        );

        fs::remove_file(dir.path().join("a/b/.tmp-c.state-1")).unwrap();
        store.delete(&["a/b/c.state".to_owned()]).await.unwrap();
        assert!(!dir.path().join("a").exists(), "empty folders are removed");
        assert!(dir.path().exists(), "the root stays");
    }

    #[tokio::test]
    async fn string_prefixes_inside_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        for key in ["c/000001-01/x", "c/000001-02/x", "c/000002-01/x", "d/x"] {
            store.put(key, Bytes::from_static(b"1")).await.unwrap();
        }
        let keys: Vec<String> = store
            .list("c/000001-")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["c/000001-01/x", "c/000001-02/x"]);
        assert!(store.list("nothing/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn url_is_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path()).unwrap();
        assert!(store.url().starts_with("file:///"), "{}", store.url());
        assert_eq!(store.location("k"), format!("{}/k", store.url()));
    }

    #[tokio::test]
    async fn concurrent_put_if_absent_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let store = Arc::new(FileStore::new(dir.path()).unwrap());
            tasks.push(tokio::spawn(async move {
                store
                    .put_if_absent("m/_manifest.json", Bytes::from(vec![i; 64]))
                    .await
                    .unwrap()
            }));
        }
        let mut created = 0;
        for task in tasks {
            if task.await.unwrap() == PutOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        let names: Vec<_> = fs::read_dir(dir.path().join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp files are cleaned up: {names:?}");
    }
}
