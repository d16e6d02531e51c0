//! Exactly-once file sink with two-phase commit (as Flink's FileSink): records go to a hidden
//! in-progress file; at a barrier the file is flushed, synced and closed (pre-commit) and recorded in
//! the snapshot; when the checkpoint completes it is renamed to its visible final name (commit).
//! After a restore, the pending files of the restored checkpoint are committed (that checkpoint is
//! complete). Names are deterministic, so committing twice (a zombie and its successor) is harmless.
//!
//! Layout of the output folder: `part-<checkpoint id>-<subtask>` committed files (one line per
//! record); `.inprogress-<attempt>-<subtask>-<n>` hidden files being written or awaiting commit.
//!
//! A killed worker leaves its in-progress files behind. When the first checkpoint of a later
//! attempt completes, each subtask deletes the in-progress files of older attempts it cleans up
//! (its own subtask index; subtask 0 also those beyond the current parallelism). By then every
//! subtask has restored, so the restored checkpoint's pending files are committed already; no
//! checkpoint of this attempt refers to an older attempt's file, and the files of checkpoints
//! after the restore point are rolled back output. Not earlier: at open, another subtask may not
//! have committed the pending files it restored yet.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cleans_up;
use crate::operator::{
    OperatorContext, OperatorError, OperatorSnapshot, Output, RestoredState, StreamOperator,
};
use crate::state::decode_entry;
use crate::types::{Barrier, EndOfStream};

/// A closed file waiting for its checkpoint to complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingFile {
    checkpoint_id: u64,
    in_progress: String,
    final_name: String,
}

/// The sink operator; `format` renders one record as one line.
pub struct FileSink<T, F> {
    dir: PathBuf,
    format: F,
    subtask: u32,
    parallelism: u32,
    attempt: u64,
    operator_id: String,
    /// Older attempts' in-progress files were deleted (after this attempt's first checkpoint).
    swept: bool,
    current: Option<(String, BufWriter<File>)>,
    written_in_current: u64,
    sequence: u64,
    pending: Vec<PendingFile>,
    line: String,
    _t: std::marker::PhantomData<fn(&T)>,
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> OperatorError {
    move |source| OperatorError::Io { context, source }
}

impl<T, F: Fn(&T, &mut String) + Send> FileSink<T, F> {
    /// A sink writing into folder `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>, format: F) -> Self {
        Self {
            dir: dir.into(),
            format,
            subtask: 0,
            parallelism: 1,
            attempt: 0,
            operator_id: String::new(),
            swept: false,
            current: None,
            written_in_current: 0,
            sequence: 0,
            pending: Vec::new(),
            line: String::new(),
            _t: std::marker::PhantomData,
        }
    }

    fn commit(&self, file: &PendingFile) -> Result<(), OperatorError> {
        let from = self.dir.join(&file.in_progress);
        let to = self.dir.join(&file.final_name);
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()), // committed before
            Err(e) => Err(io_error(format!(
                "failed to commit {} as {} (checkpoint {}): the pre-committed file is gone",
                from.display(),
                to.display(),
                file.checkpoint_id
            ))(e)),
        }
    }

    /// Deletes the in-progress files older attempts left that this subtask cleans up; returns how
    /// many. Only once every subtask restored (see the module header).
    fn sweep_older_attempts(&self) -> Result<usize, OperatorError> {
        let listing = std::fs::read_dir(&self.dir)
            .map_err(io_error(format!("failed to list {}", self.dir.display())))?;
        let mut deleted = 0;
        for entry in listing {
            let entry =
                entry.map_err(io_error(format!("failed to list {}", self.dir.display())))?;
            let name = entry.file_name();
            let Some((attempt, owner)) = name.to_str().and_then(parse_in_progress_name) else {
                continue;
            };
            if attempt >= self.attempt || !cleans_up(owner, self.subtask, self.parallelism) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_error(format!(
                        "failed to delete {}, an in-progress file of attempt {attempt}",
                        entry.path().display()
                    ))(e))
                }
            }
        }
        Ok(deleted)
    }

    fn open_file(&mut self) -> Result<(), OperatorError> {
        let name = format!(
            ".inprogress-{:06}-{:04}-{}",
            self.attempt, self.subtask, self.sequence
        );
        self.sequence += 1;
        let path = self.dir.join(&name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_error(format!("failed to create {}", path.display())))?;
        self.current = Some((name, BufWriter::with_capacity(256 * 1024, file)));
        self.written_in_current = 0;
        Ok(())
    }
}

