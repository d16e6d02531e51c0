//! `SnapshotLayout`: the only place that builds and parses snapshot keys (relative to a job's root).
//!
//! ```text
//! checkpoints/<attempt:06>-<checkpoint id:010>/<operator id>/<subtask:04>.state
//! checkpoints/<attempt:06>-<checkpoint id:010>/_manifest.json      (written last, create-if-absent)
//! savepoints/sp-<checkpoint id:010>-<attempt:06>/...               (same shape, self-contained)
//! shared/<sha-256 hex>-<size>.state                                (content-addressed, incremental)
//! attempts/<attempt:06>.json                                       (attempt records, create-if-absent)
//! ```
//! No key is ever a prefix folder of another key: operator ids cannot start with '_' or '.', so
//! they never collide with `_manifest.json`, and every other name ends in a distinct file extension.

use sha2::{Digest, Sha256};

use crate::manifest::SnapshotKind;

/// Folder of checkpoints.
pub const CHECKPOINTS: &str = "checkpoints/";
/// Folder of savepoints.
pub const SAVEPOINTS: &str = "savepoints/";
/// Folder of content-addressed files shared between incremental checkpoints.
pub const SHARED: &str = "shared/";
/// Folder of attempt records.
pub const ATTEMPTS: &str = "attempts/";
/// File name of a manifest inside a snapshot folder.
pub const MANIFEST_FILE: &str = "_manifest.json";
/// File name of the marker a restore leaves in a snapshot folder whose files failed verification.
pub const UNUSABLE_FILE: &str = "_unusable.txt";

/// Errors of building keys from user-influenced names.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// An operator id that cannot be a path segment.
    #[error("operator id {0:?} cannot be used in snapshot paths; use letters, digits, '-', '_' and '.', not starting with '_' or '.'")]
    InvalidOperatorId(String),
    /// A savepoint name that cannot be a path segment.
    #[error("savepoint name {0:?} cannot be used; use letters, digits, '-', '_' and '.', not starting with '_' or '.'")]
    InvalidSavepointName(String),
}

/// A snapshot folder: kind + name (e.g. `checkpoints/000002-0000000042`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotDir {
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Folder name inside `checkpoints/` or `savepoints/`.
    pub name: String,
}

impl SnapshotDir {
    /// The folder key without trailing '/', e.g. `checkpoints/000002-0000000042`.
    pub fn path(&self) -> String {
        format!("{}{}", SnapshotLayout::kind_folder(self.kind), self.name)
    }
}

/// Builds and parses every key of a job's snapshot storage. Stateless; all functions are associated.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotLayout;

