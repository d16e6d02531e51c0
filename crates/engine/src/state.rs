//! Keyed state (Flink's ValueState, ListState, MapState, ReducingState) on the heap, partitioned by key
//! group so a snapshot can be split and re-assigned at another parallelism.
//!
//! A function registers its states once (`StateRegistry`) and gets small typed handles; the runtime
//! sets the current key and the function reads and writes through `KeyedStateBackend` with a handle.
//! Access is a vector index, a type check and one hash lookup: no locking, no allocation per record.
//!
//! With incremental checkpoints the backend also records which keys changed since the last snapshot
//! (one set per state and key group, only when enabled). A snapshot can then encode a key group as a
//! full image or as its changes: the new value of every changed key, or its removal.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use bincode::Options as _;
use rustc_hash::{FxBuildHasher, FxHashSet};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::framing::{write_bytes, write_framed, write_u64, FrameError, Reader};
use crate::types::{Data, Key};

type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// Reads a map as serde's `HashMap` does, but allocates the table for all its entries at once
/// (serde caps the up-front capacity, so a large key group grew its table several times while
/// being restored). The entry count is bounded by the input's length (`.0`): every entry takes at
/// least one byte, so a corrupt count cannot make it allocate more than the input justifies.
struct SizedMap<K, V>(usize, PhantomData<fn() -> (K, V)>);

/// A map written by `bincode::serialize`, read with [`SizedMap`].
fn decode_map<K: Key, V: DeserializeOwned>(bytes: &[u8]) -> bincode::Result<FxMap<K, V>> {
    // The options of `bincode::deserialize`.
    let options = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes();
    let mut de = bincode::Deserializer::from_slice(bytes, options);
    serde::de::DeserializeSeed::deserialize(SizedMap(bytes.len(), PhantomData), &mut de)
}

impl<'de, K: Key, V: DeserializeOwned> serde::de::DeserializeSeed<'de> for SizedMap<K, V> {
    type Value = FxMap<K, V>;
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, K: Key, V: DeserializeOwned> serde::de::Visitor<'de> for SizedMap<K, V> {
    type Value = FxMap<K, V>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut access: A,
    ) -> Result<Self::Value, A::Error> {
        let capacity = access.size_hint().unwrap_or(0).min(self.0);
        let mut map = FxMap::with_capacity_and_hasher(capacity, FxBuildHasher);
        while let Some((key, value)) = access.next_entry()? {
            map.insert(key, value);
        }
        Ok(map)
    }
}

/// Failure to encode or decode keyed state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Encoding failed.
    #[error("failed to encode state {state:?}: {reason}")]
    Encode { state: String, reason: String },
    /// Decoding failed (the snapshot was written by an incompatible job version).
    #[error("failed to decode state {state:?} of key group {key_group}: {reason}; the snapshot does not match this job's state types")]
    Decode {
        state: String,
        key_group: u32,
        reason: String,
    },
    /// A key group outside this subtask's range was given to it.
    #[error("key group {key_group} is not owned by this subtask (owns {range:?})")]
    ForeignKeyGroup { key_group: u32, range: Range<u32> },
}

/// Handle of a value state: one optional value per key.
#[derive(Debug)]
pub struct ValueState<V> {
    index: usize,
    _v: PhantomData<fn() -> V>,
}
/// Handle of a list state: a list of values per key.
#[derive(Debug)]
pub struct ListState<V> {
    index: usize,
    _v: PhantomData<fn() -> V>,
}
/// Handle of a map state: a sorted map per key.
#[derive(Debug)]
pub struct MapState<MK, MV> {
    index: usize,
    _v: PhantomData<fn() -> (MK, MV)>,
}
/// Handle of a reducing state: one value per key, folded with a reduce function on `add`.
pub struct ReducingState<V> {
    index: usize,
    reduce: ReduceFn<V>,
}

/// A reduce function folding a value into an accumulator.
type ReduceFn<V> = Arc<dyn Fn(&mut V, V) + Send + Sync>;

macro_rules! copy_handle {
    ($($t:ident<$($g:ident),*>),*) => {$(
        impl<$($g),*> Clone for $t<$($g),*> { fn clone(&self) -> Self { *self } }
        impl<$($g),*> Copy for $t<$($g),*> {}
    )*};
}
copy_handle!(ValueState<V>, ListState<V>, MapState<MK, MV>);

impl<V> Clone for ReducingState<V> {
    fn clone(&self) -> Self {
        Self {
            index: self.index,
            reduce: Arc::clone(&self.reduce),
        }
    }
}

/// A table of per-key state, one hash map per owned key group.
struct Table<K, S> {
    name: String,
    groups: Vec<FxMap<K, S>>,
    /// Keys changed since the last snapshot, per key group (empty unless change tracking is on).
    changed: Vec<FxHashSet<K>>,
    track_changes: bool,
}

