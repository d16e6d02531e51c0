//! The one trait every operator implements (`StreamOperator`), the buffer operators emit into
//! (`Output`), and the state an operator puts into a snapshot (`OperatorSnapshot`).
//!
//! Operators work on batches: one virtual call per batch, plain loops inside. An operator never blocks
//! and never does I/O on the record path; snapshots return bytes that the task uploads asynchronously.

use std::ops::Range;

use bytes::Bytes;
use serde::Serialize;
use streamjob_checkpoint::manifest::{FileContents, FileRef};
use streamjob_checkpoint::segments::Segments;

use crate::config::SnapshotCompression;
use crate::framing;
use crate::incremental::AdoptedGroup;
use crate::keygroup::key_group_range;
use crate::types::{Barrier, EndOfStream, Timestamp};

/// Failure inside an operator; fails the job attempt (the job restarts from the latest checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// User code reported a failure.
    #[error("operator failed: {0}")]
    Failed(String),
    /// State from a snapshot could not be decoded (snapshot of another job version?).
    #[error("failed to decode state of operator {operator}: {reason}; restore a snapshot taken by a compatible job or start without state")]
    StateDecode { operator: String, reason: String },
    /// State could not be encoded.
    #[error("failed to encode state of operator {operator}: {reason}")]
    StateEncode { operator: String, reason: String },
    /// An external system (file system, object store) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where an operator instance runs.
#[derive(Debug, Clone)]
pub struct OperatorContext {
    /// Job name.
    pub job_name: String,
    /// Stable operator id (state in snapshots is stored under it).
    pub operator_id: String,
    /// This subtask's index.
    pub subtask: u32,
    /// Number of subtasks of this operator.
    pub parallelism: u32,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Key groups owned by this subtask.
    pub key_groups: Range<u32>,
    /// Job attempt (fences older attempts' side effects).
    pub attempt: u64,
    /// Checkpoint id the attempt restored from (`None`: started with empty state).
    pub restored_checkpoint: Option<u64>,
    /// Incremental checkpoints: keyed operators write changes and reference earlier files.
    pub incremental: bool,
}

impl OperatorContext {
    /// Subtask `subtask` of `parallelism` with its share of `max_parallelism` key groups, in
    /// attempt 1, with empty state and full checkpoints ([`Self::in_attempt`] changes the attempt).
    pub fn new(
        job_name: impl Into<String>,
        operator_id: impl Into<String>,
        subtask: u32,
        parallelism: u32,
        max_parallelism: u32,
    ) -> Self {
        Self {
            job_name: job_name.into(),
            operator_id: operator_id.into(),
            subtask,
            parallelism,
            max_parallelism,
            key_groups: key_group_range(subtask, max_parallelism, parallelism),
            attempt: 1,
            restored_checkpoint: None,
            incremental: false,
        }
    }

    /// The same subtask in `attempt`, restored from checkpoint `restored` (`None`: empty state).
    pub fn in_attempt(self, attempt: u64, restored: Option<u64>) -> Self {
        Self {
            attempt,
            restored_checkpoint: restored,
            ..self
        }
    }
}

/// State of one operator instance in a snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorSnapshot {
    /// Keyed state: one encoded full image per key group written (all non-empty groups, unless
    /// the snapshot is incremental).
    pub keyed: Vec<(u32, Vec<u8>)>,
    /// Incremental checkpoints: changes of key groups since their image, applied after it.
    pub keyed_changes: Vec<(u32, Vec<u8>)>,
    /// Operator (non-keyed) list state: entries are redistributed round-robin on rescale.
    pub list: Vec<Vec<u8>>,
    /// Incremental checkpoints: earlier files of this operator instance the snapshot still
    /// references, oldest first.
    pub base: Vec<BaseFile>,
}

/// An earlier file an incremental snapshot references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseFile {
    /// This instance's file of an earlier checkpoint of this attempt (its upload is in the task's
    /// ledger, or the snapshot is declined).
    Own(u64),
    /// A file of the checkpoint the attempt restored, already verified by the restore.
    Adopted(FileRef),
}

