//! The snapshot `Manifest`: what a complete checkpoint or savepoint contains, and its self-checking JSON form.
//!
//! Pure: no store access. The stored JSON carries a `checksum` field, the CRC-32C of the compact
//! serialization of every other field (in struct order), verified on read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The manifest format this crate writes. Version 2 added [`FileRef::contents`]; an older build
/// reading it would drop the field and take the manifest for corrupt, so the version says it.
pub const MANIFEST_FORMAT_VERSION: u32 = 2;

/// The oldest manifest format this crate still reads.
pub const OLDEST_READABLE_FORMAT_VERSION: u32 = 1;

fn readable(version: u64) -> bool {
    (u64::from(OLDEST_READABLE_FORMAT_VERSION)..=u64::from(MANIFEST_FORMAT_VERSION))
        .contains(&version)
}

/// Errors of decoding or checking a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or missing fields: typically a truncated or overwritten object.
    #[error("manifest is corrupt ({0}); this snapshot cannot be used, restore from an older one")]
    Corrupt(String),
    /// The body does not match its checksum.
    #[error("manifest is corrupt (checksum {actual:#010x} does not match the recorded {expected:#010x}); this snapshot cannot be used, restore from an older one")]
    ChecksumMismatch {
        /// The recorded checksum.
        expected: u32,
        /// The checksum of the body as read.
        actual: u32,
    },
    /// Written by a newer streamjob.
    #[error("manifest format version {0} is not supported (this build reads versions {OLDEST_READABLE_FORMAT_VERSION} to {MANIFEST_FORMAT_VERSION}); upgrade streamjob")]
    UnsupportedVersion(u64),
    /// Well-formed JSON that describes an impossible snapshot.
    #[error("manifest is invalid: {0}")]
    Invalid(String),
    /// Encoding failed (cannot happen for well-formed values; reported rather than panicking).
    #[error("failed to encode the manifest: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Whether a snapshot was taken periodically by the job or on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Periodic or on-demand checkpoint, owned by retention.
    Checkpoint,
    /// Savepoint: self-contained, owned by the savepoint history policy.
    Savepoint,
}

impl SnapshotKind {
    /// Lowercase name for messages and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Checkpoint => "checkpoint",
            SnapshotKind::Savepoint => "savepoint",
        }
    }
}

/// A stored file of a snapshot, verified by size and CRC-32C before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRef {
    /// Key relative to the job root; may point into `shared/` or an older checkpoint (incremental).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32C (Castagnoli) of the content.
    pub crc32c: u32,
    /// What the file holds, so a restore can skip the files it does not need (absent in manifests
    /// of format 1 and for files whose content is not known: those are always downloaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<FileContents>,
}

/// What a state file holds: the span of key groups with keyed state in it and how many operator
/// list-state entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileContents {
    /// Smallest key group with state (a full image or changes) in the file.
    pub key_group_start: u32,
    /// One past the largest such key group (`start == end`: no keyed state).
    pub key_group_end: u32,
    /// Number of operator list-state entries (source offsets, pending sink commits).
    pub list_entries: u32,
}

impl FileContents {
    /// The span of `key_groups` (any order) and `list_entries` entries.
    pub fn new(key_groups: impl IntoIterator<Item = u32>, list_entries: usize) -> Self {
        let (mut start, mut end) = (u32::MAX, 0);
        for kg in key_groups {
            start = start.min(kg);
            end = end.max(kg.saturating_add(1));
        }
        Self {
            key_group_start: start.min(end),
            key_group_end: end,
            list_entries: u32::try_from(list_entries).unwrap_or(u32::MAX),
        }
    }

    /// Whether the file holds keyed state of some group in `groups`.
    pub fn has_key_groups_in(&self, groups: &std::ops::Range<u32>) -> bool {
        self.key_group_start.max(groups.start) < self.key_group_end.min(groups.end)
    }

    /// Whether the file holds keyed state.
    pub fn has_keyed_state(&self) -> bool {
        self.key_group_start < self.key_group_end
    }
}

/// The state of one parallel instance of an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskState {
    /// Subtask index, `0..parallelism`.
    pub subtask: u32,
    /// First key group owned by this subtask.
    pub key_group_start: u32,
    /// One past the last key group owned (`0..0` for non-keyed operators).
    pub key_group_end: u32,
    /// The files holding this subtask's state.
    pub files: Vec<FileRef>,
}

/// The state of one operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorState {
    /// Stable operator id from the job graph.
    pub operator_id: String,
    /// One entry per subtask that has state.
    pub subtasks: Vec<SubtaskState>,
}

