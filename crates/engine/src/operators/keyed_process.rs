//! Keyed process functions (Flink `KeyedProcessFunction`): per-key state through `StateRegistry`
//! handles, event-time timers, and output. The operator sets the current key, so a function only sees
//! the state of the record's key. Timers and state are snapshotted per key group.
//!
//! With incremental checkpoints a key group is written either as a full image (state + timers) or
//! as its changes since the previous checkpoint: the changed keys' state and the timer
//! registrations and removals in order. [`IncrementalChain`] decides which, and which earlier
//! files the checkpoint references.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use bytes::Bytes;
use streamjob_checkpoint::manifest::FileRef;

use crate::framing::Reader;
use crate::incremental::{ChainFile, IncrementalChain, RebasePolicy};
use crate::keygroup::key_group_of;
use crate::operator::{
    BaseFile, OperatorContext, OperatorError, OperatorSnapshot, Output, RestoredState,
    StreamOperator,
};
use crate::operators::timer_queue::TimerQueue;
use crate::state::{
    KeyedStateBackend, ListState, MapState, ReducingState, StateRegistry, ValueState,
};
use crate::types::{Barrier, Data, EndOfStream, Key, SnapshotType, Timestamp, MIN_WATERMARK};

/// A function over a keyed stream with state and timers.
pub trait KeyedProcessFunction<K: Key, I, O>: Send + 'static {
    /// Declare states (called once per operator instance, before restore).
    fn open(&mut self, states: &mut StateRegistry<'_, K>);
    /// Handle one record of the current key.
    fn process_element(
        &mut self,
        record: I,
        ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), OperatorError>;
    /// An event-time timer of the current key fired (watermark reached `timestamp`).
    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _ctx: &mut KeyedContext<'_, K, O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// Pending event-time timers, popped by time (then key group and key, for determinism).
struct Timers<K> {
    queue: TimerQueue<K>,
    /// Incremental checkpoints: timer registrations (`true`) and removals since the last snapshot,
    /// per key group offset (empty unless change tracking is on).
    log: Vec<Vec<TimerChange<K>>>,
    first_group: u32,
}

/// A timer registered (`true`) or removed, at a time, for a key.
type TimerChange<K> = (bool, Timestamp, K);

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            queue: TimerQueue::default(),
            log: Vec::new(),
            first_group: 0,
        }
    }
}

impl<K: Key> Timers<K> {
    fn track_changes(&mut self, key_groups: std::ops::Range<u32>) {
        self.first_group = key_groups.start;
        self.log = key_groups.map(|_| Vec::new()).collect();
    }
    #[inline]
    fn record(&mut self, added: bool, ts: Timestamp, key_group: u32, key: &K) {
        if let Some(log) = self.log.get_mut((key_group - self.first_group) as usize) {
            log.push((added, ts, key.clone()));
        }
    }
    fn insert(&mut self, ts: Timestamp, key_group: u32, key: &K) {
        if self.queue.insert(ts, key_group, key.clone()) {
            self.record(true, ts, key_group, key);
        }
    }
    fn remove(&mut self, ts: Timestamp, key_group: u32, key: &K) {
        if self.queue.remove(ts, key_group, key) {
            self.record(false, ts, key_group, key);
        }
    }
    fn pop_first(&mut self) -> Option<(Timestamp, u32, K)> {
        let first = self.queue.pop_first()?;
        self.record(false, first.0, first.1, &first.2);
        Some(first)
    }
    /// The pending timers of the groups `wanted` selects, per group, ordered by (time, key).
    fn by_group(
        &self,
        wanted: impl Fn(u32) -> bool,
    ) -> std::collections::BTreeMap<u32, Vec<(Timestamp, K)>> {
        let mut by_group: std::collections::BTreeMap<u32, Vec<(Timestamp, K)>> =
            std::collections::BTreeMap::new();
        for (ts, kg, key) in self.queue.iter() {
            if wanted(kg) {
                by_group.entry(kg).or_default().push((ts, key.clone()));
            }
        }
        for timers in by_group.values_mut() {
            timers.sort_unstable();
        }
        by_group
    }
    fn changed_groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.log
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, _)| self.first_group + i as u32)
    }
    fn take_changes(&mut self, key_group: u32) -> Vec<TimerChange<K>> {
        self.log
            .get_mut((key_group - self.first_group) as usize)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// Everything a function can do for the current key.
pub struct KeyedContext<'a, K: Key, O> {
    key: &'a K,
    key_group: u32,
    state: &'a mut KeyedStateBackend<K>,
    timers: &'a mut Timers<K>,
    out: &'a mut Output<O>,
    watermark: Timestamp,
}

