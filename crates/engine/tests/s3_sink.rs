//! The S3 sink against a real S3-protocol server (s3s-fs, started per test on a free loopback port):
//! pre-committed uploads stay invisible, commit makes them visible, completing twice is harmless,
//! large outputs go up in several parts.
//!
//! Needs the s3s-fs binary: `bash tests/tools/install-s3s-fs.sh` (or set `S3S_FS_BIN`). Without it
//! the tests fail, they never skip.

use streamjob_checkpoint::{S3Config, StaticCredentials};
use streamjob_engine::connectors::s3_sink::{PendingUpload, S3Output, S3SinkError, MIN_PART_SIZE};
use streamjob_engine::operator::{OperatorContext, Output, RestoredState, StreamOperator};
use streamjob_engine::state::decode_entry;
use streamjob_engine::types::{Barrier, SnapshotType};

#[path = "../../../tests/support/s3s_fs.rs"]
mod s3s_fs;
use s3s_fs::{S3Server, ACCESS_KEY, SECRET_KEY};

const BUCKET: &str = "results";

impl S3Server {
    fn output(&self, prefix: &str) -> S3Output {
        S3Output::new(S3Config {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
            region: None,
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
                session_token: None,
            }),
        })
    }
}

fn barrier(id: u64) -> Barrier {
    Barrier {
        id,
        kind: SnapshotType::Checkpoint,
        is_final: false,
    }
}

type LineSink = Box<dyn StreamOperator<u64, ()>>;

fn sink(output: &S3Output, part_size: usize) -> LineSink {
    Box::new(
        output
            .sink(|n: &u64, line: &mut String| line.push_str(&format!("record-{n:012}")))
            .with_part_size(part_size),
    )
}

fn write(sink: &mut LineSink, records: std::ops::Range<u64>) {
    let mut out = Output::default();
    for chunk in records.collect::<Vec<_>>().chunks(1000) {
        sink.process_batch(chunk.to_vec(), &mut out).unwrap();
    }
}

fn pending_of(sink: &mut LineSink, checkpoint_id: u64) -> Vec<PendingUpload> {
    let snapshot = sink.snapshot(&barrier(checkpoint_id)).unwrap();
    snapshot
        .list
        .iter()
        .map(|e| decode_entry::<PendingUpload>(e).unwrap())
        .collect()
}

fn committed_keys(output: &S3Output) -> Vec<String> {
    output
        .committed()
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

fn lines(records: std::ops::Range<u64>) -> String {
    records.map(|n| format!("record-{n:012}\n")).collect()
}

#[test]
fn pre_committed_output_is_invisible_until_the_checkpoint_completes() {
    let server = S3Server::start(&[BUCKET]);
    let output = server.output("run/out");
    let mut sink = sink(&output, MIN_PART_SIZE);

    write(&mut sink, 0..100);
    let pending = pending_of(&mut sink, 1);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, "run/out/part-0000000001-0000");
    assert_eq!(pending[0].parts.len(), 1);
    assert!(
        output.committed().unwrap().is_empty(),
        "visible before commit"
    );

    // Checkpoint 2's barrier: the next file; checkpoint 1 is still in the list state.
    write(&mut sink, 100..150);
    assert_eq!(pending_of(&mut sink, 2).len(), 2);
    sink.notify_checkpoint_complete(1).unwrap();
    let committed = output.committed().unwrap();
    assert_eq!(committed.len(), 1, "{committed:?}");
    assert_eq!(
        String::from_utf8(output.read(&committed[0].key).unwrap()).unwrap(),
        lines(0..100)
    );
    // A barrier without records writes nothing; completing 3 commits 2.
    assert_eq!(pending_of(&mut sink, 3).len(), 1);
    sink.notify_checkpoint_complete(3).unwrap();
    assert_eq!(
        committed_keys(&output),
        [
            "run/out/part-0000000001-0000",
            "run/out/part-0000000002-0000"
        ]
    );
    assert!(pending_of(&mut sink, 4).is_empty());
}