impl<K: Key, S> Table<K, S> {
    /// The map of key group `offset`, recording that `key` is about to change.
    #[inline]
    fn group_for_write(&mut self, offset: usize, key: &K) -> &mut FxMap<K, S> {
        if self.track_changes {
            let changed = &mut self.changed[offset];
            if !changed.contains(key) {
                changed.insert(key.clone());
            }
        }
        &mut self.groups[offset]
    }
}

/// Type-erased table, so one backend holds states of different types.
trait ErasedTable<K>: Send {
    fn name(&self) -> &str;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn encode_group(&self, offset: usize) -> Result<Option<Vec<u8>>, StateError>;
    /// Append the group's bincode encoding to `out` (what `encode_group` returns).
    fn encode_group_into(&self, offset: usize, out: &mut Vec<u8>) -> Result<(), StateError>;
    fn decode_group(
        &mut self,
        offset: usize,
        key_group: u32,
        bytes: &[u8],
    ) -> Result<(), StateError>;
    fn entries(&self) -> usize;
    fn has_changes(&self, offset: usize) -> bool;
    fn group_is_empty(&self, offset: usize) -> bool;
    /// The changed keys of a group: `(key, Some(value))` or `(key, None)` for a removal.
    /// Append the changed keys of a group as `(key, Some(value))`, or `(key, None)` for a removal
    /// (a bincode `Vec`).
    fn encode_changes_into(&self, offset: usize, out: &mut Vec<u8>) -> Result<(), StateError>;
    /// How many keys of a group changed.
    fn changed_keys(&self, offset: usize) -> usize;
    fn apply_changes(
        &mut self,
        offset: usize,
        key_group: u32,
        bytes: &[u8],
    ) -> Result<(), StateError>;
    fn clear_changes(&mut self, offset: usize);
    fn set_change_tracking(&mut self, on: bool);
}

impl<K: Key, S: Data> ErasedTable<K> for Table<K, S> {
    fn name(&self) -> &str {
        &self.name
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn encode_group_into(&self, offset: usize, out: &mut Vec<u8>) -> Result<(), StateError> {
        bincode::serialize_into(out, &self.groups[offset]).map_err(|e| StateError::Encode {
            state: self.name.clone(),
            reason: e.to_string(),
        })
    }
    fn encode_group(&self, offset: usize) -> Result<Option<Vec<u8>>, StateError> {
        let group = &self.groups[offset];
        if group.is_empty() {
            return Ok(None);
        }
        bincode::serialize(group)
            .map(Some)
            .map_err(|e| StateError::Encode {
                state: self.name.clone(),
                reason: e.to_string(),
            })
    }
    fn decode_group(
        &mut self,
        offset: usize,
        key_group: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let decoded: FxMap<K, S> = decode_map(bytes).map_err(|e| StateError::Decode {
            state: self.name.clone(),
            key_group,
            reason: e.to_string(),
        })?;
        let group = &mut self.groups[offset];
        if group.is_empty() {
            *group = decoded;
        } else {
            group.extend(decoded);
        }
        Ok(())
    }
    fn entries(&self) -> usize {
        self.groups.iter().map(HashMap::len).sum()
    }
    fn has_changes(&self, offset: usize) -> bool {
        self.changed.get(offset).is_some_and(|c| !c.is_empty())
    }
    fn group_is_empty(&self, offset: usize) -> bool {
        self.groups[offset].is_empty()
    }
    fn encode_changes_into(&self, offset: usize, out: &mut Vec<u8>) -> Result<(), StateError> {
        let Some(changed) = self.changed.get(offset) else {
            return Ok(());
        };
        let group = &self.groups[offset];
        let changes: Vec<(&K, Option<&S>)> = changed.iter().map(|k| (k, group.get(k))).collect();
        bincode::serialize_into(out, &changes).map_err(|e| StateError::Encode {
            state: self.name.clone(),
            reason: e.to_string(),
        })
    }
    fn changed_keys(&self, offset: usize) -> usize {
        self.changed.get(offset).map_or(0, |c| c.len())
    }
    fn apply_changes(
        &mut self,
        offset: usize,
        key_group: u32,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let changes: Vec<(K, Option<S>)> =
            bincode::deserialize(bytes).map_err(|e| StateError::Decode {
                state: self.name.clone(),
                key_group,
                reason: e.to_string(),
            })?;
        let group = &mut self.groups[offset];
        for (key, value) in changes {
            match value {
                Some(v) => {
                    group.insert(key, v);
                }
                None => {
                    group.remove(&key);
                }
            }
        }
        Ok(())
    }
    fn clear_changes(&mut self, offset: usize) {
        if let Some(changed) = self.changed.get_mut(offset) {
            // Keep small sets' memory for the next interval; give back what a burst grew.
            if changed.capacity() > 4096 {
                *changed = FxHashSet::default();
            } else {
                changed.clear();
            }
        }
    }
    fn set_change_tracking(&mut self, on: bool) {
        self.track_changes = on;
        self.changed = if on {
            (0..self.groups.len())
                .map(|_| FxHashSet::default())
                .collect()
        } else {
            Vec::new()
        };
    }
}

/// Registers the states of a keyed function (Flink: `getRuntimeContext().getState(descriptor)`).
pub struct StateRegistry<'a, K> {
    backend: &'a mut KeyedStateBackend<K>,
}

