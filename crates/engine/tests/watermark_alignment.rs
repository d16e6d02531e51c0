//! Watermark alignment on real threads: a job whose two source subtasks run at very different speeds
//! (one sleeps between small batches, the other reads as fast as it can) keeps the fast one within
//! the drift of the slow one, pauses it while still taking checkpoints, lets it run free once the
//! slow one finished, and produces the same windows as without alignment. Asserted through the
//! engine's alignment figures (pauses, largest drift observed) and the output, never through timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamjob_checkpoint::memory_store::MemoryStore;
use streamjob_checkpoint::store::SnapshotStore;
use streamjob_engine::config::{CheckpointConfig, JobConfig, WatermarkAlignment};
use streamjob_engine::job::JobController;
use streamjob_engine::operator::{OperatorContext, OperatorError, Output, StreamOperator};
use streamjob_engine::operators::window::{Count, WindowAssigner, WindowResult};
use streamjob_engine::runner::{run_with_restarts, MonitorAction, RunOutcome, RunnerOptions};
use streamjob_engine::source::{SourceFunction, SourceStatus};
use streamjob_engine::stream::StreamEnv;
use streamjob_engine::types::Timestamp;

/// Records per batch of the fast subtask (and so the event time one of its batches spans: 1 ms per
/// record).
const BATCH: usize = 16;
const DRIFT_MS: i64 = 200;
const WINDOW_MS: i64 = 50;

/// Subtask `s` emits `counts[s]` records with event times 0, 1, 2, ... ms, watermark = last time;
/// subtasks listed in `slow` emit 4 records per poll and then sleep 2 ms.
struct Timed {
    counts: Vec<u64>,
    slow: Vec<u32>,
    subtask: u32,
    next: u64,
    slept: bool,
}

impl SourceFunction<(u32, Timestamp)> for Timed {
    fn restore(&mut self, _: &OperatorContext, entries: Vec<Vec<u8>>) -> Result<(), OperatorError> {
        if let Some(e) = entries.first() {
            self.next = u64::from_le_bytes(e.as_slice().try_into().unwrap());
        }
        Ok(())
    }
    fn open(&mut self, ctx: &OperatorContext, _restored: bool) -> Result<(), OperatorError> {
        self.subtask = ctx.subtask;
        Ok(())
    }
    fn poll(
        &mut self,
        out: &mut Output<(u32, Timestamp)>,
        max: usize,
    ) -> Result<SourceStatus, OperatorError> {
        let total = self.counts[self.subtask as usize];
        if self.next >= total {
            return Ok(SourceStatus::Finished);
        }
        let slow = self.slow.contains(&self.subtask);
        if slow && !self.slept {
            self.slept = true;
            return Ok(SourceStatus::Idle(Duration::from_millis(2)));
        }
        self.slept = false;
        let n = if slow { 4 } else { max as u64 };
        let end = (self.next + n).min(total);
        for t in self.next..end {
            out.collect((self.subtask, t as Timestamp));
        }
        self.next = end;
        out.emit_watermark(end as Timestamp - 1);
        Ok(SourceStatus::Ready)
    }
    fn snapshot(&mut self, _: u64) -> Result<Vec<Vec<u8>>, OperatorError> {
        Ok(vec![self.next.to_le_bytes().to_vec()])
    }
}

/// Collects window results into a shared map.
struct Collect(Arc<Mutex<BTreeMap<(u32, Timestamp), u64>>>);

impl StreamOperator<WindowResult<u32, u64>, ()> for Collect {
    fn process_batch(
        &mut self,
        batch: Vec<WindowResult<u32, u64>>,
        _: &mut Output<()>,
    ) -> Result<(), OperatorError> {
        let mut map = self.0.lock().unwrap();
        for r in batch {
            *map.entry((r.key, r.start)).or_default() += r.value;
        }
        Ok(())
    }
}

struct Run {
    windows: BTreeMap<(u32, Timestamp), u64>,
    pauses: u64,
    max_drift_ms: i64,
    checkpoints: u64,
}

