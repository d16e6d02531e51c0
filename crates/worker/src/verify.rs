//! The verifier of the `sequence-check` job: reads the committed output of a run (visible files
//! only; in-progress files are dot-files) and reports, from the data alone, how many records were
//! expected, committed, lost, duplicated, out of order per key, and committed with a count that
//! does not match their sequence number.
//!
//! Pure apart from reading the folder: no engine, no logs, no snapshot metadata.
//!
//! Definitions (record `i < events` of the source is key `i % keys`, sequence number `i / keys`):
//! - lost: expected `(key, seq)` pairs committed by no line;
//! - duplicated: lines repeating a `(key, seq)` already committed (each extra copy counts);
//! - out of order: first copies of a `(key, seq)` committed after a larger sequence number of the
//!   same key (files in commit order: by name, `part-<checkpoint>-<subtask>`, then line order);
//! - count mismatch: lines whose `count` is not `seq + 1` (the keyed state saw records twice or
//!   missed some);
//! - unexpected: well-formed lines naming a key or sequence number the source never emits;
//! - malformed: lines that are not three unsigned integers.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why the output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The folder or a file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `keys` is 0.
    #[error("--keys must be at least 1")]
    NoKeys,
}

/// The verdict on one run's committed output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SequenceReport {
    /// Records the source emits (`events`).
    pub expected: u64,
    /// Well-formed committed lines.
    pub committed: u64,
    /// Expected records committed by no line.
    pub lost: u64,
    /// Extra copies of records committed before.
    pub duplicated: u64,
    /// Records committed after a later record of the same key.
    pub out_of_order: u64,
    /// Lines whose count is not `seq + 1`.
    pub count_mismatch: u64,
    /// Lines for keys or sequence numbers the source never emits.
    pub unexpected: u64,
    /// Lines that do not parse.
    pub malformed: u64,
    /// Committed files read.
    pub files: u64,
}

impl SequenceReport {
    /// True when the output is exactly the failure-free run's: nothing lost, duplicated, reordered,
    /// miscounted, unexpected or malformed.
    pub fn is_exact(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.count_mismatch == 0
            && self.unexpected == 0
            && self.malformed == 0
    }

    /// The report as one JSON object (field names as in this struct).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of integers serializes")
    }
}

impl std::fmt::Display for SequenceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {}, committed {}, lost {}, duplicated {}, out of order {}, count mismatch {}, unexpected {}, malformed {} ({} files): {}",
            self.expected,
            self.committed,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.count_mismatch,
            self.unexpected,
            self.malformed,
            self.files,
            if self.is_exact() { "exact" } else { "NOT exact" }
        )
    }
}

/// Committed files of a sink folder in commit order (visible files only, sorted by name).
fn committed_files(dir: &Path) -> Result<Vec<PathBuf>, VerifyError> {
    let read = |source| VerifyError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        let name = entry.file_name();
        let visible = name.to_str().is_some_and(|n| !n.starts_with('.'));
        if visible && entry.file_type().map_err(read)?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Three comma-separated unsigned integers.
fn parse_line(line: &str) -> Option<(u64, u64, u64)> {
    let mut fields = line.trim_end().split(',');
    let key = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let count = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((key, seq, count))
}

/// Check the committed output in `dir` of a `sequence-check` run with `keys` keys and `events`
/// records.
pub fn verify_sequence(dir: &Path, keys: u64, events: u64) -> Result<SequenceReport, VerifyError> {
    if keys == 0 {
        return Err(VerifyError::NoKeys);
    }
    let mut report = SequenceReport {
        expected: events,
        ..SequenceReport::default()
    };
    // One bit per expected record (index seq * keys + key), and per key the largest sequence number
    // committed so far plus one (0: none yet).
    let mut seen = vec![0u64; events.div_ceil(64) as usize];
    let mut next_seq = vec![0u64; keys.min(events.max(1)) as usize];
    let mut distinct = 0u64;
    let mut line = String::new();
    for path in committed_files(dir)? {
        report.files += 1;
        let file = std::fs::File::open(&path).map_err(|source| VerifyError::Read {
            path: path.clone(),
            source,
        })?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|source| VerifyError::Read {
                    path: path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, seq, count)) = parse_line(&line) else {
                report.malformed += 1;
                continue;
            };
            report.committed += 1;
            if count != seq.wrapping_add(1) {
                report.count_mismatch += 1;
            }
            let index = seq.checked_mul(keys).and_then(|i| i.checked_add(key));
            let index = match index {
                Some(i) if key < keys && i < events => i,
                _ => {
                    report.unexpected += 1;
                    continue;
                }
            };
            let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
            if seen[word] & bit != 0 {
                report.duplicated += 1;
                continue;
            }
            seen[word] |= bit;
            distinct += 1;
            let next = &mut next_seq[key as usize];
            if seq < *next {
                report.out_of_order += 1;
            } else {
                *next = seq + 1;
            }
        }
    }
    report.lost = events - distinct;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[&str]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// Output of a clean run with 2 keys and 5 records, in two checkpoints.
    fn clean(dir: &Path) {
        write(dir, "part-0000000001-0000", &["0,0,1", "1,0,1", "0,1,2"]);
        write(dir, "part-0000000002-0000", &["1,1,2", "0,2,3"]);
    }

    #[test]
    fn a_clean_run_is_exact_and_in_progress_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        clean(dir.path());
        write(dir.path(), ".inprogress-000001-0000-3", &["1,2,3", "1,2,3"]);
        let r = verify_sequence(dir.path(), 2, 5).unwrap();
        assert_eq!(
            r,
            SequenceReport {
                expected: 5,
                committed: 5,
                files: 2,
                ..SequenceReport::default()
            }
        );
        assert!(r.is_exact(), "{r}");
    }

    #[test]
    fn damage_is_reported_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        // 1,1 lost; 0,1 duplicated (and the copy's count is off); 0,0 committed after 0,2.
        write(
            dir.path(),
            "part-0000000001-0000",
            &["1,0,1", "0,1,2", "0,2,3"],
        );
        write(
            dir.path(),
            "part-0000000002-0001",
            &["0,1,3", "0,0,1", "7,0,1", "x,y"],
        );
        let r = verify_sequence(dir.path(), 2, 5).unwrap();
        assert_eq!(r.lost, 1, "{r}");
        assert_eq!(r.duplicated, 1, "{r}");
        assert_eq!(r.out_of_order, 1, "{r}");
        assert_eq!(r.count_mismatch, 1, "{r}");
        assert_eq!(r.unexpected, 1, "{r}");
        assert_eq!(r.malformed, 1, "{r}");
        assert_eq!(r.committed, 6, "{r}");
        assert!(!r.is_exact());
    }

    #[test]
    fn an_empty_folder_loses_everything_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = verify_sequence(dir.path(), 3, 10).unwrap();
        assert_eq!((r.lost, r.committed), (10, 0));
        assert!(!r.is_exact());
        assert!(verify_sequence(&dir.path().join("missing"), 3, 10).is_err());
        assert!(matches!(
            verify_sequence(dir.path(), 0, 10),
            Err(VerifyError::NoKeys)
        ));
    }
}