impl<K: Key> StateRegistry<'_, K> {
    fn register<S: Data>(&mut self, name: &str) -> usize {
        if let Some(i) = self.backend.tables.iter().position(|t| t.name() == name) {
            return i;
        }
        let groups = (0..self.backend.key_groups.len())
            .map(|_| FxMap::default())
            .collect();
        let mut table = Table::<K, S> {
            name: name.to_string(),
            groups,
            changed: Vec::new(),
            track_changes: false,
        };
        if self.backend.track_changes {
            table.set_change_tracking(true);
        }
        self.backend.tables.push(Box::new(table));
        self.backend.tables.len() - 1
    }
    /// A value state named `name`.
    pub fn value<V: Data>(&mut self, name: &str) -> ValueState<V> {
        ValueState {
            index: self.register::<V>(name),
            _v: PhantomData,
        }
    }
    /// A list state named `name`.
    pub fn list<V: Data>(&mut self, name: &str) -> ListState<V> {
        ListState {
            index: self.register::<Vec<V>>(name),
            _v: PhantomData,
        }
    }
    /// A map state named `name`.
    pub fn map<MK: Data + Ord, MV: Data>(&mut self, name: &str) -> MapState<MK, MV> {
        MapState {
            index: self.register::<BTreeMap<MK, MV>>(name),
            _v: PhantomData,
        }
    }
    /// A reducing state named `name` folded with `reduce`.
    pub fn reducing<V: Data>(
        &mut self,
        name: &str,
        reduce: impl Fn(&mut V, V) + Send + Sync + 'static,
    ) -> ReducingState<V> {
        ReducingState {
            index: self.register::<V>(name),
            reduce: Arc::new(reduce),
        }
    }
}

/// The keyed state of one operator instance: all its named states for the key groups it owns.
pub struct KeyedStateBackend<K> {
    key_groups: Range<u32>,
    tables: Vec<Box<dyn ErasedTable<K>>>,
    track_changes: bool,
}

/// Encoded content of one key group: every state's entries, by state name.
type GroupBlob = Vec<(String, Vec<u8>)>;

impl<K: Key> KeyedStateBackend<K> {
    /// An empty backend for the given key groups.
    pub fn new(key_groups: Range<u32>) -> Self {
        Self {
            key_groups,
            tables: Vec::new(),
            track_changes: false,
        }
    }

    /// Record changed keys from now on (incremental checkpoints). Off by default: then the write
    /// path costs one branch more than without the feature.
    pub fn set_change_tracking(&mut self, on: bool) {
        self.track_changes = on;
        for table in &mut self.tables {
            table.set_change_tracking(on);
        }
    }