impl<T: Send, F: Fn(&T, &mut String) + Send> StreamOperator<T, ()> for FileSink<T, F> {
    fn restore(
        &mut self,
        ctx: &OperatorContext,
        state: RestoredState,
    ) -> Result<(), OperatorError> {
        std::fs::create_dir_all(&self.dir).map_err(io_error(format!(
            "failed to create output folder {}",
            self.dir.display()
        )))?;
        for entry in state.list {
            let file: PendingFile =
                decode_entry(&entry).map_err(|e| OperatorError::StateDecode {
                    operator: ctx.operator_id.clone(),
                    reason: e.to_string(),
                })?;
            // Everything in a restored snapshot belongs to a complete checkpoint: commit it now.
            self.commit(&file)?;
        }
        Ok(())
    }

    fn open(&mut self, ctx: &OperatorContext) -> Result<(), OperatorError> {
        self.subtask = ctx.subtask;
        self.parallelism = ctx.parallelism;
        self.attempt = ctx.attempt;
        self.operator_id = ctx.operator_id.clone();
        std::fs::create_dir_all(&self.dir).map_err(io_error(format!(
            "failed to create output folder {}",
            self.dir.display()
        )))?;
        // Roll back output committed after the restore point (a checkpoint that was skipped because
        // it is corrupt, or an attempt that started over): the replay writes it again.
        let keep_up_to = match ctx.restored_checkpoint {
            Some(id) => id,
            None if ctx.attempt > 1 => 0,
            None => return Ok(()),
        };
        for path in committed_files(&self.dir)
            .map_err(io_error(format!("failed to list {}", self.dir.display())))?
        {
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("part-"))
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
            if id.is_some_and(|id| id > keep_up_to) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::warn!(file = %path.display(), restored_checkpoint = keep_up_to, "rolled back output committed after the restore point")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io_error(format!("failed to roll back {}", path.display()))(
                            e,
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn process_batch(&mut self, batch: Vec<T>, _out: &mut Output<()>) -> Result<(), OperatorError> {
        if self.current.is_none() {
            self.open_file()?;
        }
        let (name, writer) = self.current.as_mut().expect("opened above");
        for record in &batch {
            self.line.clear();
            (self.format)(record, &mut self.line);
            self.line.push('\n');
            writer
                .write_all(self.line.as_bytes())
                .map_err(io_error(format!("failed to write {}", name)))?;
        }
        self.written_in_current += batch.len() as u64;
        Ok(())
    }

    fn snapshot(&mut self, barrier: &Barrier) -> Result<OperatorSnapshot, OperatorError> {
        // Pre-commit: close the current file durably and remember it for this checkpoint.
        if let Some((name, writer)) = self.current.take() {
            let file = writer
                .into_inner()
                .map_err(|e| io_error(format!("failed to flush {name}"))(e.into_error()))?;
            file.sync_all()
                .map_err(io_error(format!("failed to sync {name}")))?;
            if self.written_in_current > 0 {
                self.pending.push(PendingFile {
                    checkpoint_id: barrier.id,
                    in_progress: name,
                    final_name: format!("part-{:010}-{:04}", barrier.id, self.subtask),
                });
            } else {
                let _ = std::fs::remove_file(self.dir.join(&name));
            }
        }
        OperatorSnapshot::from_list(&self.operator_id, &self.pending)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), OperatorError> {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.checkpoint_id <= checkpoint_id);
        self.pending = waiting;
        for file in &ready {
            self.commit(file)?;
        }
        if !self.swept {
            self.swept = true;
            // Housekeeping: a failure here costs disk space, never output, so it does not fail
            // the attempt (a later attempt tries again).
            match self.sweep_older_attempts() {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    operator = self.operator_id,
                    subtask = self.subtask,
                    deleted,
                    "deleted in-progress files earlier attempts left behind"
                ),
                Err(error) => tracing::warn!(
                    operator = self.operator_id,
                    subtask = self.subtask,
                    %error,
                    "failed to delete in-progress files earlier attempts left behind"
                ),
            }
        }
        Ok(())
    }

