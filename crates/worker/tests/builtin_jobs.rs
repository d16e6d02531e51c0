//! The built-in jobs q5, q7, q8, word-count and sequence-check against independent references
//! (`support/reference.rs`): the committed output of a run must equal the reference exactly as a
//! multiset of lines, at parallelism 1 and 3, through injected failures, and rescaled through a
//! savepoint; the sequence verifier passes clean output and reports damaged output.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use streamjob_engine::connectors::file_sink::committed_files;
use streamjob_engine::runner::RunOutcome;
use streamjob_worker::jobs::{validate, JobParams, JobSpecError};
use streamjob_worker::verify::verify_sequence;

use support::reference;
use support::{
    assert_same_lines, no_fault, output_lines, panic_after, params, run_job, run_job_with,
};

const EVENTS: u64 = 200_000;

/// Run at parallelism 1 and 3 and compare both to `expected`.
fn check(job: &str, values: &[(&str, &str)], expected: Vec<String>) {
    assert!(
        expected.len() >= 10,
        "{job}: the reference is too small to test anything ({} lines)",
        expected.len()
    );
    for parallelism in [1, 3] {
        let tmp = tempfile::tempdir().unwrap();
        let run = run_job(job, values, parallelism, tmp.path(), no_fault);
        assert_eq!(run.restarts, 0, "{job}");
        let actual = output_lines(tmp.path());
        eprintln!(
            "{job} at parallelism {parallelism}: {} lines as expected, in {} committed files",
            actual.len(),
            committed_files(&tmp.path().join("out")).unwrap().len()
        );
        assert_same_lines(
            &format!("{job} at parallelism {parallelism}"),
            expected.clone(),
            actual,
        );
    }
}

#[test]
fn q5_hot_items_equal_the_reference() {
    let events = EVENTS.to_string();
    check(
        "nexmark-q5",
        &[("events", &events)],
        reference::q5(EVENTS, 10_000, 2_000),
    );
    check(
        "nexmark-q5",
        &[("events", &events), ("window", "2s"), ("slide", "500ms")],
        reference::q5(EVENTS, 2_000, 500),
    );
}

#[test]
fn q7_highest_bids_equal_the_reference() {
    let events = EVENTS.to_string();
    check(
        "nexmark-q7",
        &[("events", &events), ("window", "1s")],
        reference::q7(EVENTS, 1_000),
    );
}

#[test]
fn q8_new_users_equal_the_reference() {
    let events = EVENTS.to_string();
    check(
        "nexmark-q8",
        &[("events", &events)],
        reference::q8(EVENTS, 10_000),
    );
}

#[test]
fn word_count_final_and_windowed_equal_the_reference() {
    check(
        "word-count",
        &[("events", "40000"), ("vocabulary", "5000")],
        reference::word_count(40_000, 5000, None),
    );
    check(
        "word-count",
        &[("events", "40000"), ("vocabulary", "500"), ("window", "1s")],
        reference::word_count(40_000, 500, Some(1_000)),
    );
}

#[test]
fn sequence_check_equals_the_reference_and_verifies_exact() {
    check(
        "sequence-check",
        &[("events", "50000"), ("keys", "37")],
        reference::sequence(50_000, 37),
    );
}

#[test]
fn large_state_equals_the_reference() {
    check(
        "large-state",
        &[("events", "30000"), ("keys", "5000"), ("value-bytes", "37")],
        reference::large_state(30_000, 5000, 37),
    );
}

#[test]
fn q5_is_exactly_once_through_injected_failures() {
    let tmp = tempfile::tempdir().unwrap();
    // Three failing attempts, each after some records (rate-limited so checkpoints complete
    // between failures and restores have something to restore).
    let thresholds = [30_000u64, 55_000, 12_000];
    let events = EVENTS.to_string();
    let run = run_job(
        "nexmark-q5",
        &[("events", &events), ("rate", "200000")],
        3,
        tmp.path(),
        |attempt| panic_after(thresholds.get(attempt as usize).copied()),
    );
    assert_eq!(run.restarts, 3);
    assert!(run.restored > 0, "no attempt restored a checkpoint");
    assert_same_lines(
        "q5 through failures",
        reference::q5(EVENTS, 10_000, 2_000),
        output_lines(tmp.path()),
    );
}

#[test]
fn q8_is_exactly_once_through_injected_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let thresholds = [45_000u64, 20_000];
    let events = EVENTS.to_string();
    let run = run_job(
        "nexmark-q8",
        &[("events", &events), ("rate", "200000"), ("window", "2s")],
        2,
        tmp.path(),
        |attempt| panic_after(thresholds.get(attempt as usize).copied()),
    );
    assert_eq!(run.restarts, 2);
    assert!(run.restored > 0, "no attempt restored a checkpoint");
    assert_same_lines(
        "q8 through failures",
        reference::q8(EVENTS, 2_000),
        output_lines(tmp.path()),
    );
}