#[test]
fn a_pending_upload_completed_twice_is_harmless() {
    let server = S3Server::start(&[BUCKET]);
    let output = server.output("twice");
    let mut sink = sink(&output, MIN_PART_SIZE);
    write(&mut sink, 0..500);
    let pending = pending_of(&mut sink, 7).remove(0);
    // The zombie and its successor complete the same upload at the same time, then once more.
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| output.complete(&pending));
        let b = scope.spawn(|| output.complete(&pending));
        (a.join().unwrap(), b.join().unwrap())
    });
    // Both succeed (which one did the work depends on the server's timing).
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a || b, "neither completed the upload");
    assert!(!output.complete(&pending).unwrap());
    // The sink itself (notify after the restored attempt committed it) agrees.
    sink.notify_checkpoint_complete(7).unwrap();
    let committed = output.committed().unwrap();
    assert_eq!(committed.len(), 1);
    assert_eq!(
        String::from_utf8(output.read(&committed[0].key).unwrap()).unwrap(),
        lines(0..500)
    );

    // An upload that is gone while its object is missing (or different) is an error, not success.
    let mut lost = pending.clone();
    lost.key = "twice/part-0000000008-0000".into();
    let err = output.complete(&lost).unwrap_err();
    assert!(matches!(err, S3SinkError::UploadGone { .. }), "{err}");
    let mut resized = pending;
    resized.size += 1;
    let err = output.complete(&resized).unwrap_err();
    assert!(err.to_string().contains("instead of"), "{err}");
}

#[test]
fn large_output_is_uploaded_in_parts_through_the_spill_file() {
    let server = S3Server::start(&[BUCKET]);
    let output = server.output("");
    let mut sink = sink(&output, MIN_PART_SIZE);
    // 20-byte lines: 600k records = 12 MB = 3 parts of 5 MiB (the last smaller).
    write(&mut sink, 0..600_000);
    let pending = pending_of(&mut sink, 1);
    assert_eq!(pending[0].size, 12_000_000);
    let numbers: Vec<_> = pending[0].parts.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(output.committed().unwrap().is_empty());
    sink.notify_checkpoint_complete(1).unwrap();
    let committed = output.committed().unwrap();
    assert_eq!(committed[0].key, "part-0000000001-0000");
    assert_eq!(committed[0].size, 12_000_000);
    assert!(
        output.read(&committed[0].key).unwrap() == lines(0..600_000).into_bytes(),
        "the object differs from the records"
    );
}

fn ctx(subtask: u32, parallelism: u32, attempt: u64, restored: Option<u64>) -> OperatorContext {
    OperatorContext::new("s3-sink-test", "sink", subtask, parallelism, 32)
        .in_attempt(attempt, restored)
}

#[test]
fn a_restored_attempt_commits_pending_uploads_and_rolls_back_later_output() {
    let server = S3Server::start(&[BUCKET]);
    let output = server.output("job");
    // Attempt 1, parallelism 4: checkpoint 5 completes but its notification never arrives (crash);
    // checkpoint 6 was committed by subtasks 1 and 3 before the restore chose checkpoint 5.
    let mut pending = Vec::new();
    for subtask in 0..4 {
        let mut sink = sink(&output, MIN_PART_SIZE);
        sink.open(&ctx(subtask, 4, 1, None)).unwrap();
        let first = u64::from(subtask) * 1000;
        write(&mut sink, first..first + 100);
        let snapshot = sink.snapshot(&barrier(5)).unwrap();
        pending.push(snapshot.list);
        if subtask % 2 == 1 {
            write(&mut sink, first + 100..first + 200);
            sink.snapshot(&barrier(6)).unwrap();
            sink.notify_checkpoint_complete(6).unwrap();
        }
    }
    assert_eq!(
        committed_keys(&output),
        [
            "job/part-0000000005-0001",
            "job/part-0000000005-0003",
            "job/part-0000000006-0001",
            "job/part-0000000006-0003"
        ]
    );

    // Attempt 2 at parallelism 2 restores checkpoint 5: the list state is spread over 2 subtasks.
    for subtask in 0..2u32 {
        let mut sink = sink(&output, MIN_PART_SIZE);
        let list = pending
            .iter()
            .skip(subtask as usize)
            .step_by(2)
            .flatten()
            .cloned()
            .collect();
        sink.restore(
            &ctx(subtask, 2, 2, Some(5)),
            RestoredState {
                list,
                ..RestoredState::default()
            },
        )
        .unwrap();
        sink.open(&ctx(subtask, 2, 2, Some(5))).unwrap();
    }
    // Checkpoint 5 is complete for every subtask; checkpoint 6 (after the restore point) is gone.
    assert_eq!(
        committed_keys(&output),
        [
            "job/part-0000000005-0000",
            "job/part-0000000005-0001",
            "job/part-0000000005-0002",
            "job/part-0000000005-0003"
        ]
    );
    for subtask in 0..4u64 {
        let key = format!("job/part-0000000005-{subtask:04}");
        let first = subtask * 1000;
        assert_eq!(
            String::from_utf8(output.read(&key).unwrap()).unwrap(),
            lines(first..first + 100)
        );
    }
}