    fn end_of_input(
        &mut self,
        _end: EndOfStream,
        _out: &mut Output<()>,
    ) -> Result<(), OperatorError> {
        // Records after the last barrier cannot exist: sources end only after the final (or stop)
        // checkpoint. Drop an empty trailing file.
        if let Some((name, _)) = self.current.take() {
            if self.written_in_current == 0 {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
        Ok(())
    }
}

/// Attempt and subtask of an in-progress file's name (`.inprogress-<attempt>-<subtask>-<n>`).
fn parse_in_progress_name(name: &str) -> Option<(u64, u32)> {
    let mut fields = name.strip_prefix(".inprogress-")?.split('-');
    let (attempt, subtask, sequence) = (fields.next()?, fields.next()?, fields.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if fields.next().is_some() || !digits(attempt) || !digits(subtask) || !digits(sequence) {
        return None;
    }
    Some((attempt.parse().ok()?, subtask.parse().ok()?))
}

/// Committed output files of a sink folder (hidden in-progress files excluded), sorted.
pub fn committed_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SnapshotType;

    fn ctx(subtask: u32, parallelism: u32, attempt: u64, restored: Option<u64>) -> OperatorContext {
        OperatorContext::new("file-sink-test", "sink", subtask, parallelism, 32)
            .in_attempt(attempt, restored)
    }

    fn barrier(id: u64) -> Barrier {
        Barrier {
            id,
            kind: SnapshotType::Checkpoint,
            is_final: false,
        }
    }

    type LineSink = FileSink<u64, fn(&u64, &mut String)>;

    fn sink(dir: &Path) -> LineSink {
        FileSink::new(dir, |n: &u64, line: &mut String| {
            line.push_str(&n.to_string())
        })
    }

    fn hidden(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn in_progress_names_parse() {
        assert_eq!(
            parse_in_progress_name(".inprogress-000003-0002-17"),
            Some((3, 2))
        );
        for other in [
            "part-0000000003-0002",
            ".inprogress-000003-0002",
            ".inprogress-000003-0002-1-2",
            ".inprogress-x-0002-1",
            ".inprogress--0002-1",
        ] {
            assert_eq!(parse_in_progress_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_later_attempt_deletes_the_in_progress_files_a_killed_attempt_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut out = Output::default();
        // Attempt 1 at parallelism 3: checkpoint 1 completes but subtask 2 never hears of it;
        // then every subtask pre-commits checkpoint 2 and writes on; the worker is killed.
        let mut restored = Vec::new();
        for subtask in 0..3 {
            let mut s = sink(dir);
            s.open(&ctx(subtask, 3, 1, None)).unwrap();
            s.process_batch(vec![u64::from(subtask) * 10], &mut out)
                .unwrap();
            let snapshot = s.snapshot(&barrier(1)).unwrap();
            if subtask < 2 {
                s.notify_checkpoint_complete(1).unwrap();
            }
            restored.extend(snapshot.list);
            s.process_batch(vec![100 + u64::from(subtask)], &mut out)
                .unwrap();
            s.snapshot(&barrier(2)).unwrap();
            s.process_batch(vec![200 + u64::from(subtask)], &mut out)
                .unwrap();
            s.current.as_mut().unwrap().1.flush().unwrap();
        }
        // Subtask 2's pending file of 1, three pending files of 2, three being written.
        assert_eq!(hidden(dir).len(), 7, "{:?}", hidden(dir));

        // Attempt 2 at parallelism 2 restores checkpoint 1, spread over the subtasks; subtask 1
        // restores subtask 2's pending file of checkpoint 1 (list state is dealt round-robin).
        let mut sinks: Vec<LineSink> = (0..2).map(|_| sink(dir)).collect();
        for (subtask, s) in sinks.iter_mut().enumerate() {
            let list = restored.iter().skip(subtask).step_by(2).cloned().collect();
            let c = ctx(subtask as u32, 2, 2, Some(1));
            s.restore(
                &c,
                RestoredState {
                    list,
                    ..RestoredState::default()
                },
            )
            .unwrap();
            s.open(&c).unwrap();
        }
        // Opening deletes nothing yet: another subtask might still have pending files to commit.
        assert_eq!(hidden(dir).len(), 6, "{:?}", hidden(dir));
        for s in &mut sinks {
            s.process_batch(vec![7], &mut out).unwrap();
            s.snapshot(&barrier(2)).unwrap();
        }
        for s in &mut sinks {
            s.notify_checkpoint_complete(2).unwrap();
        }
        assert_eq!(hidden(dir), Vec::<String>::new());
        let committed: Vec<String> = committed_files(dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            committed,
            [
                "part-0000000001-0000",
                "part-0000000001-0001",
                "part-0000000001-0002",
                "part-0000000002-0000",
                "part-0000000002-0001"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("part-0000000001-0002")).unwrap(),
            "20\n"
        );
    }
}