impl<K: Key, O> KeyedContext<'_, K, O> {
    /// The current key.
    pub fn key(&self) -> &K {
        self.key
    }
    /// Current event time (the last watermark).
    pub fn current_watermark(&self) -> Timestamp {
        self.watermark
    }
    /// Emit a record.
    pub fn collect(&mut self, record: O) {
        self.out.collect(record);
    }
    /// Fire `on_timer` when the watermark reaches `timestamp` (one timer per key and time).
    pub fn register_event_time_timer(&mut self, timestamp: Timestamp) {
        self.timers.insert(timestamp, self.key_group, self.key);
    }
    /// Cancel a timer of the current key.
    pub fn delete_event_time_timer(&mut self, timestamp: Timestamp) {
        self.timers.remove(timestamp, self.key_group, self.key);
    }
    /// Value state of the current key.
    pub fn value<V: Data>(&self, state: ValueState<V>) -> Option<&V> {
        self.state.value(state, self.key_group, self.key)
    }
    /// Mutable value state of the current key, initialised with `init` when absent.
    pub fn value_or_insert_with<V: Data>(
        &mut self,
        state: ValueState<V>,
        init: impl FnOnce() -> V,
    ) -> &mut V {
        self.state
            .value_or_insert_with(state, self.key_group, self.key, init)
    }
    /// Set value state of the current key.
    pub fn set_value<V: Data>(&mut self, state: ValueState<V>, value: V) {
        self.state.set_value(state, self.key_group, self.key, value)
    }
    /// Clear value state of the current key.
    pub fn clear_value<V: Data>(&mut self, state: ValueState<V>) -> Option<V> {
        self.state.clear_value(state, self.key_group, self.key)
    }
    /// Append to list state of the current key.
    pub fn list_add<V: Data>(&mut self, state: ListState<V>, value: V) {
        self.state.list_add(state, self.key_group, self.key, value)
    }
    /// List state of the current key.
    pub fn list<V: Data>(&self, state: ListState<V>) -> &[V] {
        self.state.list(state, self.key_group, self.key)
    }
    /// Clear list state of the current key, returning it.
    pub fn list_clear<V: Data>(&mut self, state: ListState<V>) -> Vec<V> {
        self.state.list_clear(state, self.key_group, self.key)
    }
    /// Map state of the current key (created empty).
    pub fn map_mut<MK: Data + Ord, MV: Data>(
        &mut self,
        state: MapState<MK, MV>,
    ) -> &mut std::collections::BTreeMap<MK, MV> {
        self.state.map_mut(state, self.key_group, self.key)
    }
    /// Map state of the current key, if any.
    pub fn map<MK: Data + Ord, MV: Data>(
        &self,
        state: MapState<MK, MV>,
    ) -> Option<&std::collections::BTreeMap<MK, MV>> {
        self.state.map(state, self.key_group, self.key)
    }
    /// Drop the current key's map when empty.
    pub fn map_remove_if_empty<MK: Data + Ord, MV: Data>(&mut self, state: MapState<MK, MV>) {
        self.state
            .map_remove_if_empty(state, self.key_group, self.key)
    }
    /// Fold into reducing state of the current key.
    pub fn reduce_add<V: Data>(&mut self, state: &ReducingState<V>, value: V) {
        self.state
            .reduce_add(state, self.key_group, self.key, value)
    }
    /// Reducing state of the current key.
    pub fn reduced<V: Data>(&self, state: &ReducingState<V>) -> Option<&V> {
        self.state.reduced(state, self.key_group, self.key)
    }
}