impl OperatorSnapshot {
    /// True when there is nothing to store and nothing referenced.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty()
            && self.keyed_changes.is_empty()
            && self.list.is_empty()
            && self.base.is_empty()
    }
    /// A snapshot of operator list state only: one encoded entry per item (pending sink commits,
    /// source splits).
    pub fn from_list<T: Serialize>(operator_id: &str, items: &[T]) -> Result<Self, OperatorError> {
        let list = items
            .iter()
            .map(|item| {
                crate::state::encode_entry(item).map_err(|e| OperatorError::StateEncode {
                    operator: operator_id.to_string(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            list,
            ..Self::default()
        })
    }
    /// True when this snapshot writes no file of its own (it may still reference earlier ones).
    pub fn writes_nothing(&self) -> bool {
        self.keyed.is_empty() && self.keyed_changes.is_empty() && self.list.is_empty()
    }
}

/// The stored form of an operator instance's own snapshot file (without `base`, which the
/// manifest records as the file list).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateFileBody {
    /// Full key-group images (read from a file: slices of its bytes, no copies).
    pub keyed: Vec<(u32, Bytes)>,
    /// Key-group changes.
    pub keyed_changes: Vec<(u32, Bytes)>,
    /// Operator list state.
    pub list: Vec<Vec<u8>>,
}

/// Key-group bytes at least this long are a piece of the encoded file of their own; shorter ones
/// are copied next to their framing.
pub const OWN_SEGMENT: usize = 4096;

/// First bytes of a state file in format 2 (files without them are the earlier format: `keyed`
/// and `list` only).
const STATE_FILE_MAGIC: &[u8; 5] = b"SJSF\x02";
/// First bytes of a state file in format 3: format 2 where every key group's bytes start with a
/// codec byte ([`RAW`] or [`LZ4`]). Written when snapshot compression is on.
const STATE_FILE_MAGIC_CODEC: &[u8; 5] = b"SJSF\x03";
/// Codec byte: the key group's bytes follow as encoded.
const RAW: u8 = 0;
/// Codec byte: the key group's length as a little-endian u32, then its bytes as an LZ4 block.
const LZ4: u8 = 1;
/// A key group is stored compressed only if that saves at least a tenth of it.
const WORTH_COMPRESSING: f64 = 0.9;

impl StateFileBody {
    /// Bytes of every blob (the file is a little larger).
    pub fn blob_bytes(&self) -> usize {
        self.keyed
            .iter()
            .chain(&self.keyed_changes)
            .map(|(_, b)| b.len())
            .chain(self.list.iter().map(Vec::len))
            .sum()
    }

    /// What the file holds, for the manifest (a restore skips files without groups it needs).
    pub fn contents(&self) -> FileContents {
        FileContents::new(
            self.keyed
                .iter()
                .chain(&self.keyed_changes)
                .map(|(kg, _)| *kg),
            self.list.len(),
        )
    }

    /// The file, with the format marker (the bincode layout of the struct), as pieces: the
    /// framing in small buffers and every key group's bytes of at least [`OWN_SEGMENT`] (or their
    /// compressed form) as a piece of its own, so the file is stored without a copy of the state.
    /// With compression this takes CPU time in proportion to the state: call it off task threads.
    pub fn encode(&self, compression: SnapshotCompression) -> Segments {
        let mut parts = Vec::new();
        let mut head = Vec::with_capacity(4096);
        head.extend_from_slice(match compression {
            SnapshotCompression::None => STATE_FILE_MAGIC,
            SnapshotCompression::Lz4 => STATE_FILE_MAGIC_CODEC,
        });
        for groups in [&self.keyed, &self.keyed_changes] {
            framing::write_u64(&mut head, groups.len() as u64);
            for (kg, blob) in groups {
                framing::write_u32(&mut head, *kg);
                let stored = match compression {
                    SnapshotCompression::None => blob.clone(),
                    SnapshotCompression::Lz4 => match lz4_packed(blob) {
                        Some(packed) => packed, // starts with its codec byte
                        None => {
                            // Raw: the codec byte goes next to the framing, the bytes follow.
                            framing::write_u64(&mut head, blob.len() as u64 + 1);
                            head.push(RAW);
                            push_piece(&mut parts, &mut head, blob.clone());
                            continue;
                        }
                    },
                };
                framing::write_u64(&mut head, stored.len() as u64);
                push_piece(&mut parts, &mut head, stored);
            }
        }
        framing::write_list(&mut head, &self.list);
        parts.push(Bytes::from(head));
        Segments::new(parts)
    }

    /// Decode a state file of any format. Uncompressed key groups' bytes are slices of `bytes`
    /// (they keep the file's buffer alive, and copy nothing).
    pub fn decode(bytes: &Bytes) -> Result<Self, framing::FrameError> {
        let (format, body) = if let Some(body) = bytes.strip_prefix(STATE_FILE_MAGIC_CODEC) {
            (3, body)
        } else if let Some(body) = bytes.strip_prefix(STATE_FILE_MAGIC) {
            (2, body)
        } else {
            (1, &bytes[..])
        };
        let mut r = framing::Reader::new(body);
        let mut keyed = framing::read_groups(&mut r, bytes)?;
        let mut keyed_changes = if format >= 2 {
            framing::read_groups(&mut r, bytes)?
        } else {
            Vec::new()
        };
        let list = framing::read_list(&mut r)?;
        if !r.is_done() {
            return Err(framing::FrameError {
                at: body.len() - r.rest().len(),
                what: "trailing bytes after the state",
            });
        }
        if format == 3 {
            for (_, blob) in keyed.iter_mut().chain(keyed_changes.iter_mut()) {
                *blob = unpacked(blob)?;
            }
        }
        Ok(Self {
            keyed,
            keyed_changes,
            list,
        })
    }
}

/// Append `piece` to the file: as a piece of its own when large, else copied into `head`.
fn push_piece(parts: &mut Vec<Bytes>, head: &mut Vec<u8>, piece: Bytes) {
    if piece.len() >= OWN_SEGMENT {
        parts.push(Bytes::from(std::mem::take(head)));
        parts.push(piece); // shares the buffer
    } else {
        head.extend_from_slice(&piece);
    }
}

/// A key group's bytes compressed with LZ4, behind the [`LZ4`] codec byte and the length; `None`
/// when that does not save at least a tenth (stored raw then).
fn lz4_packed(blob: &[u8]) -> Option<Bytes> {
    let len = u32::try_from(blob.len()).ok()?;
    let mut out = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(blob.len())];
    out[0] = LZ4;
    out[1..5].copy_from_slice(&len.to_le_bytes());
    let written = lz4_flex::block::compress_into(blob, &mut out[5..]).ok()?;
    if (5 + written) as f64 > blob.len() as f64 * WORTH_COMPRESSING {
        return None;
    }
    out.truncate(5 + written);
    Some(Bytes::from(out))
}

