//! The S3 sink's journal of open multipart uploads, so that the next attempt can abort the uploads
//! a killed worker left behind (an incomplete upload is invisible but its parts are stored, and
//! billed, until someone aborts it).
//!
//! S3 can list incomplete uploads (`ListMultipartUploads`), but not every S3-compatible server
//! implements it (s3s-fs does not), and the listing cannot tell which attempt an upload belongs to.
//! So each subtask keeps one small object per attempt, `<prefix>/.uploads/attempt-<attempt>-subtask-
//! <subtask>.json`, rewritten at every pre-commit with the uploads it has not completed yet. The name
//! starts with a dot, like in-progress files, so readers of the output folder skip it.
//!
//! At open after a restore, each subtask reads the journals of older attempts it cleans up (its own
//! subtask index; subtask 0 also those beyond the current parallelism) and aborts the uploads of
//! checkpoints after the restore point: no restored snapshot refers to them, and the replay writes
//! their records again under new uploads. Uploads of checkpoints up to the restore point are left
//! alone: the restored pending commits complete them. Then the journal is deleted.
//!
//! A worker killed between starting an upload and writing the journal (one request) still leaves
//! that one upload behind; a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) is the
//! backstop.

use serde::{Deserialize, Serialize};

use super::output::{cleans_up, key_root};
use super::upload::PendingUpload;

/// One open upload in a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    /// Checkpoint whose barrier started the upload.
    pub checkpoint_id: u64,
    /// Final key of the object.
    pub key: String,
    /// Multipart upload id.
    pub upload_id: String,
}

/// The journal object of one subtask of one attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    /// Uploads started and not completed yet, oldest first.
    pub uploads: Vec<JournalEntry>,
}

impl Journal {
    /// The journal of these pending uploads.
    pub fn of(pending: &[PendingUpload]) -> Self {
        Self {
            uploads: pending
                .iter()
                .map(|p| JournalEntry {
                    checkpoint_id: p.checkpoint_id,
                    key: p.key.clone(),
                    upload_id: p.upload_id.clone(),
                })
                .collect(),
        }
    }

    /// The uploads to abort when restoring checkpoint `keep_up_to` (0: starting over): those of
    /// later checkpoints.
    pub fn orphans(&self, keep_up_to: u64) -> impl Iterator<Item = &JournalEntry> {
        self.uploads
            .iter()
            .filter(move |u| u.checkpoint_id > keep_up_to)
    }
}

/// The folder of the journals under the output prefix.
pub(super) fn journal_prefix(prefix: &str) -> String {
    format!("{}.uploads/", key_root(prefix))
}

/// Key of the journal of `subtask` in `attempt`.
pub fn journal_key(prefix: &str, attempt: u64, subtask: u32) -> String {
    format!(
        "{}attempt-{attempt:06}-subtask-{subtask:04}.json",
        journal_prefix(prefix)
    )
}

/// Attempt and subtask of a journal's key; `None` for any other key.
pub fn parse_journal_key(prefix: &str, key: &str) -> Option<(u64, u32)> {
    let name = key
        .strip_prefix(&journal_prefix(prefix))?
        .strip_prefix("attempt-")?
        .strip_suffix(".json")?;
    let (attempt, subtask) = name.split_once("-subtask-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(attempt) || !digits(subtask) {
        return None;
    }
    Some((attempt.parse().ok()?, subtask.parse().ok()?))
}

/// Whether `subtask` (of `parallelism`, in `attempt`) handles the journal of `journal_attempt`
/// and `journal_subtask` at open: only older attempts' journals (a newer one belongs to an attempt
/// that fenced this one), each by exactly one subtask.
pub fn handles_journal(
    (journal_attempt, journal_subtask): (u64, u32),
    attempt: u64,
    subtask: u32,
    parallelism: u32,
) -> bool {
    journal_attempt < attempt && cleans_up(journal_subtask, subtask, parallelism)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keys_round_trip_and_hide_in_the_output_folder() {
        let key = journal_key("out/run", 3, 7);
        assert_eq!(key, "out/run/.uploads/attempt-000003-subtask-0007.json");
        assert_eq!(parse_journal_key("out/run", &key), Some((3, 7)));
        assert_eq!(
            parse_journal_key("", &journal_key("", 12, 0)),
            Some((12, 0))
        );
        // Not a committed object: the output listing never shows it.
        assert_eq!(super::super::parse_object_key("out/run", &key), None);
        for other in [
            "out/run/.uploads/attempt-3-subtask-7",
            "out/run/.uploads/attempt--subtask-7.json",
            "out/run/.uploads/attempt-3-subtask-.json",
            "out/run/.uploads/attempt-x-subtask-7.json",
            "out/run/part-0000000003-0007",
            "other/.uploads/attempt-000003-subtask-0007.json",
        ] {
            assert_eq!(parse_journal_key("out/run", other), None, "{other}");
        }
    }

    #[test]
    fn only_uploads_after_the_restore_point_are_orphans() {
        let entry = |checkpoint_id| JournalEntry {
            checkpoint_id,
            key: format!("out/part-{checkpoint_id:010}-0000"),
            upload_id: format!("upload-{checkpoint_id}"),
        };
        let journal = Journal {
            uploads: vec![entry(4), entry(5), entry(6), entry(7)],
        };
        let ids = |keep| {
            journal
                .orphans(keep)
                .map(|u| u.checkpoint_id)
                .collect::<Vec<_>>()
        };
        // Restoring 5: its pending uploads (and 4's, carried over) are completed, not aborted.
        assert_eq!(ids(5), [6, 7]);
        assert_eq!(ids(0), [4, 5, 6, 7]);
        assert_eq!(ids(7), Vec::<u64>::new());
    }

    #[test]
    fn each_older_journal_is_handled_by_exactly_one_subtask() {
        for parallelism in 1..5u32 {
            for journal_subtask in 0..6u32 {
                let handlers = (0..parallelism)
                    .filter(|s| handles_journal((2, journal_subtask), 3, *s, parallelism))
                    .count();
                assert_eq!(handlers, 1, "p={parallelism} subtask {journal_subtask}");
            }
        }
        // The own attempt's journal and newer ones are never touched.
        assert!(!handles_journal((3, 0), 3, 0, 1));
        assert!(!handles_journal((4, 0), 3, 0, 1));
    }
}