fn is_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['_', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_digits(s: &str, min_len: usize) -> Option<u64> {
    if s.len() < min_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl SnapshotLayout {
    /// `checkpoints/` or `savepoints/`.
    pub fn kind_folder(kind: SnapshotKind) -> &'static str {
        match kind {
            SnapshotKind::Checkpoint => CHECKPOINTS,
            SnapshotKind::Savepoint => SAVEPOINTS,
        }
    }

    /// The folder of checkpoint `checkpoint_id` taken by `attempt`.
    pub fn checkpoint_dir(attempt: u64, checkpoint_id: u64) -> SnapshotDir {
        SnapshotDir {
            kind: SnapshotKind::Checkpoint,
            name: format!("{attempt:06}-{checkpoint_id:010}"),
        }
    }

    /// The folder of the savepoint with the standard name `sp-<id:010>-<attempt:06>`.
    pub fn savepoint_dir(attempt: u64, checkpoint_id: u64) -> SnapshotDir {
        SnapshotDir {
            kind: SnapshotKind::Savepoint,
            name: format!("sp-{checkpoint_id:010}-{attempt:06}"),
        }
    }

    /// The snapshot folder of `kind` for (`attempt`, `checkpoint_id`).
    pub fn dir(kind: SnapshotKind, attempt: u64, checkpoint_id: u64) -> SnapshotDir {
        match kind {
            SnapshotKind::Checkpoint => Self::checkpoint_dir(attempt, checkpoint_id),
            SnapshotKind::Savepoint => Self::savepoint_dir(attempt, checkpoint_id),
        }
    }

    /// The key of one subtask's state file of `operator_id` in `dir`.
    pub fn state_file(
        dir: &SnapshotDir,
        operator_id: &str,
        subtask: u32,
    ) -> Result<String, LayoutError> {
        if !is_segment(operator_id) {
            return Err(LayoutError::InvalidOperatorId(operator_id.to_owned()));
        }
        Ok(format!("{}/{operator_id}/{subtask:04}.state", dir.path()))
    }

    /// The manifest key of `dir`.
    pub fn manifest(dir: &SnapshotDir) -> String {
        format!("{}/{MANIFEST_FILE}", dir.path())
    }

    /// The key of the marker saying `dir` failed verification on restore (its text is the reason).
    pub fn unusable_marker(dir: &SnapshotDir) -> String {
        format!("{}/{UNUSABLE_FILE}", dir.path())
    }

    /// The content-addressed key of `content` in `shared/` (SHA-256 and size).
    pub fn shared_file(content: &[u8]) -> String {
        let digest = Sha256::digest(content);
        let mut hex = String::with_capacity(64);
        for byte in digest.iter() {
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        }
        format!("{SHARED}{hex}-{}.state", content.len())
    }

    /// The key of the record of `attempt`.
    pub fn attempt_record(attempt: u64) -> String {
        format!("{ATTEMPTS}{attempt:06}.json")
    }

    /// Parses an attempt record key back to the attempt.
    pub fn parse_attempt_record(key: &str) -> Option<u64> {
        let name = key.strip_prefix(ATTEMPTS)?.strip_suffix(".json")?;
        parse_digits(name, 6)
    }

    /// Parses a checkpoint folder name (`000002-0000000042`) to (attempt, checkpoint id).
    pub fn parse_checkpoint_name(name: &str) -> Option<(u64, u64)> {
        let (attempt, id) = name.split_once('-')?;
        Some((parse_digits(attempt, 6)?, parse_digits(id, 10)?))
    }

    /// Parses a standard savepoint folder name (`sp-0000000042-000002`) to (attempt, checkpoint id).
    pub fn parse_savepoint_name(name: &str) -> Option<(u64, u64)> {
        let (id, attempt) = name.strip_prefix("sp-")?.split_once('-')?;
        Some((parse_digits(attempt, 6)?, parse_digits(id, 10)?))
    }

    /// Parses a snapshot folder name of `kind` to (attempt, checkpoint id).
    pub fn parse_dir_name(kind: SnapshotKind, name: &str) -> Option<(u64, u64)> {
        match kind {
            SnapshotKind::Checkpoint => Self::parse_checkpoint_name(name),
            SnapshotKind::Savepoint => Self::parse_savepoint_name(name),
        }
    }

    /// Parses a folder key (`checkpoints/000002-0000000042`, trailing '/' allowed) to its
    /// [`SnapshotDir`] and (attempt, checkpoint id).
    pub fn parse_dir(path: &str) -> Option<(SnapshotDir, u64, u64)> {
        let path = path.strip_suffix('/').unwrap_or(path);
        for kind in [SnapshotKind::Checkpoint, SnapshotKind::Savepoint] {
            if let Some(name) = path.strip_prefix(Self::kind_folder(kind)) {
                let (attempt, id) = Self::parse_dir_name(kind, name)?;
                return Some((
                    SnapshotDir {
                        kind,
                        name: name.to_owned(),
                    },
                    attempt,
                    id,
                ));
            }
        }
        None
    }

    /// The snapshot folder a listed key belongs to, if any (`checkpoints/<name>/...`).
    pub fn dir_of_key(key: &str) -> Option<SnapshotDir> {
        for kind in [SnapshotKind::Checkpoint, SnapshotKind::Savepoint] {
            if let Some(rest) = key.strip_prefix(Self::kind_folder(kind)) {
                let (name, _) = rest.split_once('/')?;
                return Some(SnapshotDir {
                    kind,
                    name: name.to_owned(),
                });
            }
        }
        None
    }

    /// Whether `key` is inside the folder at `dir_path` (`checkpoints/...`, no trailing '/').
    pub fn is_in_dir(key: &str, dir_path: &str) -> bool {
        key.strip_prefix(dir_path)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_keys() {
        let dir = SnapshotLayout::checkpoint_dir(2, 42);
        assert_eq!(dir.path(), "checkpoints/000002-0000000042");
        assert_eq!(
            SnapshotLayout::manifest(&dir),
            "checkpoints/000002-0000000042/_manifest.json"
        );
        assert_eq!(
            SnapshotLayout::state_file(&dir, "window", 3).unwrap(),
            "checkpoints/000002-0000000042/window/0003.state"
        );
        let sp = SnapshotLayout::savepoint_dir(2, 42);
        assert_eq!(sp.path(), "savepoints/sp-0000000042-000002");
        assert_eq!(SnapshotLayout::attempt_record(7), "attempts/000007.json");
        let shared = SnapshotLayout::shared_file(b"abc");
        assert_eq!(
            shared,
            "shared/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad-3.state"
        );
    }

    #[test]
    fn rejects_bad_operator_ids() {
        let dir = SnapshotLayout::checkpoint_dir(1, 1);
        for bad in ["", "_manifest.json", ".x", "a/b", "a b", ".."] {
            assert!(SnapshotLayout::state_file(&dir, bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_names_back() {
        assert_eq!(
            SnapshotLayout::parse_checkpoint_name("000002-0000000042"),
            Some((2, 42))
        );
        assert_eq!(
            SnapshotLayout::parse_checkpoint_name("1234567-12345678901"),
            Some((1234567, 12345678901))
        );
        for bad in [
            "2-42",
            "000002-42",
            "000002_0000000042",
            "abcdef-0000000042",
            "000002-0000000042x",
        ] {
            assert_eq!(SnapshotLayout::parse_checkpoint_name(bad), None, "{bad}");
        }
        assert_eq!(
            SnapshotLayout::parse_savepoint_name("sp-0000000042-000002"),
            Some((2, 42))
        );
        assert_eq!(SnapshotLayout::parse_savepoint_name("before-upgrade"), None);
        assert_eq!(
            SnapshotLayout::parse_attempt_record("attempts/000007.json"),
            Some(7)
        );
        assert_eq!(
            SnapshotLayout::parse_attempt_record("attempts/7.json"),
            None
        );

        let (dir, attempt, id) =
            SnapshotLayout::parse_dir("savepoints/sp-0000000042-000002/").unwrap();
        assert_eq!(
            (dir, attempt, id),
            (SnapshotLayout::savepoint_dir(2, 42), 2, 42)
        );
        assert_eq!(
            SnapshotLayout::dir_of_key("checkpoints/000001-0000000001/op/0000.state"),
            Some(SnapshotLayout::checkpoint_dir(1, 1))
        );
        assert_eq!(SnapshotLayout::dir_of_key("checkpoints/stray"), None);
        assert_eq!(SnapshotLayout::dir_of_key("shared/x"), None);
    }

    #[test]
    fn round_trips_every_kind() {
        for kind in [SnapshotKind::Checkpoint, SnapshotKind::Savepoint] {
            for (attempt, id) in [
                (0, 0),
                (1, 1),
                (999_999, 9_999_999_999),
                (1_000_000, 10_000_000_000),
            ] {
                let dir = SnapshotLayout::dir(kind, attempt, id);
                assert_eq!(
                    SnapshotLayout::parse_dir(&dir.path()),
                    Some((dir.clone(), attempt, id))
                );
            }
        }
    }

    #[test]
    fn no_key_is_a_prefix_folder_of_another() {
        let dir = SnapshotLayout::checkpoint_dir(1, 5);
        let mut keys = vec![
            SnapshotLayout::manifest(&dir),
            SnapshotLayout::attempt_record(1),
            SnapshotLayout::shared_file(b"x"),
        ];
        for op in ["a", "a.b", "manifest.json", "window"] {
            for st in [0, 1, 10_000] {
                keys.push(SnapshotLayout::state_file(&dir, op, st).unwrap());
            }
        }
        for a in &keys {
            for b in &keys {
                assert!(!b.starts_with(&format!("{a}/")), "{a} is a folder of {b}");
            }
        }
    }
}