fn run(counts: Vec<u64>, slow: Vec<u32>, alignment: Option<WatermarkAlignment>) -> Run {
    let parallelism = counts.len() as u32;
    let mut config = JobConfig::new("alignment", parallelism)
        .with_checkpoints(CheckpointConfig::enabled(Duration::from_millis(30)));
    config.batch_size = BATCH;
    let windows = Arc::new(Mutex::new(BTreeMap::new()));
    let sink = Arc::clone(&windows);
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut controller: Option<JobController> = None;
    let outcome = run_with_restarts(
        &config,
        |env: &StreamEnv| {
            let (counts, slow) = (counts.clone(), slow.clone());
            let sink = Arc::clone(&sink);
            env.source_with_alignment("timed", alignment.clone(), move |_| {
                Box::new(Timed {
                    counts: counts.clone(),
                    slow: slow.clone(),
                    subtask: 0,
                    next: 0,
                    slept: false,
                })
            })
            .key_by(|r: &(u32, Timestamp)| r.0)
            .window(WindowAssigner::tumbling(WINDOW_MS), |r| r.1)
            .aggregate("count", Count)
            .sink("collect", move |_| Box::new(Collect(Arc::clone(&sink))));
            Ok(())
        },
        store,
        &RunnerOptions {
            max_restarts: 0,
            ..RunnerOptions::default()
        },
        runtime.handle(),
        |_| {},
        |handle| {
            controller.get_or_insert_with(|| handle.controller());
            MonitorAction::Continue
        },
    )
    .expect("the job runs to its end");
    assert!(matches!(outcome, RunOutcome::Finished { restarts: 0, .. }));
    let controller = controller.expect("the monitor saw the attempt");
    let summary = controller.alignment();
    let windows = windows.lock().unwrap().clone();
    Run {
        windows,
        pauses: summary.pauses,
        max_drift_ms: summary.max_drift_ms,
        checkpoints: controller.progress().completed,
    }
}

/// Every subtask's records fall into complete windows of `WINDOW_MS` records each.
fn expected(counts: &[u64]) -> BTreeMap<(u32, Timestamp), u64> {
    let mut map = BTreeMap::new();
    for (s, &n) in counts.iter().enumerate() {
        for t in 0..n as Timestamp {
            *map.entry((s as u32, t - t % WINDOW_MS)).or_default() += 1;
        }
    }
    map
}

fn aligned() -> WatermarkAlignment {
    WatermarkAlignment::new("timed", Duration::from_millis(DRIFT_MS as u64))
}

#[test]
fn a_fast_source_stays_within_the_drift_of_a_slow_one_and_the_output_is_unchanged() {
    let counts = vec![4_000, 1_200];
    let run = run(counts.clone(), vec![1], Some(aligned()));
    assert_eq!(run.windows, expected(&counts));
    // The fast subtask reaches the drift long before the slow one (300 polls of 2 ms) is done.
    assert!(run.pauses > 0, "the fast source never paused");
    // It reads a batch only within the drift, so no watermark it emits is further ahead than the
    // drift plus one batch; the distance was measured against the minimum it knew.
    assert!(
        run.max_drift_ms <= DRIFT_MS + BATCH as i64,
        "drift {} ms > {} + one batch",
        run.max_drift_ms,
        DRIFT_MS
    );
    assert!(run.max_drift_ms > 0);
    // Paused sources kept taking part in checkpoints (one every 30 ms, and the final one).
    assert!(run.checkpoints >= 2, "{} checkpoints", run.checkpoints);
}

#[test]
fn a_finished_source_does_not_hold_back_the_others() {
    // The slow subtask ends after 200 records; the fast one then reads its remaining 3,800 records
    // (far beyond the drift of the finished one's last watermark) and the job finishes.
    let counts = vec![4_000, 200, 4_000];
    let run = run(counts.clone(), vec![1], Some(aligned()));
    assert_eq!(run.windows, expected(&counts));
    assert!(run.pauses > 0);
    assert!(run.max_drift_ms <= DRIFT_MS + BATCH as i64);
}

#[test]
fn without_alignment_sources_are_never_paused_and_the_output_is_the_same() {
    let counts = vec![4_000, 1_200];
    let run = run(counts.clone(), vec![1], None);
    assert_eq!(run.windows, expected(&counts));
    assert_eq!((run.pauses, run.max_drift_ms), (0, 0));
}
