//! Keyed process functions (Flink `KeyedProcessFunction`): per-key state through `StateRegistry`
//! handles, event-time timers, and output. The operator sets the current key, so a function only sees
//! the state of the record's key. Timers and state are snapshotted per key group.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use crate::keygroup::key_group_of;
use crate::operator::{
    OperatorContext, OperatorError, OperatorSnapshot, Output, RestoredState, StreamOperator,
};
use crate::state::{
    KeyedStateBackend, ListState, MapState, ReducingState, StateRegistry, ValueState,
};
use crate::types::{Barrier, Data, EndOfStream, Key, Timestamp, MIN_WATERMARK};

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

/// Pending event-time timers, ordered by time (then key group and key, for determinism).
struct Timers<K: Ord> {
    queue: BTreeSet<(Timestamp, u32, K)>,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Self {
            queue: BTreeSet::new(),
        }
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
        self.timers
            .queue
            .insert((timestamp, self.key_group, self.key.clone()));
    }
    /// Cancel a timer of the current key.
    pub fn delete_event_time_timer(&mut self, timestamp: Timestamp) {
        self.timers
            .queue
            .remove(&(timestamp, self.key_group, self.key.clone()));
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

/// Snapshot of one key group: encoded state and the group's timers.
type GroupSnapshot<K> = (Vec<u8>, Vec<(Timestamp, K)>);

/// Runs a [`KeyedProcessFunction`] on a hash-partitioned stream.
pub struct KeyedProcessOperator<K: Key, I, O, F, KF> {
    key_of: KF,
    function: F,
    state: Option<KeyedStateBackend<K>>,
    timers: Timers<K>,
    max_parallelism: u32,
    watermark: Timestamp,
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
            _io: PhantomData,
        }
    }

    fn ensure_state(&mut self, ctx: &OperatorContext) {
        if self.state.is_none() {
            let mut backend = KeyedStateBackend::new(ctx.key_groups.clone());
            self.function.open(&mut backend.registry());
            self.state = Some(backend);
            self.max_parallelism = ctx.max_parallelism;
        }
    }

    fn fire_timers(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<O>,
    ) -> Result<(), OperatorError> {
        let state = self.state.as_mut().expect("operator opened before input");
        while let Some(first) = self.timers.queue.first() {
            if first.0 > watermark {
                break;
            }
            let (ts, key_group, key) = self.timers.queue.pop_first().expect("non-empty");
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
            let (state_bytes, timer_bytes): (Vec<u8>, Vec<(Timestamp, K)>) =
                bincode::deserialize(&bytes).map_err(|e| OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: format!("key group {key_group}: {e}"),
                })?;
            for (ts, key) in timer_bytes {
                self.timers.queue.insert((ts, key_group, key));
            }
            if !state_bytes.is_empty() {
                state_groups.push((key_group, state_bytes));
            }
        }
        let state = self.state.as_mut().expect("created above");
        let unknown = state.restore(&state_groups).map_err(decode)?;
        if unknown > 0 {
            tracing::warn!(operator = %ctx.operator_id, unknown, "dropped state entries this job version does not declare");
        }
        Ok(())
    }

    fn open(&mut self, ctx: &OperatorContext) -> Result<(), OperatorError> {
        self.ensure_state(ctx);
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

    fn snapshot(&mut self, _barrier: &Barrier) -> Result<OperatorSnapshot, OperatorError> {
        let state = self
            .state
            .as_ref()
            .expect("operator opened before snapshot");
        let encode = |e: String| OperatorError::StateEncode {
            operator: "keyed-process".into(),
            reason: e,
        };
        let mut by_group: std::collections::BTreeMap<u32, GroupSnapshot<K>> = state
            .snapshot()
            .map_err(|e| encode(e.to_string()))?
            .into_iter()
            .map(|(kg, bytes)| (kg, (bytes, Vec::new())))
            .collect();
        for (ts, kg, key) in &self.timers.queue {
            by_group.entry(*kg).or_default().1.push((*ts, key.clone()));
        }
        let mut keyed = Vec::with_capacity(by_group.len());
        for (kg, group) in by_group {
            keyed.push((
                kg,
                bincode::serialize(&group).map_err(|e| encode(e.to_string()))?,
            ));
        }
        Ok(OperatorSnapshot {
            keyed,
            list: Vec::new(),
        })
    }

    fn end_of_input(&mut self, end: EndOfStream, out: &mut Output<O>) -> Result<(), OperatorError> {
        // A drained input already delivered the MAX watermark, which fired every timer. A stopped job
        // keeps its timers in the savepoint.
        let _ = (end, out);
        Ok(())
    }
}
