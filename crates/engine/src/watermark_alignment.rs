//! Watermark alignment of sources (Flink FLIP-182). The decision ([`decide`], [`drift`]) is pure;
//! [`AlignmentHub`] is the one shared structure of an attempt in a process: a watermark slot per
//! aligned source subtask of the whole job. Local source tasks write their own slot as they emit
//! watermarks; the slots of subtasks on other workers are written from the reports that travel over
//! the control links (see `cluster::link`). Slots only grow (`fetch_max`), so a late or repeated
//! report can never move a watermark back. No I/O here, no blocking.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::WatermarkAlignment;
use crate::control::TaskId;
use crate::types::{Timestamp, MAX_WATERMARK, MIN_WATERMARK};

/// What an aligned source does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignDecision {
    /// Within the drift: read the next batch.
    Read,
    /// Too far ahead of the group: read nothing until the minimum moved.
    Pause,
}

/// Whether a source at watermark `own` may read, given the group's minimum watermark `group_min`.
/// A source never pauses for itself: when it is the slowest, `own == group_min` and it reads.
pub fn decide(own: Timestamp, group_min: Timestamp, max_drift_ms: i64) -> AlignDecision {
    if own <= group_min.saturating_add(max_drift_ms.max(0)) {
        AlignDecision::Read
    } else {
        AlignDecision::Pause
    }
}

/// How far `own` is ahead of `group_min`, when both are real event times (`None` before every
/// subtask of the group emitted a watermark, and for finished sources).
pub fn drift(own: Timestamp, group_min: Timestamp) -> Option<i64> {
    let real = |t: Timestamp| t != MIN_WATERMARK && t != MAX_WATERMARK;
    (real(own) && real(group_min)).then(|| own.saturating_sub(group_min))
}

/// The minimum over watermarks (`MAX_WATERMARK` for an empty group: nothing holds it back).
pub fn group_min(watermarks: impl IntoIterator<Item = Timestamp>) -> Timestamp {
    watermarks.into_iter().min().unwrap_or(MAX_WATERMARK)
}

#[derive(Debug)]
struct Group {
    name: String,
    max_drift_ms: i64,
    slots: Vec<(TaskId, AtomicI64)>,
}

/// The watermark slots of every aligned source subtask of a job attempt, by group.
#[derive(Debug, Default)]
pub struct AlignmentHub {
    groups: Vec<Group>,
    update_interval: Option<Duration>,
}

impl AlignmentHub {
    /// One group per distinct group name; `sources` lists each aligned source vertex with its
    /// alignment and subtasks. Vertices of one group with different drifts get the smallest one.
    pub fn new(sources: Vec<(WatermarkAlignment, Vec<TaskId>)>) -> Self {
        let mut hub = Self::default();
        for (alignment, tasks) in sources {
            hub.update_interval =
                Some(hub.update_interval.map_or(alignment.update_interval, |i| {
                    i.min(alignment.update_interval)
                }));
            let slots = tasks
                .into_iter()
                .map(|t| (t, AtomicI64::new(MIN_WATERMARK)));
            match hub.groups.iter_mut().find(|g| g.name == alignment.group) {
                Some(group) => {
                    group.max_drift_ms = group.max_drift_ms.min(alignment.max_drift_ms());
                    group.slots.extend(slots);
                }
                None => hub.groups.push(Group {
                    name: alignment.group.clone(),
                    max_drift_ms: alignment.max_drift_ms(),
                    slots: slots.collect(),
                }),
            }
        }
        hub
    }

    /// True when no source is aligned.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// How often slots travel between worker processes at the least (the smallest interval of
    /// any group).
    pub fn update_interval(&self) -> Option<Duration> {
        self.update_interval
    }

    /// When this process sends its watermark table to the others (`None`: nothing is aligned).
    pub fn report_pacer(&self) -> Option<ReportPacer> {
        self.update_interval
            .map(|interval| ReportPacer::new(interval, self.report_step_ms()))
    }

    /// A report also goes out as soon as a watermark moved this far (event-time ms): a quarter of
    /// the smallest drift of any group.
    pub fn report_step_ms(&self) -> i64 {
        self.groups
            .iter()
            .map(|g| g.max_drift_ms)
            .min()
            .map_or(i64::MAX, |drift| (drift / 4).max(1))
    }