    /// The registry through which functions declare their states.
    pub fn registry(&mut self) -> StateRegistry<'_, K> {
        StateRegistry { backend: self }
    }

    /// Key groups owned.
    pub fn key_groups(&self) -> Range<u32> {
        self.key_groups.clone()
    }

    /// Number of (key, state) entries over all states.
    pub fn entries(&self) -> usize {
        self.tables.iter().map(|t| t.entries()).sum()
    }

    #[inline]
    fn offset(&self, key_group: u32) -> usize {
        debug_assert!(
            self.key_groups.contains(&key_group),
            "key group {key_group} not in {:?}",
            self.key_groups
        );
        (key_group - self.key_groups.start) as usize
    }

    #[inline]
    fn table<S: 'static>(&self, index: usize) -> &Table<K, S> {
        self.tables[index]
            .as_any()
            .downcast_ref::<Table<K, S>>()
            .expect("state handle used with the backend that created it")
    }

    #[inline]
    fn table_mut<S: 'static>(&mut self, index: usize) -> &mut Table<K, S> {
        self.tables[index]
            .as_any_mut()
            .downcast_mut::<Table<K, S>>()
            .expect("state handle used with the backend that created it")
    }

    /// Value of `state` for `key`.
    #[inline]
    pub fn value<V: Data>(&self, state: ValueState<V>, key_group: u32, key: &K) -> Option<&V> {
        let offset = self.offset(key_group);
        self.table::<V>(state.index).groups[offset].get(key)
    }
    /// Mutable value of `state` for `key`, inserted with `init` when absent.
    #[inline]
    pub fn value_or_insert_with<V: Data>(
        &mut self,
        state: ValueState<V>,
        key_group: u32,
        key: &K,
        init: impl FnOnce() -> V,
    ) -> &mut V {
        let offset = self.offset(key_group);
        let group = self
            .table_mut::<V>(state.index)
            .group_for_write(offset, key);
        if !group.contains_key(key) {
            group.insert(key.clone(), init());
        }
        group.get_mut(key).expect("just inserted")
    }
    /// Set the value of `state` for `key`.
    #[inline]
    pub fn set_value<V: Data>(&mut self, state: ValueState<V>, key_group: u32, key: &K, value: V) {
        let offset = self.offset(key_group);
        let group = self
            .table_mut::<V>(state.index)
            .group_for_write(offset, key);
        match group.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                group.insert(key.clone(), value);
            }
        }
    }
    /// Remove the value of `state` for `key`.
    pub fn clear_value<V: Data>(
        &mut self,
        state: ValueState<V>,
        key_group: u32,
        key: &K,
    ) -> Option<V> {
        let offset = self.offset(key_group);
        self.table_mut::<V>(state.index)
            .group_for_write(offset, key)
            .remove(key)
    }
    /// Append to the list of `state` for `key`.
    pub fn list_add<V: Data>(&mut self, state: ListState<V>, key_group: u32, key: &K, value: V) {
        let offset = self.offset(key_group);
        let group = self
            .table_mut::<Vec<V>>(state.index)
            .group_for_write(offset, key);
        match group.get_mut(key) {
            Some(list) => list.push(value),
            None => {
                group.insert(key.clone(), vec![value]);
            }
        }
    }
    /// The list of `state` for `key` (empty when absent).
    pub fn list<V: Data>(&self, state: ListState<V>, key_group: u32, key: &K) -> &[V] {
        let offset = self.offset(key_group);
        self.table::<Vec<V>>(state.index).groups[offset]
            .get(key)
            .map_or(&[], Vec::as_slice)
    }
    /// Remove the list of `state` for `key`.
    pub fn list_clear<V: Data>(&mut self, state: ListState<V>, key_group: u32, key: &K) -> Vec<V> {
        let offset = self.offset(key_group);
        self.table_mut::<Vec<V>>(state.index)
            .group_for_write(offset, key)
            .remove(key)
            .unwrap_or_default()
    }
    /// The map of `state` for `key`, created empty when absent.
    pub fn map_mut<MK: Data + Ord, MV: Data>(
        &mut self,
        state: MapState<MK, MV>,
        key_group: u32,
        key: &K,
    ) -> &mut BTreeMap<MK, MV> {
        let offset = self.offset(key_group);
        let group = self
            .table_mut::<BTreeMap<MK, MV>>(state.index)
            .group_for_write(offset, key);
        if !group.contains_key(key) {
            group.insert(key.clone(), BTreeMap::new());
        }
        group.get_mut(key).expect("just inserted")
    }
    /// The map of `state` for `key`, if any.
    pub fn map<MK: Data + Ord, MV: Data>(
        &self,
        state: MapState<MK, MV>,
        key_group: u32,
        key: &K,
    ) -> Option<&BTreeMap<MK, MV>> {
        let offset = self.offset(key_group);
        self.table::<BTreeMap<MK, MV>>(state.index).groups[offset].get(key)
    }
    /// Drop the map of `state` for `key` when it is empty (keeps the state small).
    pub fn map_remove_if_empty<MK: Data + Ord, MV: Data>(
        &mut self,
        state: MapState<MK, MV>,
        key_group: u32,
        key: &K,
    ) {
        let offset = self.offset(key_group);
        let table = self.table_mut::<BTreeMap<MK, MV>>(state.index);
        if table.groups[offset]
            .get(key)
            .is_some_and(BTreeMap::is_empty)
        {
            table.group_for_write(offset, key).remove(key);
        }
    }
    /// Fold `value` into the reducing state for `key`.
    pub fn reduce_add<V: Data>(
        &mut self,
        state: &ReducingState<V>,
        key_group: u32,
        key: &K,
        value: V,
    ) {
        let offset = self.offset(key_group);
        let reduce = Arc::clone(&state.reduce);
        let group = self
            .table_mut::<V>(state.index)
            .group_for_write(offset, key);
        match group.get_mut(key) {
            Some(acc) => reduce(acc, value),
            None => {
                group.insert(key.clone(), value);
            }
        }
    }
    /// Current value of a reducing state for `key`.
    pub fn reduced<V: Data>(
        &self,
        state: &ReducingState<V>,
        key_group: u32,
        key: &K,
    ) -> Option<&V> {
        let offset = self.offset(key_group);
        self.table::<V>(state.index).groups[offset].get(key)
    }

    /// Encode every non-empty key group: `(key group, blob)` pairs for an `OperatorSnapshot`.
    pub fn snapshot(&self) -> Result<Vec<(u32, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        for key_group in self.key_groups.clone() {
            if let Some(bytes) = self.snapshot_group(key_group)? {
                out.push((key_group, bytes));
            }
        }
        Ok(out)
    }

    /// Encode one key group as a full image (`None` when it holds nothing).
    pub fn snapshot_group(&self, key_group: u32) -> Result<Option<Vec<u8>>, StateError> {
        let offset = self.offset(key_group);
        let mut blob: GroupBlob = Vec::new();
        for table in &self.tables {
            if let Some(bytes) = table.encode_group(offset)? {
                blob.push((table.name().to_string(), bytes));
            }
        }
        encode_blob(&blob)
    }

    /// Append one key group's full image to `out` framed as a bincode byte vector (length, then
    /// bytes): byte for byte `bincode::serialize(&snapshot_group(..).unwrap_or_default())`, without
    /// the intermediate copies. Returns false when the group holds nothing (an empty frame).
    pub fn write_group_image(&self, key_group: u32, out: &mut Vec<u8>) -> Result<bool, StateError> {
        let offset = self.offset(key_group);
        let tables: Vec<&dyn ErasedTable<K>> = self
            .tables
            .iter()
            .filter(|t| !t.group_is_empty(offset))
            .map(|t| t.as_ref())
            .collect();
        write_group_blob(out, &tables, |table, out| {
            table.encode_group_into(offset, out)
        })
    }

    /// Key groups holding any entry.
    pub fn groups_with_state(&self) -> impl Iterator<Item = u32> + '_ {
        self.key_groups.clone().filter(move |kg| {
            let offset = (kg - self.key_groups.start) as usize;
            self.tables.iter().any(|t| !t.group_is_empty(offset))
        })
    }

    /// Key groups with keys changed since their changes were last taken (change tracking on).
    pub fn changed_groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.key_groups.clone().filter(move |kg| {
            let offset = (kg - self.key_groups.start) as usize;
            self.tables.iter().any(|t| t.has_changes(offset))
        })
    }

    /// Encode the changes of one key group (applied with [`Self::apply_changes`] on top of the
    /// group's previous image) and forget them. `None` when nothing changed.
    pub fn take_changes(&mut self, key_group: u32) -> Result<Option<Vec<u8>>, StateError> {
        let mut framed = Vec::new();
        if !self.write_group_changes(key_group, &mut framed)? {
            return Ok(None);
        }
        framed.drain(..8); // the frame's length
        Ok(Some(framed))
    }

    /// Append the changes of one key group to `out` framed as a bincode byte vector (what
    /// [`Self::take_changes`] returns, written in place), and forget them. Returns false when
    /// nothing changed (an empty frame).
    pub fn write_group_changes(
        &mut self,
        key_group: u32,
        out: &mut Vec<u8>,
    ) -> Result<bool, StateError> {
        let offset = self.offset(key_group);
        let changed: Vec<&dyn ErasedTable<K>> = self
            .tables
            .iter()
            .filter(|t| t.has_changes(offset))
            .map(|t| t.as_ref())
            .collect();
        // Room for the changed entries at their in-memory size (values on the heap come on top).
        out.reserve(
            changed
                .iter()
                .map(|t| 24 + t.name().len() + t.changed_keys(offset) * 2 * size_of::<K>())
                .sum::<usize>(),
        );
        let wrote = write_group_blob(out, &changed, |table, out| {
            table.encode_changes_into(offset, out)
        })?;
        for table in &mut self.tables {
            table.clear_changes(offset);
        }
        Ok(wrote)
    }

    /// Forget the recorded changes of a key group (its full image was just taken).
    pub fn forget_changes(&mut self, key_group: u32) {
        let offset = self.offset(key_group);
        for table in &mut self.tables {
            table.clear_changes(offset);
        }
    }

    /// Apply change blobs written by [`Self::take_changes`], in the order they were taken, after
    /// the groups' images were loaded with [`Self::restore`]. Unknown states are ignored and counted.
    pub fn apply_changes<B: AsRef<[u8]>>(
        &mut self,
        changes: &[(u32, B)],
    ) -> Result<usize, StateError> {
        self.load_blobs(changes, |table, offset, key_group, bytes| {
            table.apply_changes(offset, key_group, bytes)
        })
    }

    /// Hand each state's part of each key-group blob to `load`; returns the parts of states this
    /// function version does not declare.
    fn load_blobs<B: AsRef<[u8]>>(
        &mut self,
        groups: &[(u32, B)],
        load: impl Fn(&mut dyn ErasedTable<K>, usize, u32, &[u8]) -> Result<(), StateError>,
    ) -> Result<usize, StateError> {
        let mut unknown = 0;
        for (key_group, bytes) in groups {
            let offset = self.checked_offset(*key_group)?;
            for (name, bytes) in decode_blob(*key_group, bytes.as_ref())? {
                match self.tables.iter_mut().find(|t| t.name() == name) {
                    Some(table) => load(table.as_mut(), offset, *key_group, bytes)?,
                    None => unknown += 1,
                }
            }
        }
        Ok(unknown)
    }

    fn checked_offset(&self, key_group: u32) -> Result<usize, StateError> {
        if !self.key_groups.contains(&key_group) {
            return Err(StateError::ForeignKeyGroup {
                key_group,
                range: self.key_groups.clone(),
            });
        }
        Ok(self.offset(key_group))
    }

    /// Load key group blobs written by [`Self::snapshot`] (possibly by other subtasks at another
    /// parallelism). States not registered by this function version are ignored and counted.
    pub fn restore<B: AsRef<[u8]>>(&mut self, groups: &[(u32, B)]) -> Result<usize, StateError> {
        self.load_blobs(groups, |table, offset, key_group, bytes| {
            table.decode_group(offset, key_group, bytes)
        })
    }
}