/// The key group's bytes behind a codec byte (format 3).
fn unpacked(stored: &Bytes) -> Result<Bytes, framing::FrameError> {
    let bad = |what| framing::FrameError { at: 0, what };
    match stored.first() {
        Some(&RAW) => Ok(stored.slice(1..)),
        Some(&LZ4) if stored.len() >= 5 => {
            let len = u32::from_le_bytes(stored[1..5].try_into().expect("4 bytes")) as usize;
            // LZ4 expands at most about 255 times: a larger length is corrupt, not a reason to
            // allocate it.
            if len > (stored.len() - 5).saturating_mul(256) {
                return Err(bad(
                    "an LZ4 key group longer than its compressed bytes allow",
                ));
            }
            lz4_flex::block::decompress(&stored[5..], len)
                .map(Bytes::from)
                .map_err(|_| bad("an LZ4 key group that does not decompress"))
        }
        Some(_) => Err(bad("a key group with an unknown codec")),
        None => Err(bad("a key group without its codec byte")),
    }
}

/// The state handed to an operator instance on restore: only the key groups it owns and its share of
/// list entries.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    /// Keyed state blobs (full images) for key groups in this subtask's range (slices of the
    /// downloaded files).
    pub keyed: Vec<(u32, Bytes)>,
    /// Changes to apply on top of those images, in the order they were written.
    pub keyed_changes: Vec<(u32, Bytes)>,
    /// This subtask's share of the list entries.
    pub list: Vec<Vec<u8>>,
    /// Restored from a checkpoint: which of its files hold each restored key group's image and
    /// changes, for an incremental chain to build on (`None` after a savepoint: its files are
    /// never referenced by later checkpoints).
    pub lineage: Option<RestoredLineage>,
}

