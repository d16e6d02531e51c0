//! The built-in jobs q5, q7, q8, word-count and sequence-check against independent references: the
//! expected output is computed here from the generators (`NexmarkConfig::event(i)`,
//! `WordsConfig::line(i)`, `i % keys` / `i / keys`) with plain collections, and the committed output
//! of a run (local mode, real file store, checkpoints every 50 ms, so the two-phase-commit sink
//! commits many files) must equal it exactly as a multiset of lines, at parallelism 1 and 3. Then
//! the same with injected failures, and the sequence verifier on clean and damaged output.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streamjob_checkpoint::file_store::FileStore;
use streamjob_checkpoint::store::SnapshotStore;
use streamjob_engine::config::{CheckpointConfig, JobConfig};
use streamjob_engine::connectors::file_sink::committed_files;
use streamjob_engine::connectors::nexmark::{Event, NexmarkConfig};
use streamjob_engine::connectors::words::WordsConfig;
use streamjob_engine::runner::{run_with_restarts, MonitorAction, RunOutcome, RunnerOptions};
use streamjob_worker::jobs::{build_with_fault, validate, FaultHook, JobParams, JobSpecError};
use streamjob_worker::verify::verify_sequence;

const EVENTS: u64 = 200_000;

fn params(job: &str, values: &[(&str, &str)], output: &Path) -> JobParams {
    let mut map: BTreeMap<String, String> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert("output".into(), output.display().to_string());
    JobParams::new(job, map)
}

fn config(parallelism: u32) -> JobConfig {
    JobConfig::new("builtin-test", parallelism)
        .with_max_parallelism(32)
        .with_checkpoints(
            CheckpointConfig::enabled(Duration::from_millis(50))
                .with_timeout(Duration::from_secs(20)),
        )
}

/// How a run went.
struct Run {
    restarts: u32,
    /// Attempts that restored a checkpoint (rather than starting empty).
    restored: u32,
}

/// Run `job` to its end; `fault(attempt)` gives each attempt's fault hook.
fn run_job(
    job: &str,
    values: &[(&str, &str)],
    parallelism: u32,
    dir: &Path,
    fault: impl Fn(u64) -> Option<FaultHook>,
) -> Run {
    let output = dir.join("out");
    let params = params(job, values, &output);
    validate(&params, parallelism).expect("valid parameters");
    let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(dir.join("snap")).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let attempt = AtomicU64::new(0);
    let mut restored = 0;
    let options = RunnerOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..RunnerOptions::default()
    };
    let outcome = run_with_restarts(
        &config(parallelism),
        |env| {
            let hook = fault(attempt.fetch_add(1, Ordering::SeqCst));
            build_with_fault(&params, env, hook).map_err(|e| e.to_string())
        },
        store,
        &options,
        runtime.handle(),
        |info| restored += u32::from(info.restored_from.is_some()),
        |_| MonitorAction::Continue,
    )
    .unwrap();
    match outcome {
        RunOutcome::Finished { restarts, .. } => Run { restarts, restored },
        other => panic!("{job}: {other:?}"),
    }
}

fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for file in committed_files(&dir.join("out")).unwrap() {
        let text = std::fs::read_to_string(file).unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// Equal as multisets, with a readable difference.
fn assert_same_lines(what: &str, mut expected: Vec<String>, actual: Vec<String>) {
    expected.sort();
    if expected == actual {
        return;
    }
    let count = |lines: &[String]| {
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        for l in lines {
            *m.entry(l.clone()).or_default() += 1;
        }
        m
    };
    let (e, a) = (count(&expected), count(&actual));
    let missing: Vec<_> = e
        .iter()
        .filter(|(l, n)| a.get(*l).copied().unwrap_or(0) < **n)
        .map(|(l, _)| l)
        .take(5)
        .collect();
    let extra: Vec<_> = a
        .iter()
        .filter(|(l, n)| e.get(*l).copied().unwrap_or(0) < **n)
        .map(|(l, _)| l)
        .take(5)
        .collect();
    panic!(
        "{what}: expected {} lines, got {}; missing {missing:?}; extra or repeated {extra:?}",
        expected.len(),
        actual.len()
    );
}

fn nexmark_events(n: u64) -> impl Iterator<Item = Event> {
    let config = NexmarkConfig::default();
    (0..n).map(move |i| config.event(i))
}

/// q5: per sliding window, the auctions with the most bids.
fn reference_q5(n: u64, size: i64, slide: i64) -> Vec<String> {
    let mut counts: HashMap<(i64, u64), u64> = HashMap::new();
    for e in nexmark_events(n) {
        if let Event::Bid(b) = e {
            // Every window start s (a multiple of slide) with s <= t < s + size.
            let mut start = b.date_time - b.date_time.rem_euclid(slide);
            while start > b.date_time - size {
                *counts.entry((start, b.auction)).or_default() += 1;
                start -= slide;
            }
        }
    }
    let mut best: BTreeMap<i64, (u64, Vec<u64>)> = BTreeMap::new();
    for ((start, auction), count) in counts {
        let entry = best.entry(start).or_insert((0, Vec::new()));
        if count > entry.0 {
            *entry = (count, vec![auction]);
        } else if count == entry.0 {
            entry.1.push(auction);
        }
    }
    let mut lines = Vec::new();
    for (start, (count, auctions)) in best {
        for a in auctions {
            lines.push(format!("{a},{start},{},{count}", start + size));
        }
    }
    lines
}

/// q7: per tumbling window, the bids with the highest price.
fn reference_q7(n: u64, size: i64) -> Vec<String> {
    let mut best: BTreeMap<i64, Vec<streamjob_engine::connectors::nexmark::Bid>> = BTreeMap::new();
    for e in nexmark_events(n) {
        if let Event::Bid(b) = e {
            let start = b.date_time - b.date_time.rem_euclid(size);
            let bids = best.entry(start).or_default();
            match bids.first().map(|top| top.price) {
                Some(p) if b.price < p => {}
                Some(p) if b.price == p => bids.push(b),
                _ => *bids = vec![b],
            }
        }
    }
    best.into_iter()
        .flat_map(|(start, bids)| {
            bids.into_iter().map(move |b| {
                format!(
                    "{},{},{},{},{},{}",
                    b.auction,
                    b.bidder,
                    b.price,
                    b.channel,
                    b.date_time,
                    start + size
                )
            })
        })
        .collect()
}

/// q8: persons who created an auction in the window in which they registered.
fn reference_q8(n: u64, size: i64) -> Vec<String> {
    let window = |t: i64| t - t.rem_euclid(size);
    let mut persons = Vec::new();
    let mut sold: BTreeSet<(u64, i64)> = BTreeSet::new();
    for e in nexmark_events(n) {
        match e {
            Event::Person(p) => persons.push((p.id, p.name, window(p.date_time))),
            Event::Auction(a) => {
                sold.insert((a.seller, window(a.date_time)));
            }
            Event::Bid(_) => {}
        }
    }
    persons
        .into_iter()
        .filter(|(id, _, start)| sold.contains(&(*id, *start)))
        .map(|(id, name, start)| format!("{id},{name},{start}"))
        .collect()
}

/// word-count: final counts, or counts per tumbling window.
fn reference_word_count(n: u64, vocabulary: u64, window: Option<i64>) -> Vec<String> {
    let config = WordsConfig {
        vocabulary,
        ..WordsConfig::default()
    };
    let mut counts: HashMap<(String, i64), u64> = HashMap::new();
    for i in 0..n {
        let line = config.line(i);
        let start = window.map_or(0, |size| line.time - line.time.rem_euclid(size));
        for word in line.text.split_whitespace() {
            *counts.entry((word.to_string(), start)).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|((word, start), count)| match window {
            None => format!("{word},{count}"),
            Some(size) => format!("{word},{start},{},{count}", start + size),
        })
        .collect()
}

fn reference_sequence(n: u64, keys: u64) -> Vec<String> {
    (0..n)
        .map(|i| format!("{},{},{}", i % keys, i / keys, i / keys + 1))
        .collect()
}

fn no_fault(_: u64) -> Option<FaultHook> {
    None
}

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
        reference_q5(EVENTS, 10_000, 2_000),
    );
    check(
        "nexmark-q5",
        &[("events", &events), ("window", "2s"), ("slide", "500ms")],
        reference_q5(EVENTS, 2_000, 500),
    );
}

#[test]
fn q7_highest_bids_equal_the_reference() {
    let events = EVENTS.to_string();
    check(
        "nexmark-q7",
        &[("events", &events), ("window", "1s")],
        reference_q7(EVENTS, 1_000),
    );
}

#[test]
fn q8_new_users_equal_the_reference() {
    let events = EVENTS.to_string();
    check(
        "nexmark-q8",
        &[("events", &events)],
        reference_q8(EVENTS, 10_000),
    );
}

#[test]
fn word_count_final_and_windowed_equal_the_reference() {
    check(
        "word-count",
        &[("events", "40000"), ("vocabulary", "5000")],
        reference_word_count(40_000, 5000, None),
    );
    check(
        "word-count",
        &[("events", "40000"), ("vocabulary", "500"), ("window", "1s")],
        reference_word_count(40_000, 500, Some(1_000)),
    );
}

#[test]
fn sequence_check_equals_the_reference_and_verifies_exact() {
    check(
        "sequence-check",
        &[("events", "50000"), ("keys", "37")],
        reference_sequence(50_000, 37),
    );
}

/// A hook panicking at the `threshold`-th record of an attempt.
fn panic_after(threshold: Option<u64>) -> Option<FaultHook> {
    let seen = Arc::new(AtomicU64::new(0));
    let hook: FaultHook = Arc::new(move || {
        if let Some(t) = threshold {
            if seen.fetch_add(1, Ordering::Relaxed) == t {
                panic!("injected failure after {t} records");
            }
        }
    });
    Some(hook)
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
        reference_q5(EVENTS, 10_000, 2_000),
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
        reference_q8(EVENTS, 2_000),
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
