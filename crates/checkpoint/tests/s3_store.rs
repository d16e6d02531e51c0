//! `S3Store` against a real S3-protocol server (s3s-fs) that each test starts on a free loopback port.
//!
//! Needs the s3s-fs binary: `bash tests/tools/install-s3s-fs.sh` (or set `S3S_FS_BIN`). Without it
//! the tests fail, they never skip.

use std::sync::Arc;

use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use streamjob_checkpoint::conformance::check_store;
use streamjob_checkpoint::{
    commit_manifest, find_restore_point, job_store, list_snapshots, read_state_file,
    write_state_file, Manifest, OperatorState, PutOutcome, S3Config, S3Store, Segments,
    SnapshotKind, SnapshotLayout, SnapshotStore, StaticCredentials, StoreError, SubtaskState,
    VerifyLevel,
};

#[path = "../../../tests/support/s3s_fs.rs"]
mod s3s_fs;
use s3s_fs::{S3Server, ACCESS_KEY, SECRET_KEY};

const BUCKET: &str = "snapshots";

impl S3Server {
    fn config(&self, prefix: &str, secret: &str) -> S3Config {
        S3Config {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            region: None,
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: secret.into(),
                session_token: None,
            }),
        }
    }

    /// A store under `prefix` in a freshly created bucket.
    async fn store(&self, prefix: &str) -> S3Store {
        let store = S3Store::connect(self.config(prefix, SECRET_KEY))
            .await
            .expect("S3 client");
        if !self.root().join(BUCKET).exists() {
            store
                .client()
                .create_bucket()
                .bucket(BUCKET)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "failed to create the bucket: {}\ns3s-fs log:\n{}",
                        DisplayErrorContext(&e),
                        self.log()
                    )
                });
        }
        store
    }
}

#[tokio::test]
async fn conformance_suite() {
    let server = S3Server::start(&[]);
    check_store(&server.store("").await).await.unwrap();
    check_store(&server.store("deep/prefix").await)
        .await
        .unwrap();
}