/// Where restored key groups live in the restored checkpoint's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoredLineage {
    /// The files, oldest first (a group's image comes before its changes).
    pub files: Vec<FileRef>,
    /// Per restored key group: indices into `files`.
    pub groups: Vec<(u32, AdoptedGroup)>,
}

/// An output buffer is pre-sized for at most this many records (one huge batch, such as a window
/// firing at the end of input, must not make every later buffer huge).
const MAX_OUTPUT_CAPACITY_HINT: usize = 16 * 1024;

/// Records and watermark an operator emitted while handling one input.
#[derive(Debug)]
pub struct Output<O> {
    pub(crate) records: Vec<O>,
    pub(crate) watermark: Option<Timestamp>,
    /// Records a source read to emit these, when it did not emit all it read (see
    /// [`Output::note_read`]).
    pub(crate) read: Option<u64>,
}

impl<O> Default for Output<O> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            watermark: None,
            read: None,
        }
    }
}

impl<O> Output<O> {
    /// Emit one record.
    #[inline]
    pub fn collect(&mut self, record: O) {
        self.records.push(record);
    }
    /// Emit many records.
    #[inline]
    pub fn extend(&mut self, records: impl IntoIterator<Item = O>) {
        self.records.extend(records);
    }
    /// Room for `additional` more records. An empty buffer that is too small is replaced rather
    /// than grown (growing copies the old allocation whole, though it holds nothing).
    pub fn reserve(&mut self, additional: usize) {
        if self.records.is_empty() && self.records.capacity() < additional {
            self.records = Vec::with_capacity(additional);
        } else {
            self.records.reserve(additional);
        }
    }
    /// A source that read `records` to emit what it emitted (a filter pushed into the source):
    /// the source's record count is what it read, not what it emitted.
    pub fn note_read(&mut self, records: u64) {
        self.read = Some(self.read.unwrap_or(0) + records);
    }
    /// Emit a watermark (after the records emitted so far).
    pub fn emit_watermark(&mut self, watermark: Timestamp) {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
    }
    /// Take the records, leaving an empty buffer sized for a batch like this one (so the next batch
    /// does not grow its buffer step by step, copying as it goes).
    pub(crate) fn take_records(&mut self) -> Vec<O> {
        let hint = self.records.len().min(MAX_OUTPUT_CAPACITY_HINT);
        std::mem::replace(&mut self.records, Vec::with_capacity(hint))
    }
}