#[test]
fn sequence_check_through_failures_verifies_exact_and_damage_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (keys, events) = (50u64, 120_000u64);
    let thresholds = [20_000u64, 35_000, 5_000];
    let run = run_job(
        "sequence-check",
        &[
            ("events", &events.to_string()),
            ("keys", &keys.to_string()),
            ("rate", "150000"),
        ],
        3,
        tmp.path(),
        |attempt| panic_after(thresholds.get(attempt as usize).copied()),
    );
    assert_eq!(run.restarts, 3);
    assert!(run.restored > 0, "no attempt restored a checkpoint");
    let out = tmp.path().join("out");
    let report = verify_sequence(&out, keys, events).unwrap();
    assert!(report.is_exact(), "{report}");
    assert_eq!(
        (
            report.expected,
            report.committed,
            report.lost,
            report.duplicated
        ),
        (events, events, 0, 0),
        "{report}"
    );
    assert!(report.files > 3, "few commits: {report}");

    // Damage the committed output: drop one line of one file, repeat one line of another.
    let files = committed_files(&out).unwrap();
    let (first, last) = (&files[0], &files[files.len() - 1]);
    let text = std::fs::read_to_string(first).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(lines.len() / 2);
    std::fs::write(first, lines.join("\n") + "\n").unwrap();
    let text = std::fs::read_to_string(last).unwrap();
    let repeated = text.lines().next().unwrap().to_string();
    std::fs::write(last, format!("{text}{repeated}\n")).unwrap();
    let damaged = verify_sequence(&out, keys, events).unwrap();
    assert_eq!((damaged.lost, damaged.duplicated), (1, 1), "{damaged}");
    assert!(!damaged.is_exact());
}

/// Stop with a savepoint part-way at parallelism 2, resume at parallelism 3: the local
/// pre-aggregation's partials and the keyed window state are redistributed, the output is exact.
fn rescale_through_savepoint(job: &str, values: &[(&str, &str)], expected: Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let (outcome, _) = run_job_with(job, values, 2, tmp.path(), no_fault, None, Some(EVENTS / 3));
    let RunOutcome::Stopped { savepoint, .. } = outcome else {
        panic!("{job}: expected a stop with savepoint, got {outcome:?}");
    };
    let partial = output_lines(tmp.path()).len();
    assert!(
        partial < expected.len(),
        "{job}: the savepoint came too late to test anything"
    );
    let folder = savepoint
        .location
        .rsplit_once("/savepoints/")
        .map(|(_, name)| format!("savepoints/{name}"))
        .unwrap();
    let (outcome, restored) =
        run_job_with(job, values, 3, tmp.path(), no_fault, Some(folder), None);
    assert!(
        matches!(outcome, RunOutcome::Finished { restarts: 0, .. }),
        "{outcome:?}"
    );
    assert_eq!(restored, 1);
    assert_same_lines(
        &format!("{job} rescaled 2 -> 3 ({partial} lines before the savepoint)"),
        expected,
        output_lines(tmp.path()),
    );
}

#[test]
fn q5_and_q7_rescale_through_a_savepoint() {
    let events = EVENTS.to_string();
    rescale_through_savepoint(
        "nexmark-q5",
        &[
            ("events", &events),
            ("rate", "150000"),
            ("window", "2s"),
            ("slide", "500ms"),
        ],
        reference::q5(EVENTS, 2_000, 500),
    );
    rescale_through_savepoint(
        "nexmark-q7",
        &[("events", &events), ("rate", "150000"), ("window", "1s")],
        reference::q7(EVENTS, 1_000),
    );
}

#[test]
fn parameters_are_validated() {
    let out = Path::new("/tmp/unused");
    let err = |job: &str, values: &[(&str, &str)]| {
        validate(&params(job, values, out), 2).expect_err("invalid parameters accepted")
    };
    for job in [
        "nexmark-q5",
        "nexmark-q7",
        "nexmark-q8",
        "word-count",
        "sequence-check",
    ] {
        assert!(
            matches!(err(job, &[("events", "10"), ("colour", "red")]), JobSpecError::Unknown { ref param, .. } if param == "colour"),
            "{job}"
        );
        let no_output = JobParams::new(job, BTreeMap::from([("events".into(), "10".into())]));
        assert!(matches!(
            validate(&no_output, 2),
            Err(JobSpecError::Missing { .. })
        ));
        validate(&params(job, &[("events", "10")], out), 2).expect("defaults are valid");
    }
    let message = err("nexmark-q5", &[("window", "10s"), ("slide", "3s")]).to_string();
    assert!(message.contains("multiple of the slide"), "{message}");
    assert!(matches!(
        err("nexmark-q7", &[("window", "0s")]),
        JobSpecError::Invalid { .. }
    ));
    let message = err("word-count", &[("events", "0")]).to_string();
    assert!(message.contains("set `window`"), "{message}");
    validate(
        &params("word-count", &[("events", "0"), ("window", "10s")], out),
        2,
    )
    .expect("unbounded windowed word count");
    assert!(matches!(
        err("sequence-check", &[("keys", "0")]),
        JobSpecError::Invalid { ref param, .. } if param == "keys"
    ));
    let message = err("nexmark-q9", &[]).to_string();
    assert!(
        message.contains("nexmark-q8") && message.contains("sequence-check"),
        "{message}"
    );
}