/// Append a key-group blob of `tables` framed as a bincode byte vector: the number of states, then
/// each state's name and what `encode` writes for it (framed). An empty frame when `tables` is
/// empty; returns whether it was not.
fn write_group_blob<K: Key>(
    out: &mut Vec<u8>,
    tables: &[&dyn ErasedTable<K>],
    encode: impl Fn(&dyn ErasedTable<K>, &mut Vec<u8>) -> Result<(), StateError>,
) -> Result<bool, StateError> {
    write_framed(out, |out| {
        if tables.is_empty() {
            return Ok(());
        }
        write_u64(out, tables.len() as u64);
        for table in tables {
            write_bytes(out, table.name().as_bytes());
            write_framed(out, |out| encode(*table, out))?;
        }
        Ok(())
    })?;
    Ok(!tables.is_empty())
}

fn encode_blob(blob: &GroupBlob) -> Result<Option<Vec<u8>>, StateError> {
    if blob.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(
        8 + blob
            .iter()
            .map(|(n, b)| 16 + n.len() + b.len())
            .sum::<usize>(),
    );
    write_u64(&mut out, blob.len() as u64);
    for (name, bytes) in blob {
        write_bytes(&mut out, name.as_bytes());
        write_bytes(&mut out, bytes);
    }
    Ok(Some(out))
}