#[tokio::test]
async fn put_if_absent_twice() {
    let server = S3Server::start(&[]);
    let store = server.store("p").await;
    let key = "attempts/000001.json";
    assert_eq!(
        store
            .put_if_absent(key, Bytes::from_static(b"first"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        store
            .put_if_absent(key, Bytes::from_static(b"second"))
            .await
            .unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(store.get(key).await.unwrap(), Bytes::from_static(b"first"));
}

#[tokio::test]
async fn list_paginates_and_delete_batches() {
    let server = S3Server::start(&[]);
    let store = server.store("many").await;
    let keys: Vec<String> = (0..1100)
        .map(|i| format!("shared/{i:05}-1.state"))
        .collect();
    futures::stream::iter(&keys)
        .map(|k| store.put(k, Bytes::from_static(b"x")))
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
        .unwrap();
    let listed = store.list("shared/").await.unwrap();
    assert_eq!(listed.len(), 1100, "all pages are read");
    assert!(
        listed
            .iter()
            .zip(&keys)
            .all(|(o, k)| &o.key == k && o.size == 1),
        "sorted, prefix stripped, sizes"
    );

    store.delete(&keys).await.unwrap(); // two DeleteObjects batches
    assert!(store.list("").await.unwrap().is_empty());
}

/// A state file in pieces whose boundaries fall inside and across the 8 MiB parts: stored without
/// joining them, read back equal, with the CRC-32C of the whole.
#[tokio::test]
async fn multipart_upload_of_a_file_in_pieces() {
    let server = S3Server::start(&[]);
    let store = server.store("pieces").await;
    let sizes = [3 << 20, 5, 9 << 20, 7 << 20, 1234];
    let pieces: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (0..*n)
                .map(|j: usize| ((i * 31 + j) % 253) as u8)
                .collect::<Vec<u8>>()
                .into()
        })
        .collect();
    let whole: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
    let file = write_state_file(
        &store,
        "checkpoints/000001-0000000001/op/0001.state",
        Segments::new(pieces),
    )
    .await
    .unwrap();
    assert_eq!(file.size, whole.len() as u64);
    assert_eq!(file.crc32c, crc32c::crc32c(&whole));
    assert_eq!(read_state_file(&store, &file).await.unwrap(), whole);
}

#[tokio::test]
async fn multipart_upload_of_20_mib() {
    let server = S3Server::start(&[]);
    let store = server.store("big").await;
    let body: Bytes = (0..20 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let file = write_state_file(
        &store,
        "checkpoints/000001-0000000001/op/0000.state",
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(file.size, 20 * 1024 * 1024);
    assert_eq!(read_state_file(&store, &file).await.unwrap(), body);

    let head = store
        .client()
        .head_object()
        .bucket(BUCKET)
        .key("big/checkpoints/000001-0000000001/op/0000.state")
        .send()
        .await
        .unwrap();
    let etag = head.e_tag().unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "uploaded as 3 parts of 8 MiB: ETag {etag}"
    );
}

#[tokio::test]
async fn wrong_secret_key_is_refused() {
    let server = S3Server::start(&[]);
    server.store("").await; // creates the bucket with the right key
    let bad = S3Store::connect(server.config("", "not-the-secret"))
        .await
        .unwrap();
    let err = bad.put("k", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("secret key"), "{err}");
    assert!(
        !err.to_string().contains("not-the-secret"),
        "the secret never appears in errors"
    );
    assert!(matches!(
        bad.list("").await.unwrap_err(),
        StoreError::Denied { .. }
    ));
}

#[tokio::test]
async fn missing_bucket_and_dead_server_are_classified() {
    let server = S3Server::start(&[]);
    let mut config = server.config("", SECRET_KEY);
    config.bucket = "no-such-bucket".into();
    let store = S3Store::connect(config).await.unwrap();
    // (s3s-fs creates a bucket folder on PUT; listing checks that the bucket exists.)
    let err = store.list("jobs/").await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("s3://no-such-bucket/jobs/") && message.contains("create the bucket"),
        "{message}"
    );

    let endpoint = server.endpoint.clone();
    drop(server);
    let mut config = S3Config {
        endpoint: Some(endpoint),
        ..Default::default()
    };
    config.bucket = BUCKET.into();
    config.force_path_style = true;
    config.credentials = Some(StaticCredentials {
        access_key_id: "a".into(),
        secret_access_key: "b".into(),
        session_token: None,
    });
    let store = S3Store::connect(config).await.unwrap();
    let err = store.get("k").await.unwrap_err();
    assert!(
        err.is_transient(),
        "connection refused is transient: {err:?}"
    );
}

/// Writes a complete checkpoint with two subtasks through the catalog.
async fn write_checkpoint(store: &dyn SnapshotStore, attempt: u64, id: u64) -> Manifest {
    let dir = SnapshotLayout::checkpoint_dir(attempt, id);
    let mut subtasks = Vec::new();
    for subtask in 0..2u32 {
        let key = SnapshotLayout::state_file(&dir, "counter", subtask).unwrap();
        let file = write_state_file(
            store,
            &key,
            Bytes::from(format!("{id}:{subtask}").repeat(100)),
        )
        .await
        .unwrap();
        subtasks.push(SubtaskState {
            subtask,
            key_group_start: subtask * 64,
            key_group_end: subtask * 64 + 64,
            files: vec![file],
        });
    }
    let mut manifest = Manifest::new(SnapshotKind::Checkpoint, attempt, id, "wordcount");
    manifest.parallelism = 2;
    manifest.operators.push(OperatorState {
        operator_id: "counter".into(),
        subtasks,
    });
    commit_manifest(store, &manifest).await.unwrap();
    manifest
}

#[tokio::test]
async fn snapshot_round_trip_and_corruption() {
    let server = S3Server::start(&[]);
    let root: Arc<dyn SnapshotStore> = Arc::new(server.store("streamjob").await);
    let store = job_store(&root, "default", "wordcount").unwrap();
    assert_eq!(store.url(), "s3://snapshots/streamjob/default/wordcount");

    write_checkpoint(store.as_ref(), 1, 1).await;
    let newest = write_checkpoint(store.as_ref(), 1, 2).await;
    let facts = list_snapshots(store.as_ref()).await.unwrap();
    assert_eq!(facts.len(), 2);
    assert!(facts.iter().all(|f| f.manifest.is_ok()), "{facts:?}");
    let d = find_restore_point(store.as_ref(), VerifyLevel::Deep)
        .await
        .unwrap();
    assert_eq!(d.chosen.as_ref().unwrap().checkpoint_id, 2);

    // Corrupt one object of the newest checkpoint (same size): deep verification skips it.
    let victim = newest.files().nth(1).unwrap();
    let mut body = store.get(&victim.key).await.unwrap().to_vec();
    body[10] ^= 1;
    store.put(&victim.key, Bytes::from(body)).await.unwrap();
    let d = find_restore_point(store.as_ref(), VerifyLevel::Deep)
        .await
        .unwrap();
    assert_eq!(d.chosen.as_ref().unwrap().checkpoint_id, 1);
    assert_eq!(d.skipped.len(), 1);
    let reason = d.skipped[0].reason.to_string();
    assert!(
        reason.contains(&store.location(&victim.key)) && reason.contains("corrupt"),
        "{reason}"
    );
}

#[tokio::test]
async fn bytes_changed_on_the_servers_disk_are_corruption_not_a_transient_error() {
    let server = S3Server::start(&[]);
    let root: Arc<dyn SnapshotStore> = Arc::new(server.store("streamjob").await);
    let store = job_store(&root, "default", "rot").unwrap();
    write_checkpoint(store.as_ref(), 1, 1).await;
    let newest = write_checkpoint(store.as_ref(), 1, 2).await;

    // Flip a byte in the object's file behind the server's back (bit rot, a bad disk): the SDK's
    // response checksum no longer matches. That must count as corruption, never as "retry later".
    let victim = newest.files().nth(1).unwrap();
    let path = server
        .data
        .path()
        .join("root")
        .join(BUCKET)
        .join("streamjob/default/rot")
        .join(&victim.key);
    let mut body = std::fs::read(&path).unwrap();
    body[10] ^= 1;
    std::fs::write(&path, body).unwrap();

    let d = find_restore_point(store.as_ref(), VerifyLevel::Deep)
        .await
        .unwrap();
    assert_eq!(
        d.chosen.as_ref().unwrap().checkpoint_id,
        1,
        "{}",
        d.summary()
    );
    // The deep check left a marker: the operator's manifest-only index skips it as well.
    let shallow = find_restore_point(store.as_ref(), VerifyLevel::Shallow)
        .await
        .unwrap();
    assert_eq!(shallow.chosen.as_ref().unwrap().checkpoint_id, 1);
    assert!(
        shallow.summary().contains("marked unusable"),
        "{}",
        shallow.summary()
    );
}