#[test]
fn every_example_manifest_names_a_built_in_job_with_valid_parameters() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let options = streamjob_worker::local::LocalOptions {
                manifest: path.clone(),
                ..Default::default()
            };
            let job = streamjob_worker::local::prepare(&options)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked.push(job.params.job().to_string());
        }
    }
    for job in ["word-count", "sequence-check", "windowed-count"] {
        assert!(checked.iter().any(|j| j == job), "no example runs {job}");
    }
}

#[test]
fn local_mode_takes_the_s3_endpoint_region_and_path_style_from_the_manifest() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../manifests/examples/windowed-count-s3.yaml");
    let options = streamjob_worker::local::LocalOptions {
        manifest: path,
        ..Default::default()
    };
    let job = streamjob_worker::local::prepare(&options).unwrap();
    assert!(
        job.storage_url
            .starts_with("s3://streamjob-snapshots/prod/"),
        "{}",
        job.storage_url
    );
    assert_eq!(
        job.s3.endpoint.as_deref(),
        Some("http://minio.storage:9000")
    );
    assert_eq!(job.s3.region.as_deref(), Some("us-east-1"));
    assert_eq!(job.s3.force_path_style, Some(true));
    // Credentials are never in the manifest: the environment (the operator's Secret) gives them.
    assert_eq!(job.s3.access_key_id, None);
}

#[test]
fn output_may_be_an_s3_url_and_bad_ones_say_why() {
    let job = |output: &str| {
        JobParams::new(
            "windowed-count",
            BTreeMap::from([
                ("events".into(), "10".into()),
                ("output".into(), output.into()),
            ]),
        )
    };
    validate(&job("s3://results/runs/one"), 2).expect("S3 output");
    validate(&job("s3://results"), 2).expect("S3 output at the bucket root");
    for (bad, says) in [
        ("s3://Results/x", "lowercase"),
        ("s3://ab", "3 to 63"),
        ("s3://results/a/../b", "prefix"),
        ("http://host/x", "unsupported scheme"),
    ] {
        let err = validate(&job(bad), 2).unwrap_err();
        assert!(
            matches!(err, JobSpecError::Invalid { ref param, .. } if param == "output"),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains(says), "{bad}: {err}");
    }
    let half_keys = streamjob_checkpoint::url::S3Options {
        access_key_id: Some("key-without-secret".into()),
        ..Default::default()
    };
    let err = validate(&job("s3://results/x").with_s3(half_keys), 2).unwrap_err();
    assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}

/// `--stats-json`'s restore figures: none on a fresh start; after a restore, the time until every
/// task had loaded its state, which includes the part before the tasks started (the download).
#[test]
fn a_restored_run_reports_its_restore_time_and_a_fresh_one_none() {
    let tmp = tempfile::tempdir().unwrap();
    let options = streamjob_worker::local::LocalOptions {
        manifest: Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../manifests/examples/windowed-count.yaml"),
        checkpoint_dir: Some(tmp.path().join("snap").display().to_string()),
        set: vec![
            ("events".into(), "50000".into()),
            (
                "output".into(),
                tmp.path().join("out").display().to_string(),
            ),
        ],
        ..Default::default()
    };
    let run = || {
        let job = streamjob_worker::local::prepare(&options).unwrap();
        streamjob_worker::local::run_with_stats(job, false).unwrap()
    };
    let (outcome, fresh) = run();
    assert!(
        matches!(outcome, RunOutcome::Finished { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        (fresh.restore_millis, fresh.restore_download_millis),
        (None, None)
    );
    // The second run restores the first one's final checkpoint from the same folder.
    let (outcome, restored) = run();
    assert!(
        matches!(outcome, RunOutcome::Finished { .. }),
        "{outcome:?}"
    );
    let (total, download) = (
        restored
            .restore_millis
            .expect("a restore time after a restore"),
        restored.restore_download_millis.expect("its download part"),
    );
    assert!(
        download <= total,
        "download {download} ms > restore {total} ms"
    );
}