    /// The handle of source subtask `task`, when it is aligned.
    pub fn source(self: &Arc<Self>, task: TaskId) -> Option<SourceAlignment> {
        self.groups.iter().enumerate().find_map(|(g, group)| {
            group
                .slots
                .iter()
                .position(|(t, _)| *t == task)
                .map(|slot| SourceAlignment {
                    hub: Arc::clone(self),
                    group: g,
                    slot,
                })
        })
    }

    /// Every slot's watermark (for a report to the other workers).
    pub fn watermarks(&self) -> Vec<(TaskId, Timestamp)> {
        self.groups
            .iter()
            .flat_map(|g| g.slots.iter())
            .map(|(t, w)| (*t, w.load(Ordering::Acquire)))
            .collect()
    }

    /// Take in a report: every slot named moves up to the reported watermark (never down).
    pub fn apply(&self, watermarks: &[(TaskId, Timestamp)]) {
        for (task, watermark) in watermarks {
            for group in &self.groups {
                if let Some((_, slot)) = group.slots.iter().find(|(t, _)| t == task) {
                    slot.fetch_max(*watermark, Ordering::AcqRel);
                }
            }
        }
    }
}

/// When a worker sends its watermark table to the others: at least every `interval` (a
/// heartbeat), and as soon as some watermark moved by `step_ms` since the last report. In real time
/// watermarks move slowly and the heartbeat carries them; when event time runs far ahead of wall
/// time (a catch-up, a replay, a generator) a fixed interval alone would let the sources advance
/// only one drift per interval, whatever the machine can do.
#[derive(Debug)]
pub struct ReportPacer {
    interval: Duration,
    step_ms: i64,
    last: Option<(Instant, Vec<(TaskId, Timestamp)>)>,
}

impl ReportPacer {
    /// Heartbeat every `interval`; early reports once a watermark moved `step_ms`.
    pub fn new(interval: Duration, step_ms: i64) -> Self {
        Self {
            interval,
            step_ms: step_ms.max(1),
            last: None,
        }
    }

    /// The table to send at `now`, if it is due (then it counts as sent).
    pub fn due(
        &mut self,
        table: Vec<(TaskId, Timestamp)>,
        now: Instant,
    ) -> Option<Vec<(TaskId, Timestamp)>> {
        let due = match &self.last {
            None => true,
            Some((at, sent)) => {
                now.saturating_duration_since(*at) >= self.interval
                    || sent.len() != table.len()
                    || sent.iter().zip(&table).any(|((t0, w0), (t1, w1))| {
                        t0 != t1 || w1.saturating_sub(*w0).saturating_abs() >= self.step_ms
                    })
            }
        };
        if !due {
            return None;
        }
        self.last = Some((now, table.clone()));
        Some(table)
    }
}

/// One aligned source subtask's view of its group.
#[derive(Debug, Clone)]
pub struct SourceAlignment {
    hub: Arc<AlignmentHub>,
    group: usize,
    slot: usize,
}

impl SourceAlignment {
    fn group(&self) -> &Group {
        &self.hub.groups[self.group]
    }
    /// The group's name.
    pub fn group_name(&self) -> &str {
        &self.group().name
    }
    /// The group's drift in event-time milliseconds.
    pub fn max_drift_ms(&self) -> i64 {
        self.group().max_drift_ms
    }
    /// The smallest watermark of the group as this process knows it (never above the true one).
    pub fn group_min(&self) -> Timestamp {
        group_min(
            self.group()
                .slots
                .iter()
                .map(|(_, w)| w.load(Ordering::Acquire)),
        )
    }
    /// This subtask emitted `watermark` (`MAX_WATERMARK` once it finished).
    pub fn publish(&self, watermark: Timestamp) {
        self.group().slots[self.slot]
            .1
            .fetch_max(watermark, Ordering::AcqRel);
    }
}

/// What alignment did to one source subtask, for tests, logs and metrics.
#[derive(Debug, Default)]
pub struct AlignmentStats {
    pauses: AtomicU64,
    max_drift_ms: AtomicI64,
}