/// An operator: turns batches of `I` into records of `O`, may keep state, and hears about checkpoints.
pub trait StreamOperator<I, O>: Send {
    /// Called once before any input, after `restore` if the job restored state.
    fn open(&mut self, _ctx: &OperatorContext) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Load state from a snapshot (called before `open`).
    fn restore(
        &mut self,
        _ctx: &OperatorContext,
        _state: RestoredState,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Process a batch of records.
    fn process_batch(&mut self, batch: Vec<I>, out: &mut Output<O>) -> Result<(), OperatorError>;
    /// Event time advanced to `watermark` (the minimum over all inputs). Forward it (default) or hold it.
    fn process_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<O>,
    ) -> Result<(), OperatorError> {
        out.emit_watermark(watermark);
        Ok(())
    }
    /// The barrier passed: return this operator's state as of this point (synchronous part only).
    fn snapshot(&mut self, _barrier: &Barrier) -> Result<OperatorSnapshot, OperatorError> {
        Ok(OperatorSnapshot::default())
    }
    /// Checkpoint `id` is complete (its manifest is written): commit side effects up to it.
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Checkpoint `id` was aborted: discard what was prepared for it.
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) {}
    /// All inputs ended.
    fn end_of_input(
        &mut self,
        _end: EndOfStream,
        _out: &mut Output<O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_state_files_round_trip_and_keep_incompressible_groups_raw() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..50_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let body = StateFileBody {
            keyed: vec![
                (1, Bytes::from(vec![7u8; 100_000])), // compresses
                (2, Bytes::from(noise.clone())),      // does not: stored raw
                (3, Bytes::from_static(b"tiny")),
            ],
            keyed_changes: vec![(1, Bytes::from(b"abc".repeat(5000)))],
            list: vec![vec![5, 6]],
        };
        let plain = body.encode(SnapshotCompression::None);
        let packed = body.encode(SnapshotCompression::Lz4);
        assert!(
            packed.len() < plain.len() - 100_000,
            "compressed {} of {} bytes",
            packed.len(),
            plain.len()
        );
        // The incompressible group is a piece of the file as it is.
        assert!(packed
            .parts()
            .iter()
            .any(|p| p.as_ptr() == body.keyed[1].1.as_ptr()));
        let file = packed.into_bytes();
        let decoded = StateFileBody::decode(&file).unwrap();
        assert_eq!(decoded, body);
        // ... and read back as a slice of the file.
        assert!(file.as_ptr_range().contains(&decoded.keyed[1].1.as_ptr()));

        // Damage inside the codec framing is an error, never a panic or a huge allocation.
        let at = |needle: &[u8]| {
            file.windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        let lz4_len = at(&100_000u32.to_le_bytes()); // group 1's length after its codec byte
        for (offset, byte) in [(lz4_len - 1, 9u8), (lz4_len + 3, 0x7f), (lz4_len + 6, 0xff)] {
            let mut damaged = file.to_vec();
            damaged[offset] = byte;
            let result = StateFileBody::decode(&Bytes::from(damaged));
            assert!(
                result.as_ref().map_or(true, |d| d != &body),
                "byte {offset} set to {byte:#x} went unnoticed"
            );
        }
    }

    #[test]
    fn state_files_round_trip_and_files_of_the_earlier_format_still_decode() {
        let body = StateFileBody {
            keyed: vec![
                (1, Bytes::from(vec![1, 2, 3])),
                (3, Bytes::from(vec![8; OWN_SEGMENT])),
                (7, Bytes::from(vec![9; 40])),
            ],
            keyed_changes: vec![(7, Bytes::from(vec![4])), (9, Bytes::from(vec![6; 70_000]))],
            list: vec![vec![5, 6]],
        };
        let segments = body.encode(SnapshotCompression::None);
        // The large groups are pieces of their own (the same buffers), the rest is framing.
        let shared = |g: &Bytes| segments.parts().iter().any(|p| p.as_ptr() == g.as_ptr());
        assert!(shared(&body.keyed[1].1) && shared(&body.keyed_changes[1].1));
        assert!(!shared(&body.keyed[0].1) && !shared(&body.keyed[2].1));
        let encoded = segments.into_bytes();
        assert_eq!(StateFileBody::decode(&encoded).unwrap(), body);

        // Before incremental checkpoints a state file was `bincode(OperatorSnapshot { keyed, list })`.
        #[derive(Serialize)]
        struct Earlier {
            keyed: Vec<(u32, Vec<u8>)>,
            list: Vec<Vec<u8>>,
        }
        let earlier = bincode::serialize(&Earlier {
            keyed: body.keyed.iter().map(|(g, b)| (*g, b.to_vec())).collect(),
            list: body.list.clone(),
        })
        .unwrap();
        let decoded = StateFileBody::decode(&Bytes::from(earlier)).unwrap();
        assert_eq!(
            (decoded.keyed, decoded.keyed_changes, decoded.list),
            (body.keyed, vec![], body.list)
        );

        assert!(StateFileBody::decode(&encoded.slice(..encoded.len() - 1)).is_err());
    }
}