/// Snapshot of one key group, as read: encoded state (a byte string) and the group's timers.
type GroupSnapshot<K> = (Bytes, Vec<(Timestamp, K)>);
/// Changes of one key group, as read: encoded state changes (empty: none) and timer changes in
/// order.
type GroupChanges<K> = (Bytes, Vec<TimerChange<K>>);

/// Split a [`GroupSnapshot`] or [`GroupChanges`]: the state bytes (a slice of `bytes`, no copy),
/// then the timers.
fn split_group<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<(Bytes, T), String> {
    let mut r = Reader::new(bytes);
    let state = bytes.slice_ref(r.bytes("state bytes").map_err(|e| e.to_string())?);
    let timers = bincode::deserialize(r.rest()).map_err(|e| e.to_string())?;
    Ok((state, timers))
}

/// Runs a [`KeyedProcessFunction`] on a hash-partitioned stream.
pub struct KeyedProcessOperator<K: Key, I, O, F, KF> {
    key_of: KF,
    function: F,
    state: Option<KeyedStateBackend<K>>,
    timers: Timers<K>,
    max_parallelism: u32,
    watermark: Timestamp,
    /// `Some` with incremental checkpoints.
    chain: Option<IncrementalChain>,
    /// The restored checkpoint's files the chain builds on (`ChainFile::Adopted` indexes them).
    adopted_files: Vec<FileRef>,
    _io: PhantomData<fn(I) -> O>,
}