impl AlignmentStats {
    /// The source stopped reading because it was too far ahead.
    pub fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }
    /// The source emitted a watermark `drift_ms` ahead of the group minimum it knew.
    pub fn observe_drift(&self, drift_ms: i64) {
        self.max_drift_ms.fetch_max(drift_ms, Ordering::Relaxed);
    }
    /// Times the source paused.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
    /// Largest drift observed (0 when none was).
    pub fn max_drift_ms(&self) -> i64 {
        self.max_drift_ms.load(Ordering::Relaxed)
    }
}

/// Watermark alignment over the source subtasks of a process (status, stats, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlignmentSummary {
    /// Times a source subtask paused because it was too far ahead.
    pub pauses: u64,
    /// Largest distance (event-time ms) between a watermark a source subtask emitted and the group
    /// minimum it knew when it decided to read that batch; at most the drift plus the event time of
    /// one batch. The true distance to the slowest subtask is never larger (the known minimum is
    /// never above the true one).
    pub max_drift_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(vertex: u32, subtask: u32) -> TaskId {
        TaskId { vertex, subtask }
    }

    #[test]
    fn reports_go_out_on_the_heartbeat_and_as_soon_as_a_watermark_moved_a_step() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut pacer = ReportPacer::new(ms(200), 2_500);
        let table = |a: Timestamp, b: Timestamp| vec![(task(0, 0), a), (task(0, 1), b)];
        assert!(
            pacer.due(table(MIN_WATERMARK, MIN_WATERMARK), t0).is_some(),
            "the first one"
        );
        assert!(pacer
            .due(table(MIN_WATERMARK, MIN_WATERMARK), t0 + ms(5))
            .is_none());
        // Leaving MIN is a move of any size.
        assert!(pacer.due(table(1_000, MIN_WATERMARK), t0 + ms(6)).is_some());
        // Small moves wait for the heartbeat...
        assert!(pacer
            .due(table(3_499, MIN_WATERMARK), t0 + ms(10))
            .is_none());
        assert!(pacer
            .due(table(3_499, MIN_WATERMARK), t0 + ms(205))
            .is_none());
        assert!(pacer
            .due(table(3_499, MIN_WATERMARK), t0 + ms(206))
            .is_some());
        // ... a step goes out at once, and so does a finished source (MAX).
        assert!(pacer
            .due(table(5_999, MIN_WATERMARK), t0 + ms(207))
            .is_some());
        assert!(pacer
            .due(table(5_999, MAX_WATERMARK), t0 + ms(208))
            .is_some());
        assert!(pacer
            .due(table(5_999, MAX_WATERMARK), t0 + ms(209))
            .is_none());
    }

    #[test]
    fn the_report_step_is_a_quarter_of_the_smallest_drift() {
        let hub = AlignmentHub::new(vec![
            (
                WatermarkAlignment::new("a", Duration::from_secs(10)),
                vec![task(0, 0)],
            ),
            (
                WatermarkAlignment::new("b", Duration::from_secs(2)),
                vec![task(1, 0)],
            ),
        ]);
        assert_eq!(hub.report_step_ms(), 500);
        assert_eq!(AlignmentHub::default().report_step_ms(), i64::MAX);
    }

    #[test]
    fn a_source_reads_within_the_drift_and_pauses_beyond_it() {
        assert_eq!(decide(1_000, 1_000, 500), AlignDecision::Read);
        assert_eq!(decide(1_500, 1_000, 500), AlignDecision::Read);
        assert_eq!(decide(1_501, 1_000, 500), AlignDecision::Pause);
        // The slowest source always reads, even with no drift allowed.
        assert_eq!(decide(1_000, 1_000, 0), AlignDecision::Read);
        assert_eq!(decide(1_001, 1_000, 0), AlignDecision::Pause);
        // A negative drift is treated as none.
        assert_eq!(decide(1_000, 1_000, -5), AlignDecision::Read);
    }

    #[test]
    fn before_every_source_emitted_a_watermark_only_sources_without_one_read() {
        // A subtask that has not emitted yet is at MIN: it reads, the others wait for it.
        assert_eq!(
            decide(MIN_WATERMARK, MIN_WATERMARK, 10),
            AlignDecision::Read
        );
        assert_eq!(decide(0, MIN_WATERMARK, 10), AlignDecision::Pause);
        assert_eq!(
            decide(MIN_WATERMARK + 10, MIN_WATERMARK, 10),
            AlignDecision::Read
        );
    }

    #[test]
    fn finished_sources_never_hold_back_and_a_huge_drift_does_not_overflow() {
        assert_eq!(group_min([MAX_WATERMARK, 7]), 7);
        assert_eq!(group_min([]), MAX_WATERMARK);
        assert_eq!(
            decide(i64::MAX - 1, MAX_WATERMARK, i64::MAX),
            AlignDecision::Read
        );
        assert_eq!(decide(5, 3, i64::MAX), AlignDecision::Read);
    }

    #[test]
    fn drift_is_only_measured_between_real_event_times() {
        assert_eq!(drift(1_200, 1_000), Some(200));
        assert_eq!(drift(1_000, MIN_WATERMARK), None);
        assert_eq!(drift(MAX_WATERMARK, 1_000), None);
        assert_eq!(drift(1_000, MAX_WATERMARK), None);
    }

    #[test]
    fn the_hub_groups_sources_by_name_and_takes_the_smallest_drift() {
        let a = WatermarkAlignment::new("g", Duration::from_millis(100))
            .with_update_interval(Duration::from_millis(300));
        let b = WatermarkAlignment::new("g", Duration::from_millis(50))
            .with_update_interval(Duration::from_millis(150));
        let other = WatermarkAlignment::new("h", Duration::from_millis(10));
        let hub = Arc::new(AlignmentHub::new(vec![
            (a, vec![task(0, 0), task(0, 1)]),
            (b, vec![task(1, 0)]),
            (other, vec![task(2, 0)]),
        ]));
        assert_eq!(hub.update_interval(), Some(Duration::from_millis(150)));
        let s00 = hub.source(task(0, 0)).unwrap();
        let s01 = hub.source(task(0, 1)).unwrap();
        let s10 = hub.source(task(1, 0)).unwrap();
        let s20 = hub.source(task(2, 0)).unwrap();
        assert!(hub.source(task(3, 0)).is_none());
        assert_eq!(s00.group_name(), "g");
        assert_eq!(s00.max_drift_ms(), 50);
        assert_eq!(s20.max_drift_ms(), 10);
        s00.publish(100);
        s01.publish(300);
        assert_eq!(
            s00.group_min(),
            MIN_WATERMARK,
            "task 1#0 has not emitted yet"
        );
        s10.publish(200);
        assert_eq!(s01.group_min(), 100);
        // Another group does not affect this one.
        s20.publish(5);
        assert_eq!(s01.group_min(), 100);
        assert_eq!(s20.group_min(), 5);
        // Watermarks only move forward; a finished source no longer counts.
        s00.publish(50);
        assert_eq!(s00.group_min(), 100);
        s00.publish(MAX_WATERMARK);
        assert_eq!(s00.group_min(), 200);
    }

    #[test]
    fn reports_from_other_workers_move_slots_forward_only() {
        let alignment = WatermarkAlignment::new("g", Duration::from_millis(100));
        let local = Arc::new(AlignmentHub::new(vec![(
            alignment.clone(),
            vec![task(0, 0), task(0, 1)],
        )]));
        let remote = AlignmentHub::new(vec![(alignment, vec![task(0, 0), task(0, 1)])]);
        let mine = local.source(task(0, 0)).unwrap();
        mine.publish(1_000);
        // Worker B runs subtask 1: its report lands in our slot 1, and ours in its slot 0.
        remote.apply(&[(task(0, 1), 400)]);
        local.apply(&remote.watermarks());
        assert_eq!(mine.group_min(), 400);
        remote.apply(&local.watermarks());
        assert_eq!(
            group_min(remote.watermarks().into_iter().map(|(_, w)| w)),
            400
        );
        // An older report (or our own value echoed back lower) changes nothing.
        local.apply(&[(task(0, 1), 300), (task(0, 0), 10), (task(9, 9), 0)]);
        assert_eq!(mine.group_min(), 400);
        assert_eq!(
            local.watermarks(),
            vec![(task(0, 0), 1_000), (task(0, 1), 400)]
        );
    }

    #[test]
    fn stats_keep_the_largest_drift_and_count_pauses() {
        let stats = AlignmentStats::default();
        stats.observe_drift(30);
        stats.observe_drift(10);
        stats.paused();
        stats.paused();
        assert_eq!(stats.max_drift_ms(), 30);
        assert_eq!(stats.pauses(), 2);
    }
}