/// The `(state name, bytes)` pairs of a key-group blob (borrowed from `bytes`).
fn decode_blob(key_group: u32, bytes: &[u8]) -> Result<Vec<(String, &[u8])>, StateError> {
    let decode = |e: FrameError| StateError::Decode {
        state: "key group".into(),
        key_group,
        reason: e.to_string(),
    };
    let mut r = Reader::new(bytes);
    let n = r.len(16, "state count").map_err(decode)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.bytes("state name").map_err(decode)?;
        let name = String::from_utf8(name.to_vec()).map_err(|e| StateError::Decode {
            state: "key group".into(),
            key_group,
            reason: e.to_string(),
        })?;
        out.push((name, r.bytes("state bytes").map_err(decode)?));
    }
    Ok(out)
}

/// Encode a value for operator list state.
pub fn encode_entry<T: Serialize>(value: &T) -> Result<Vec<u8>, StateError> {
    bincode::serialize(value).map_err(|e| StateError::Encode {
        state: "list entry".into(),
        reason: e.to_string(),
    })
}

/// Decode a value of operator list state.
pub fn decode_entry<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    bincode::deserialize(bytes).map_err(|e| StateError::Decode {
        state: "list entry".into(),
        key_group: 0,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_decode_as_bincode_wrote_them_and_a_corrupt_count_is_an_error() {
        let map: FxMap<u64, Vec<u8>> = (0..50_000u64).map(|k| (k, vec![k as u8; 3])).collect();
        let bytes = bincode::serialize(&map).unwrap();
        let decoded: FxMap<u64, Vec<u8>> = decode_map(&bytes).unwrap();
        assert_eq!(decoded, map);
        assert!(decoded.capacity() >= map.len());

        // An entry count of 2^62 in a 20-byte input: no up-front allocation of that size, an error.
        let mut corrupt = (1u64 << 62).to_le_bytes().to_vec();
        corrupt.extend_from_slice(&[0; 12]);
        assert!(decode_map::<u64, Vec<u8>>(&corrupt).is_err());
        assert!(decode_map::<u64, Vec<u8>>(&bytes[..bytes.len() - 1]).is_err());
    }
    use crate::keygroup::{key_group_of, key_group_range};

    #[test]
    fn states_round_trip_through_snapshot_and_rescale() {
        let max = 16;
        let mut whole = KeyedStateBackend::<String>::new(0..max);
        let (count, items, attrs, total) = {
            let mut reg = whole.registry();
            (
                reg.value::<u64>("count"),
                reg.list::<i32>("items"),
                reg.map::<String, u8>("attrs"),
                reg.reducing::<u64>("total", |a, b| *a += b),
            )
        };
        for i in 0..100u64 {
            let key = format!("k{}", i % 20);
            let kg = key_group_of(&key, max);
            *whole.value_or_insert_with(count, kg, &key, || 0) += 1;
            whole.list_add(items, kg, &key, i as i32);
            whole
                .map_mut(attrs, kg, &key)
                .insert(format!("a{}", i % 3), 1);
            whole.reduce_add(&total, kg, &key, i);
        }
        let snapshot = whole.snapshot().unwrap();

        // Restore at parallelism 3: every key lands in exactly one subtask with identical state.
        let mut seen = 0;
        for s in 0..3 {
            let range = key_group_range(s, max, 3);
            let mut part = KeyedStateBackend::<String>::new(range.clone());
            let (c, l, m, t) = {
                let mut reg = part.registry();
                (
                    reg.value::<u64>("count"),
                    reg.list::<i32>("items"),
                    reg.map::<String, u8>("attrs"),
                    reg.reducing::<u64>("total", |a, b| *a += b),
                )
            };
            let mine: Vec<_> = snapshot
                .iter()
                .filter(|(kg, _)| range.contains(kg))
                .cloned()
                .collect();
            assert_eq!(part.restore(&mine).unwrap(), 0);
            for k in 0..20 {
                let key = format!("k{k}");
                let kg = key_group_of(&key, max);
                if range.contains(&kg) {
                    seen += 1;
                    assert_eq!(part.value(c, kg, &key), whole.value(count, kg, &key));
                    assert_eq!(part.list(l, kg, &key), whole.list(items, kg, &key));
                    assert_eq!(part.map(m, kg, &key), whole.map(attrs, kg, &key));
                    assert_eq!(part.reduced(&t, kg, &key), whole.reduced(&total, kg, &key));
                }
            }
        }
        assert_eq!(seen, 20);
    }

    #[test]
    fn changes_written_in_place_are_the_bytes_of_take_changes() {
        // One changed key per group, so the expected bytes can be written out by hand: the
        // format of every change file so far (per changed state, in registration order: its name,
        // then the bincode of `Vec<(key, Option<value>)>`).
        let max = 4;
        let twins: Vec<(KeyedStateBackend<u64>, Vec<u64>)> = (0..2)
            .map(|_| {
                let mut b = KeyedStateBackend::<u64>::new(0..max);
                let (count, name) = {
                    let mut reg = b.registry();
                    (reg.value::<u64>("count"), reg.value::<String>("name"))
                };
                let keys: Vec<u64> = (0..max)
                    .map(|kg| (0..).find(|k| key_group_of(k, max) == kg).unwrap())
                    .collect();
                for (kg, key) in keys.iter().enumerate() {
                    b.set_value(count, kg as u32, key, 1);
                    b.set_value(name, kg as u32, key, "old".to_string());
                }
                b.set_change_tracking(true);
                for (kg, key) in keys.iter().enumerate() {
                    if kg == 1 {
                        b.clear_value(count, kg as u32, key);
                        b.clear_value(name, kg as u32, key);
                    } else {
                        b.set_value(count, kg as u32, key, key * 10);
                        b.set_value(name, kg as u32, key, format!("key {key}"));
                    }
                }
                (b, keys)
            })
            .collect();
        let [(mut a, keys), (mut b, _)] = <[_; 2]>::try_from(twins).ok().unwrap();
        for (kg, key) in keys.iter().enumerate() {
            let kg = kg as u32;
            let (count, name) = if kg == 1 {
                (None, None)
            } else {
                (Some(key * 10), Some(format!("key {key}")))
            };
            let mut expected = Vec::new();
            write_framed(&mut expected, |o| {
                write_u64(o, 2);
                write_bytes(o, b"count");
                write_bytes(o, &bincode::serialize(&vec![(*key, count)]).unwrap());
                write_bytes(o, b"name");
                write_bytes(o, &bincode::serialize(&vec![(*key, name)]).unwrap());
                Ok::<_, ()>(())
            })
            .unwrap();
            let mut written = Vec::new();
            assert!(b.write_group_changes(kg, &mut written).unwrap());
            assert_eq!(written, expected, "key group {kg}");
            assert_eq!(
                a.take_changes(kg).unwrap().unwrap(),
                expected[8..],
                "take_changes, key group {kg}"
            );
        }
        assert_eq!(b.changed_groups().count(), 0);
        assert_eq!(a.changed_groups().count(), 0);
    }

    #[test]
    fn image_plus_changes_equals_the_live_state() {
        let max = 8;
        let mut live = KeyedStateBackend::<u64>::new(0..max);
        let (count, items) = {
            let mut reg = live.registry();
            (reg.value::<u64>("count"), reg.list::<u32>("items"))
        };
        live.set_change_tracking(true);
        let mut images = Vec::new();
        let mut changes = Vec::new();
        for round in 0..5u64 {
            for i in 0..40u64 {
                let key = (i * 7 + round) % 30;
                let kg = key_group_of(&key, max);
                *live.value_or_insert_with(count, kg, &key, || 0) += i;
                live.list_add(items, kg, &key, i as u32);
                if i % 5 == round {
                    live.clear_value(count, kg, &key);
                    live.list_clear(items, kg, &key);
                }
            }
            if round == 0 {
                // The first round is the image; later rounds are change sets.
                for kg in 0..max {
                    if let Some(b) = live.snapshot_group(kg).unwrap() {
                        images.push((kg, b));
                    }
                    live.forget_changes(kg);
                }
            } else {
                let changed: Vec<u32> = live.changed_groups().collect();
                assert!(!changed.is_empty());
                for kg in changed {
                    // Odd rounds: the changes written in place into a framed buffer (what
                    // checkpoints use); even rounds: in a buffer of their own.
                    let blob = if round % 2 == 1 {
                        let mut framed = vec![7u8; 3]; // appends after what is there
                        assert!(live.write_group_changes(kg, &mut framed).unwrap());
                        let mut r = Reader::new(&framed[3..]);
                        let blob = r.bytes("changes").unwrap().to_vec();
                        assert!(r.is_done());
                        blob
                    } else {
                        live.take_changes(kg).unwrap().unwrap()
                    };
                    changes.push((kg, blob));
                }
                let mut empty = Vec::new();
                assert!(!live.write_group_changes(0, &mut empty).unwrap());
                assert_eq!(empty, 0u64.to_le_bytes(), "nothing changed: an empty frame");
                assert_eq!(
                    live.changed_groups().count(),
                    0,
                    "taking changes forgets them"
                );
            }
        }
        let mut restored = KeyedStateBackend::<u64>::new(0..max);
        let (c, l) = {
            let mut reg = restored.registry();
            (reg.value::<u64>("count"), reg.list::<u32>("items"))
        };
        restored.restore(&images).unwrap();
        restored.apply_changes(&changes).unwrap();
        assert_eq!(restored.entries(), live.entries());
        for key in 0..30u64 {
            let kg = key_group_of(&key, max);
            assert_eq!(
                restored.value(c, kg, &key),
                live.value(count, kg, &key),
                "key {key}"
            );
            assert_eq!(
                restored.list(l, kg, &key),
                live.list(items, kg, &key),
                "key {key}"
            );
        }
    }

    #[test]
    fn written_images_equal_the_nested_encoding() {
        let mut b = KeyedStateBackend::<String>::new(0..4);
        let (v, l) = {
            let mut reg = b.registry();
            (reg.value::<u64>("v"), reg.list::<String>("l"))
        };
        for i in 0..50u64 {
            let key = format!("k{i}");
            let kg = key_group_of(&key, 4);
            b.set_value(v, kg, &key, i);
            if i % 3 == 0 {
                b.list_add(l, kg, &key, format!("x{i}"));
            }
        }
        for kg in 0..4 {
            let nested =
                bincode::serialize(&b.snapshot_group(kg).unwrap().unwrap_or_default()).unwrap();
            let mut direct = vec![7u8];
            assert!(b.write_group_image(kg, &mut direct).unwrap());
            assert_eq!(&direct[1..], nested.as_slice(), "key group {kg}");
        }
        let empty = KeyedStateBackend::<u64>::new(0..1);
        let mut out = Vec::new();
        assert!(!empty.write_group_image(0, &mut out).unwrap());
        assert_eq!(out, bincode::serialize(&Vec::<u8>::new()).unwrap());
    }

    #[test]
    fn without_change_tracking_nothing_is_recorded() {
        let mut b = KeyedStateBackend::<u64>::new(0..4);
        let v = b.registry().value::<u64>("v");
        b.set_value(v, 1, &1, 5);
        assert_eq!(b.changed_groups().count(), 0);
        assert_eq!(b.take_changes(1).unwrap(), None);
    }

    #[test]
    fn foreign_key_group_is_rejected_and_garbage_fails_to_decode() {
        let mut b = KeyedStateBackend::<u64>::new(0..4);
        let _ = b.registry().value::<u64>("v");
        assert!(matches!(
            b.restore(&[(9, vec![])]),
            Err(StateError::ForeignKeyGroup { .. })
        ));
        assert!(matches!(
            b.restore(&[(1, vec![0xff; 3])]),
            Err(StateError::Decode { .. })
        ));
    }
}
