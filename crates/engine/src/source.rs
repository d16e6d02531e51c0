//! Sources: the `SourceFunction` trait (replayable from offsets kept in snapshots) and the task loop
//! that drives a source, injects barriers between batches, pauses reading while watermark alignment
//! says the subtask is too far ahead of its group, and finishes bounded inputs with a final
//! checkpoint.

use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

use crate::control::{CoordinatorEvent, TaskControl};
use crate::operator::{OperatorContext, OperatorError, OperatorSnapshot, Output};
use crate::pipeline::{Pipeline, PipelineError};
use crate::task::{TaskEnv, TaskError};
use crate::types::{Barrier, EndOfStream, MAX_WATERMARK, MIN_WATERMARK};
use crate::watermark_alignment::{decide, drift, AlignDecision};

/// How long a source paused by watermark alignment waits for control messages before it looks at
/// the group's minimum again (in one process the minimum moves as the others emit; a bounded wait
/// instead of a wake-up keeps the sources decoupled and costs about a thousand cheap wake-ups/s).
const ALIGNMENT_RECHECK: Duration = Duration::from_millis(1);

/// What a poll produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// More records may be available right away.
    Ready,
    /// Nothing now; poll again after this long (rate limits, empty input).
    Idle(Duration),
    /// Bounded input exhausted.
    Finished,
}

/// A parallel source whose position is part of the snapshot (so it replays exactly after a restore).
pub trait SourceFunction<T>: Send + 'static {
    /// Restore this subtask's share of the source's list state (split offsets), before `open`.
    fn restore(
        &mut self,
        ctx: &OperatorContext,
        entries: Vec<Vec<u8>>,
    ) -> Result<(), OperatorError>;
    /// Start reading; `restored` tells whether the job restored state (then only restored splits are
    /// read; otherwise the source assigns itself its initial splits).
    fn open(&mut self, ctx: &OperatorContext, restored: bool) -> Result<(), OperatorError>;
    /// Emit up to `max_records` records (and optionally a watermark) into `out`.
    fn poll(
        &mut self,
        out: &mut Output<T>,
        max_records: usize,
    ) -> Result<SourceStatus, OperatorError>;
    /// Position as list state entries (one per split, redistributed on rescale).
    fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<Vec<u8>>, OperatorError>;
}