/// Everything needed to restore a job from a snapshot. Written last, create-if-absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`].
    pub format_version: u32,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Checkpoint id; ids continue across attempts.
    pub checkpoint_id: u64,
    /// Attempt that took the snapshot.
    pub attempt: u64,
    /// Name of the job.
    pub job_name: String,
    /// When the snapshot was triggered (unix ms).
    pub created_at_ms: u64,
    /// Time from trigger to completion.
    pub duration_ms: u64,
    /// Parallelism of the job when the snapshot was taken.
    pub parallelism: u32,
    /// Number of key groups (upper bound of rescaling).
    pub max_parallelism: u32,
    /// State per operator.
    pub operators: Vec<OperatorState>,
    /// Free-form facts, e.g. source offsets summary or sink transaction ids.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Manifest {
    /// A manifest without operators; fill `operators` and `metadata` before writing.
    pub fn new(
        kind: SnapshotKind,
        attempt: u64,
        checkpoint_id: u64,
        job_name: impl Into<String>,
    ) -> Self {
        Self {
            format_version: MANIFEST_FORMAT_VERSION,
            kind,
            checkpoint_id,
            attempt,
            job_name: job_name.into(),
            created_at_ms: 0,
            duration_ms: 0,
            parallelism: 1,
            max_parallelism: 128,
            operators: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Every file referenced, in manifest order.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.operators
            .iter()
            .flat_map(|o| o.subtasks.iter())
            .flat_map(|s| s.files.iter())
    }

    /// Sum of the sizes of every referenced file.
    pub fn total_size(&self) -> u64 {
        self.files().map(|f| f.size).sum()
    }

    /// Checks what JSON parsing cannot: unique operators and subtasks, key-group ranges, file keys.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |m: String| Err(ManifestError::Invalid(m));
        if !readable(u64::from(self.format_version)) {
            return Err(ManifestError::UnsupportedVersion(u64::from(
                self.format_version,
            )));
        }
        let mut operators = BTreeSet::new();
        for op in &self.operators {
            if !operators.insert(op.operator_id.as_str()) {
                return invalid(format!("operator {:?} appears twice", op.operator_id));
            }
            let mut subtasks = BTreeSet::new();
            for st in &op.subtasks {
                if !subtasks.insert(st.subtask) {
                    return invalid(format!(
                        "subtask {} of operator {:?} appears twice",
                        st.subtask, op.operator_id
                    ));
                }
                if st.key_group_start > st.key_group_end || st.key_group_end > self.max_parallelism
                {
                    return invalid(format!(
                        "subtask {} of operator {:?} has key groups {}..{} outside 0..{}",
                        st.subtask,
                        op.operator_id,
                        st.key_group_start,
                        st.key_group_end,
                        self.max_parallelism
                    ));
                }
                for file in &st.files {
                    if let Err(e) = crate::store::validate_key(&file.key) {
                        return invalid(format!("operator {:?}: {e}", op.operator_id));
                    }
                    if let Some(c) = &file.contents {
                        if c.key_group_start > c.key_group_end
                            || c.key_group_end > self.max_parallelism
                        {
                            return invalid(format!(
                                "file {} of operator {:?} holds key groups {}..{} outside 0..{}",
                                file.key,
                                op.operator_id,
                                c.key_group_start,
                                c.key_group_end,
                                self.max_parallelism
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The stored form: JSON with a `checksum` field.
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        let canonical = serde_json::to_vec(self)?;
        let checksum = crc32c::crc32c(&canonical);
        let mut value = serde_json::to_value(self)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("checksum".to_owned(), checksum.into());
        }
        Ok(serde_json::to_vec_pretty(&value)?)
    }

    /// Parses and verifies the stored form (JSON, version, checksum, [`Manifest::validate`]).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Corrupt(format!("not valid JSON: {e}")))?;
        let map = value
            .as_object_mut()
            .ok_or_else(|| ManifestError::Corrupt("the document is not a JSON object".into()))?;
        match map.get("formatVersion").and_then(serde_json::Value::as_u64) {
            Some(v) if readable(v) => {}
            Some(v) => return Err(ManifestError::UnsupportedVersion(v)),
            None => return Err(ManifestError::Corrupt("formatVersion is missing".into())),
        }
        let expected = map
            .remove("checksum")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ManifestError::Corrupt("checksum is missing".into()))?;
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| ManifestError::Corrupt(format!("unexpected content: {e}")))?;
        let actual = crc32c::crc32c(&serde_json::to_vec(&manifest)?);
        if actual != expected {
            return Err(ManifestError::ChecksumMismatch { expected, actual });
        }
        manifest.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new(SnapshotKind::Checkpoint, 2, 42, "orders");
        m.parallelism = 2;
        m.created_at_ms = 1_700_000_000_000;
        m.operators.push(OperatorState {
            operator_id: "window".into(),
            subtasks: (0..2)
                .map(|i| SubtaskState {
                    subtask: i,
                    key_group_start: i * 64,
                    key_group_end: (i + 1) * 64,
                    files: vec![FileRef {
                        key: format!("shared/f{i}.state"),
                        size: 10 + u64::from(i),
                        crc32c: i,
                        // One file with its contents recorded, one without (as format 1 wrote).
                        contents: (i == 0).then(|| FileContents::new([3, 0, 63], 2)),
                    }],
                })
                .collect(),
        });
        m.metadata.insert("sink.txn".into(), "7".into());
        m
    }

    #[test]
    fn round_trip_and_camel_case() {
        let m = sample();
        let json = m.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        for field in [
            "\"formatVersion\"",
            "\"checkpointId\"",
            "\"keyGroupEnd\"",
            "\"operatorId\"",
            "\"checksum\"",
            "\"Checkpoint\"",
            "\"listEntries\"",
        ] {
            assert!(text.contains(field), "{field} missing in {text}");
        }
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        assert_eq!(m.total_size(), 21);
        assert_eq!(m.files().count(), 2);
    }

    #[test]
    fn truncated_is_corrupt() {
        let json = sample().to_json().unwrap();
        for cut in [0, 1, json.len() / 2, json.len() - 2] {
            let err = Manifest::from_json(&json[..cut]).unwrap_err();
            assert!(matches!(err, ManifestError::Corrupt(_)), "cut {cut}: {err}");
            assert!(err.to_string().contains("restore from an older one"));
        }
    }

    #[test]
    fn tampered_body_fails_checksum() {
        let text = String::from_utf8(sample().to_json().unwrap()).unwrap();
        let tampered = text.replace("\"size\": 10", "\"size\": 11");
        assert_ne!(text, tampered);
        assert!(matches!(
            Manifest::from_json(tampered.as_bytes()),
            Err(ManifestError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn newer_versions_are_refused() {
        let text = String::from_utf8(sample().to_json().unwrap()).unwrap();
        let newer = text.replace("\"formatVersion\": 2", "\"formatVersion\": 3");
        assert_ne!(text, newer);
        let err = Manifest::from_json(newer.as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedVersion(3)), "{err}");
        assert!(err.to_string().contains("upgrade streamjob"), "{err}");
    }

    #[test]
    fn format_1_without_file_contents_still_reads() {
        let mut m = sample();
        m.format_version = 1;
        for file in m.operators[0]
            .subtasks
            .iter_mut()
            .flat_map(|s| s.files.iter_mut())
        {
            file.contents = None;
        }
        let text = String::from_utf8(m.to_json().unwrap()).unwrap();
        assert!(!text.contains("contents"), "{text}");
        assert_eq!(Manifest::from_json(text.as_bytes()).unwrap(), m);
    }

    #[test]
    fn file_contents_span_and_overlap() {
        let c = FileContents::new([7, 3, 5], 0);
        assert_eq!((c.key_group_start, c.key_group_end), (3, 8));
        assert!(c.has_keyed_state());
        assert!(c.has_key_groups_in(&(7..9)) && c.has_key_groups_in(&(0..4)));
        assert!(!c.has_key_groups_in(&(8..16)) && !c.has_key_groups_in(&(0..3)));
        let none = FileContents::new([], 4);
        assert!(!none.has_keyed_state() && !none.has_key_groups_in(&(0..128)));
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = 5..3;
        assert!(!FileContents::new(0..10, 0).has_key_groups_in(&inverted));
        assert_eq!(none.list_entries, 4);
    }

    #[test]
    fn validation() {
        let mut m = sample();
        m.operators[0].subtasks[1].subtask = 0;
        assert!(matches!(m.validate(), Err(ManifestError::Invalid(_))));
        let mut m = sample();
        m.operators[0].subtasks[0].key_group_end = 500;
        assert!(m.validate().is_err());
        let mut m = sample();
        m.operators.push(m.operators[0].clone());
        assert!(m.validate().is_err());
        let mut m = sample();
        m.operators[0].subtasks[0].files[0].key = "../x".into();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.operators[0].subtasks[0].files[0].contents = Some(FileContents::new([128], 0));
        let err = m.validate().unwrap_err();
        assert!(err.to_string().contains("outside 0..128"), "{err}");
    }
}