/// Multipart uploads the server holds open (s3s-fs keeps one `.upload-<id>.json` per upload in its
/// data root until the upload is completed or aborted).
fn open_uploads(server: &S3Server) -> usize {
    std::fs::read_dir(server.data.path().join("root"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with(".upload-") && name.ends_with(".json")
        })
        .count()
}

/// Keys of the upload journals under the output prefix.
fn journals(server: &S3Server) -> Vec<String> {
    let folder = server
        .data
        .path()
        .join("root")
        .join(BUCKET)
        .join("job/.uploads");
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_next_attempt_aborts_the_uploads_a_killed_attempt_left_incomplete() {
    let server = S3Server::start(&[BUCKET]);
    let output = server.output("job");
    // Attempt 1, parallelism 2. Checkpoint 5 completes; only subtask 0 hears of it before the
    // crash. Checkpoints 6 (both subtasks) and 7 (subtask 1) were pre-committed and never complete.
    let mut restored = Vec::new();
    let mut orphans = Vec::new();
    for subtask in 0..2u32 {
        let mut sink = sink(&output, MIN_PART_SIZE);
        sink.open(&ctx(subtask, 2, 1, None)).unwrap();
        let first = u64::from(subtask) * 1000;
        write(&mut sink, first..first + 100);
        let snapshot = sink.snapshot(&barrier(5)).unwrap();
        if subtask == 0 {
            sink.notify_checkpoint_complete(5).unwrap();
        }
        restored.extend(snapshot.list);
        write(&mut sink, first + 100..first + 200);
        orphans.extend(pending_of(&mut sink, 6));
        if subtask == 1 {
            write(&mut sink, first + 200..first + 300);
            orphans.extend(pending_of(&mut sink, 7));
        }
        // The worker is killed: the sink is dropped without any further call.
    }
    // Each snapshot lists every upload not completed yet: keep each orphan once.
    let mut orphans: Vec<_> = orphans
        .into_iter()
        .filter(|p| p.checkpoint_id > 5)
        .collect();
    orphans.sort_by(|a, b| a.upload_id.cmp(&b.upload_id));
    orphans.dedup();
    assert_eq!(orphans.len(), 3);
    assert_eq!(
        open_uploads(&server),
        4,
        "5 of subtask 1 and the three orphans"
    );
    assert_eq!(
        journals(&server),
        [
            "attempt-000001-subtask-0000.json",
            "attempt-000001-subtask-0001.json"
        ]
    );

    // Attempt 2 at parallelism 1 restores checkpoint 5: subtask 1's pending commit of 5 is
    // completed, the uploads of 6 and 7 are aborted, the old journals are gone.
    let mut sink = sink(&output, MIN_PART_SIZE);
    let state = RestoredState {
        list: restored,
        ..RestoredState::default()
    };
    sink.restore(&ctx(0, 1, 2, Some(5)), state).unwrap();
    sink.open(&ctx(0, 1, 2, Some(5))).unwrap();
    assert_eq!(open_uploads(&server), 0, "incomplete uploads left behind");
    assert_eq!(journals(&server), Vec::<String>::new());
    // Through the API too (one is enough: a gone upload takes the commit's patience to report).
    match output.complete(&orphans[0]) {
        Err(S3SinkError::UploadGone { .. }) => {}
        other => panic!("the upload of {} is still there: {other:?}", orphans[0].key),
    }
    assert_eq!(
        committed_keys(&output),
        ["job/part-0000000005-0000", "job/part-0000000005-0001"]
    );

    // Attempt 2 goes on to its end: its own journal is written at the pre-commit and deleted
    // once the input ended and everything is committed.
    write(&mut sink, 5000..5100);
    sink.snapshot(&barrier(6)).unwrap();
    assert_eq!(journals(&server), ["attempt-000002-subtask-0000.json"]);
    sink.notify_checkpoint_complete(6).unwrap();
    sink.end_of_input(
        streamjob_engine::types::EndOfStream::Drained,
        &mut Output::default(),
    )
    .unwrap();
    assert_eq!(journals(&server), Vec::<String>::new());
    assert_eq!(open_uploads(&server), 0);
    assert_eq!(
        String::from_utf8(output.read("job/part-0000000006-0000").unwrap()).unwrap(),
        lines(5000..5100)
    );
}
