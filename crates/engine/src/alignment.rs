//! Barrier alignment at a task with several input channels (pure: no I/O, no channels).
//!
//! Exactly-once: when a barrier arrives on a channel, that channel is blocked until the same barrier
//! arrived on every other live channel; then the task snapshots and forwards the barrier, and all
//! channels are unblocked. At-least-once: channels are never blocked; the task snapshots when the
//! barrier has arrived on every live channel. An ended channel counts as having delivered every barrier.

use std::collections::BTreeMap;

use crate::config::CheckpointingMode;
use crate::types::Barrier;

/// What the task must do after a barrier or an end of channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlignAction {
    /// Keep going (exactly-once: the channel is now blocked).
    Wait,
    /// Every live channel delivered the barrier: snapshot, forward it, unblock all channels.
    Snapshot(Barrier),
}

/// Tracks barriers across the input channels of one task.
#[derive(Debug)]
pub struct BarrierAligner {
    mode: CheckpointingMode,
    ended: Vec<bool>,
    blocked: Vec<bool>,
    /// Barriers seen but not yet complete: id -> (barrier, channels that delivered it).
    pending: BTreeMap<u64, (Barrier, Vec<bool>)>,
    /// Newest barrier id already snapshotted; older barriers are ignored.
    last_done: Option<u64>,
}

impl BarrierAligner {
    /// An aligner for `channels` inputs.
    pub fn new(channels: usize, mode: CheckpointingMode) -> Self {
        Self {
            mode,
            ended: vec![false; channels],
            blocked: vec![false; channels],
            pending: BTreeMap::new(),
            last_done: None,
        }
    }

    /// True while the channel must not be read (exactly-once alignment in progress).
    pub fn is_blocked(&self, channel: usize) -> bool {
        self.blocked[channel]
    }

    /// True when every channel has ended.
    pub fn all_ended(&self) -> bool {
        self.ended.iter().all(|&e| e)
    }

    /// A barrier arrived on `channel`.
    pub fn on_barrier(&mut self, channel: usize, barrier: Barrier) -> AlignAction {
        if self.last_done.is_some_and(|done| barrier.id <= done) {
            return AlignAction::Wait;
        }
        let channels = self.ended.len();
        let entry = self
            .pending
            .entry(barrier.id)
            .or_insert_with(|| (barrier, vec![false; channels]));
        entry.1[channel] = true;
        if self.mode == CheckpointingMode::ExactlyOnce {
            self.blocked[channel] = true;
        }
        self.complete_ready().unwrap_or(AlignAction::Wait)
    }

    /// `channel` delivered its end of stream.
    pub fn on_end(&mut self, channel: usize) -> AlignAction {
        self.ended[channel] = true;
        self.blocked[channel] = false;
        self.complete_ready().unwrap_or(AlignAction::Wait)
    }

    /// The oldest pending barrier that every live channel delivered, if any.
    fn complete_ready(&mut self) -> Option<AlignAction> {
        let (&id, (barrier, seen)) = self.pending.iter().next()?;
        let complete = seen.iter().zip(&self.ended).all(|(&s, &e)| s || e);
        if !complete {
            return None;
        }
        let barrier = *barrier;
        self.pending.remove(&id);
        self.last_done = Some(id);
        // Older pending barriers can no longer complete in order: drop them.
        self.pending.retain(|&other, _| other > id);
        self.blocked.iter_mut().for_each(|b| *b = false);
        Some(AlignAction::Snapshot(barrier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SnapshotType;

    fn b(id: u64) -> Barrier {
        Barrier {
            id,
            kind: SnapshotType::Checkpoint,
            is_final: false,
        }
    }

    #[test]
    fn exactly_once_blocks_until_all_channels_deliver() {
        let mut a = BarrierAligner::new(3, CheckpointingMode::ExactlyOnce);
        assert_eq!(a.on_barrier(0, b(1)), AlignAction::Wait);
        assert!(a.is_blocked(0) && !a.is_blocked(1));
        assert_eq!(a.on_barrier(2, b(1)), AlignAction::Wait);
        assert!(a.is_blocked(2));
        assert_eq!(a.on_barrier(1, b(1)), AlignAction::Snapshot(b(1)));
        assert!((0..3).all(|c| !a.is_blocked(c)));
    }

    #[test]
    fn at_least_once_never_blocks() {
        let mut a = BarrierAligner::new(2, CheckpointingMode::AtLeastOnce);
        assert_eq!(a.on_barrier(0, b(1)), AlignAction::Wait);
        assert!(!a.is_blocked(0));
        // Channel 0 runs ahead to barrier 2 before channel 1 delivers barrier 1.
        assert_eq!(a.on_barrier(0, b(2)), AlignAction::Wait);
        assert_eq!(a.on_barrier(1, b(1)), AlignAction::Snapshot(b(1)));
        assert_eq!(a.on_barrier(1, b(2)), AlignAction::Snapshot(b(2)));
    }

    #[test]
    fn ended_channel_counts_as_delivered() {
        let mut a = BarrierAligner::new(2, CheckpointingMode::ExactlyOnce);
        assert_eq!(a.on_barrier(0, b(5)), AlignAction::Wait);
        assert_eq!(a.on_end(1), AlignAction::Snapshot(b(5)));
        assert_eq!(a.on_barrier(0, b(6)), AlignAction::Snapshot(b(6)));
        assert!(!a.all_ended());
        a.on_end(0);
        assert!(a.all_ended());
    }

    #[test]
    fn single_channel_snapshots_immediately_and_ignores_stale() {
        let mut a = BarrierAligner::new(1, CheckpointingMode::ExactlyOnce);
        assert_eq!(a.on_barrier(0, b(3)), AlignAction::Snapshot(b(3)));
        assert_eq!(a.on_barrier(0, b(2)), AlignAction::Wait);
        assert!(!a.is_blocked(0));
    }
}