impl<K, I, O, F, KF> KeyedProcessOperator<K, I, O, F, KF>
where
    K: Key,
    F: KeyedProcessFunction<K, I, O>,
    KF: Fn(&I) -> K + Send,
{
    /// Wrap a function; `key_of` must be the same key selector the stream was partitioned with.
    pub fn new(key_of: KF, function: F) -> Self {
        Self {
            key_of,
            function,
            state: None,
            timers: Timers::default(),
            max_parallelism: 1,
            watermark: MIN_WATERMARK,
            chain: None,
            adopted_files: Vec::new(),
            _io: PhantomData,
        }
    }

    fn ensure_state(&mut self, ctx: &OperatorContext) {
        if self.state.is_none() {
            let mut backend = KeyedStateBackend::new(ctx.key_groups.clone());
            self.function.open(&mut backend.registry());
            self.state = Some(backend);
            self.max_parallelism = ctx.max_parallelism;
            if ctx.incremental {
                self.chain = Some(IncrementalChain::new(RebasePolicy::default()));
            }
        }
    }

    /// Change tracking starts after a restore, so restored entries do not count as changes (after
    /// a checkpoint the chain builds on the restored files; after a savepoint the first checkpoint
    /// writes full images).
    fn start_change_tracking(&mut self, ctx: &OperatorContext) {
        if self.chain.is_some() {
            if let Some(state) = self.state.as_mut() {
                state.set_change_tracking(true);
            }
            self.timers.track_changes(ctx.key_groups.clone());
        }
    }

    fn encode_error(e: impl std::fmt::Display) -> OperatorError {
        OperatorError::StateEncode {
            operator: "keyed-process".into(),
            reason: e.to_string(),
        }
    }

    /// Every group's full image (savepoints, checkpoints without incremental).
    fn full_snapshot(&self) -> Result<OperatorSnapshot, OperatorError> {
        let state = self
            .state
            .as_ref()
            .expect("operator opened before snapshot");
        let mut timers_of = self.timers.by_group(|_| true);
        let mut keyed = Vec::new();
        for kg in state.key_groups() {
            let timers = timers_of.remove(&kg).unwrap_or_default();
            if let Some(bytes) = Self::encode_image(state, kg, &timers, false)? {
                keyed.push((kg, bytes));
            }
        }
        Ok(OperatorSnapshot {
            keyed,
            ..OperatorSnapshot::default()
        })
    }

    /// One group's image, a [`GroupSnapshot`] written in one buffer; `None` when the group is
    /// empty, unless `keep_empty` (an emptied group's image must supersede its older one).
    fn encode_image(
        state: &KeyedStateBackend<K>,
        kg: u32,
        timers: &[(Timestamp, K)],
        keep_empty: bool,
    ) -> Result<Option<Vec<u8>>, OperatorError> {
        let mut bytes = Vec::new();
        let has_state = state
            .write_group_image(kg, &mut bytes)
            .map_err(Self::encode_error)?;
        if !has_state && timers.is_empty() && !keep_empty {
            return Ok(None);
        }
        bincode::serialize_into(&mut bytes, timers).map_err(Self::encode_error)?;
        Ok(Some(bytes))
    }

    /// An incremental checkpoint: images for the groups the chain plans, changes for the rest.
    fn incremental_snapshot(
        &mut self,
        checkpoint_id: u64,
    ) -> Result<OperatorSnapshot, OperatorError> {
        let state = self
            .state
            .as_mut()
            .expect("operator opened before snapshot");
        let chain = self
            .chain
            .as_mut()
            .expect("incremental snapshot with a chain");
        // Groups holding state matter only when the chain starts (then all are written in full).
        let mut holding: BTreeSet<u32> = BTreeSet::new();
        if !chain.is_started() {
            holding.extend(state.groups_with_state());
            holding.extend(self.timers.queue.iter().map(|(_, kg, _)| kg));
        }
        let mut changed: BTreeSet<u32> = state.changed_groups().collect();
        changed.extend(self.timers.changed_groups());
        let plan = chain.plan(holding, changed);

        let mut snapshot = OperatorSnapshot::default();
        let mut image_sizes = Vec::with_capacity(plan.images.len());
        if !plan.images.is_empty() {
            let mut timers_of = self.timers.by_group(|kg| plan.images.contains(&kg));
            for kg in &plan.images {
                // An emptied group still gets an (empty) image: it supersedes the older one that
                // another group's reference keeps in the file list.
                let timers = timers_of.remove(kg).unwrap_or_default();
                let bytes =
                    Self::encode_image(state, *kg, &timers, true)?.expect("kept even when empty");
                state.forget_changes(*kg);
                self.timers.take_changes(*kg);
                image_sizes.push((*kg, Some(bytes.len() as u64)));
                snapshot.keyed.push((*kg, bytes));
            }
        }
        let mut change_sizes = Vec::with_capacity(plan.changes.len());
        for kg in &plan.changes {
            // A `GroupChanges`: the state changes as a byte string, then the timer changes.
            let mut bytes = Vec::new();
            state
                .write_group_changes(*kg, &mut bytes)
                .map_err(Self::encode_error)?;
            let timer_changes = self.timers.take_changes(*kg);
            bincode::serialize_into(&mut bytes, &timer_changes).map_err(Self::encode_error)?;
            change_sizes.push((*kg, bytes.len() as u64));
            snapshot.keyed_changes.push((*kg, bytes));
        }
        let adopted = &self.adopted_files;
        snapshot.base = chain
            .record(checkpoint_id, &image_sizes, &change_sizes)
            .into_iter()
            .filter_map(|file| match file {
                ChainFile::Own(id) => Some(BaseFile::Own(id)),
                ChainFile::Adopted(i) => adopted.get(i).cloned().map(BaseFile::Adopted),
            })
            .collect();
        Ok(snapshot)
    }

    fn fire_timers(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<O>,
    ) -> Result<(), OperatorError> {
        let state = self.state.as_mut().expect("operator opened before input");
        while let Some(first) = self.timers.queue.first_time() {
            if first > watermark {
                break;
            }
            let (ts, key_group, key) = self.timers.pop_first().expect("non-empty");
            let mut ctx = KeyedContext {
                key: &key,
                key_group,
                state,
                timers: &mut self.timers,
                out,
                watermark,
            };
            self.function.on_timer(ts, &mut ctx)?;
        }
        Ok(())
    }
}