/// Drives a source subtask until the attempt ends.
pub(crate) fn run_source_task<T: Send + 'static>(
    mut source: Box<dyn SourceFunction<T>>,
    source_id: String,
    mut pipeline: Box<dyn Pipeline<T>>,
    env: TaskEnv,
) -> Result<(), TaskError> {
    let ctx = OperatorContext {
        operator_id: source_id.clone(),
        ..env.ctx.clone()
    };
    let restored = env.restored.is_restoring();
    let wrap = |source_err: OperatorError| {
        TaskError::Pipeline(PipelineError::Operator {
            operator: source_id.clone(),
            source: source_err,
        })
    };
    if let Some(state) = env.restored.state_for(&source_id) {
        source.restore(&ctx, state.list).map_err(wrap)?;
    }
    source.open(&ctx, restored).map_err(wrap)?;
    pipeline.open(&env.ctx, &env.restored)?;
    env.opening.opened();

    let mut out: Output<T> = Output::default();
    let mut finished = false;
    // A stop-with-savepoint or final barrier that was emitted and waits for its completion.
    let mut waiting_on: Option<Barrier> = None;
    // Set when the source is idle: wait this long for control messages before polling again.
    let mut pause: Option<Duration> = None;
    // Watermark alignment: the last watermark this subtask emitted, and whether it is paused.
    let mut watermark = MIN_WATERMARK;
    let mut aligned_pause = false;
    loop {
        // Control first: barriers are injected between batches (also while paused by alignment).
        let idle = if finished || waiting_on.is_some() {
            Some(Duration::from_millis(200))
        } else if aligned_pause {
            Some(ALIGNMENT_RECHECK)
        } else {
            pause.take()
        };
        let control = match idle {
            Some(timeout) => match env.control.recv_timeout(timeout) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Err(TaskError::Cancelled),
            },
            None => env.control.try_recv().ok(),
        };
        if let Some(control) = control {
            match control {
                TaskControl::TriggerBarrier(barrier) => {
                    let sync_started = std::time::Instant::now();
                    let entries = source.snapshot(barrier.id).map_err(wrap)?;
                    let mut snapshots = vec![(
                        source_id.clone(),
                        OperatorSnapshot {
                            list: entries,
                            ..OperatorSnapshot::default()
                        },
                    )];
                    pipeline.barrier(&barrier, &mut snapshots)?;
                    env.upload(barrier, snapshots, sync_started);
                    if barrier.is_final || barrier.kind.stops_job() {
                        waiting_on = Some(barrier);
                    }
                }
                TaskControl::NotifyComplete(id) => {
                    pipeline.notify_complete(id)?;
                    if let Some(b) = waiting_on.filter(|b| b.id == id) {
                        let end = if b.is_final {
                            EndOfStream::Drained
                        } else {
                            EndOfStream::Stopped
                        };
                        pipeline.end(end)?;
                        return Ok(());
                    }
                }
                TaskControl::NotifyAborted(id) => {
                    pipeline.notify_aborted(id);
                    if waiting_on.is_some_and(|b| b.id == id) {
                        // The final/stop snapshot failed: resume (a stop) or wait for a retry (final).
                        waiting_on = None;
                    }
                }
                TaskControl::Cancel => return Err(TaskError::Cancelled),
            }
            continue;
        }
        if finished || waiting_on.is_some() {
            continue;
        }
        // Aligned: read only while within the drift of the group's slowest subtask.
        let group_min = match &env.alignment {
            Some(alignment) => {
                let min = alignment.group_min();
                match decide(watermark, min, alignment.max_drift_ms()) {
                    AlignDecision::Read => aligned_pause = false,
                    AlignDecision::Pause => {
                        if !aligned_pause {
                            aligned_pause = true;
                            env.metrics.alignment.paused();
                            tracing::trace!(task = %env.id, watermark, group_min = min, "source paused by watermark alignment");
                        }
                        continue;
                    }
                }
                Some(min)
            }
            None => None,
        };
        match source.poll(&mut out, env.batch_size).map_err(wrap)? {
            SourceStatus::Ready => {}
            SourceStatus::Idle(wait) => {
                pause = Some(wait);
            }
            SourceStatus::Finished => {
                push(&mut out, pipeline.as_mut(), &env)?;
                pipeline.watermark(MAX_WATERMARK)?;
                finished = true;
                if let Some(alignment) = &env.alignment {
                    alignment.publish(MAX_WATERMARK);
                }
                env.send_event(CoordinatorEvent::SourceFinished(env.id));
            }
        }
        if let (Some(alignment), Some(w)) = (&env.alignment, out.watermark) {
            if w > watermark {
                watermark = w;
                alignment.publish(w);
                if let Some(d) = group_min.and_then(|min| drift(w, min)) {
                    env.metrics.alignment.observe_drift(d);
                }
            }
        }
        push(&mut out, pipeline.as_mut(), &env)?;
    }
}

fn push<T>(
    out: &mut Output<T>,
    pipeline: &mut dyn Pipeline<T>,
    env: &TaskEnv,
) -> Result<(), TaskError> {
    // What the source read: what it emitted, unless it dropped some of it (`Output::note_read`).
    let read = out.read.take().unwrap_or(out.records.len() as u64);
    env.metrics.add_records(read);
    if !out.records.is_empty() {
        pipeline.batch(out.take_records())?;
    }
    if let Some(w) = out.watermark.take() {
        pipeline.watermark(w)?;
    }
    Ok(())
}