impl<K, I, O, F, KF> StreamOperator<I, O> for KeyedProcessOperator<K, I, O, F, KF>
where
    K: Key,
    I: Send,
    O: Send,
    F: KeyedProcessFunction<K, I, O>,
    KF: Fn(&I) -> K + Send,
{
    fn restore(
        &mut self,
        ctx: &OperatorContext,
        restored: RestoredState,
    ) -> Result<(), OperatorError> {
        self.ensure_state(ctx);
        let decode = |e: crate::state::StateError| OperatorError::StateDecode {
            operator: ctx.operator_id.clone(),
            reason: e.to_string(),
        };
        let mut state_groups = Vec::with_capacity(restored.keyed.len());
        for (key_group, bytes) in restored.keyed {
            let (state_bytes, timers): GroupSnapshot<K> =
                split_group(&bytes).map_err(|e| OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: format!("key group {key_group}: {e}"),
                })?;
            for (ts, key) in timers {
                self.timers.queue.insert(ts, key_group, key);
            }
            if !state_bytes.is_empty() {
                state_groups.push((key_group, state_bytes));
            }
        }
        let state = self.state.as_mut().expect("created above");
        let mut unknown = state.restore(&state_groups).map_err(decode)?;
        let mut state_changes = Vec::with_capacity(restored.keyed_changes.len());
        for (key_group, bytes) in restored.keyed_changes {
            let (changes, timer_changes): GroupChanges<K> =
                split_group(&bytes).map_err(|e| OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: format!("changes of key group {key_group}: {e}"),
                })?;
            for (added, ts, key) in timer_changes {
                if added {
                    self.timers.queue.insert(ts, key_group, key);
                } else {
                    self.timers.queue.remove(ts, key_group, &key);
                }
            }
            if !changes.is_empty() {
                state_changes.push((key_group, changes));
            }
        }
        unknown += state.apply_changes(&state_changes).map_err(decode)?;
        if unknown > 0 {
            tracing::warn!(operator = %ctx.operator_id, unknown, "dropped state entries this job version does not declare");
        }
        // Dropped entries are not in the restored files' view of the state: start the chain over.
        if let (Some(chain), Some(lineage), 0) = (self.chain.as_mut(), restored.lineage, unknown) {
            tracing::debug!(
                operator = %ctx.operator_id,
                files = lineage.files.len(),
                key_groups = lineage.groups.len(),
                "incremental checkpoints build on the restored checkpoint's files"
            );
            chain.adopt(lineage.groups);
            self.adopted_files = lineage.files;
        }
        Ok(())
    }

    fn open(&mut self, ctx: &OperatorContext) -> Result<(), OperatorError> {
        self.ensure_state(ctx);
        self.start_change_tracking(ctx);
        Ok(())
    }

    fn process_batch(&mut self, batch: Vec<I>, out: &mut Output<O>) -> Result<(), OperatorError> {
        let state = self.state.as_mut().expect("operator opened before input");
        for record in batch {
            let key = (self.key_of)(&record);
            let key_group = key_group_of(&key, self.max_parallelism);
            let mut ctx = KeyedContext {
                key: &key,
                key_group,
                state,
                timers: &mut self.timers,
                out,
                watermark: self.watermark,
            };
            self.function.process_element(record, &mut ctx)?;
        }
        Ok(())
    }

    fn process_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<O>,
    ) -> Result<(), OperatorError> {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.fire_timers(watermark, out)?;
        }
        out.emit_watermark(watermark);
        Ok(())
    }

    fn snapshot(&mut self, barrier: &Barrier) -> Result<OperatorSnapshot, OperatorError> {
        match (&barrier.kind, self.chain.is_some()) {
            // Savepoints are self-contained and leave the incremental chain untouched.
            (SnapshotType::Checkpoint, true) => self.incremental_snapshot(barrier.id),
            _ => self.full_snapshot(),
        }
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) {
        // The aborted checkpoint's files may be missing (a failed upload): build on nothing.
        if let Some(chain) = self.chain.as_mut() {
            tracing::debug!(
                checkpoint_id,
                "checkpoint aborted: the next checkpoint writes full images"
            );
            chain.reset();
            self.adopted_files.clear();
        }
    }

    fn end_of_input(&mut self, end: EndOfStream, out: &mut Output<O>) -> Result<(), OperatorError> {
        // A drained input already delivered the MAX watermark, which fired every timer. A stopped job
        // keeps its timers in the savepoint.
        let _ = (end, out);
        Ok(())
    }
}
