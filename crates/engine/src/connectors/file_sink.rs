//! Exactly-once file sink with two-phase commit (as Flink's FileSink): records go to a hidden
//! in-progress file; at a barrier the file is flushed, synced and closed (pre-commit) and recorded in
//! the snapshot; when the checkpoint completes it is renamed to its visible final name (commit).
//! After a restore, the pending files of the restored checkpoint are committed (that checkpoint is
//! complete). Names are deterministic, so committing twice (a zombie and its successor) is harmless.
//!
//! Layout of the output folder: `part-<checkpoint id>-<subtask>` committed files (one line per
//! record); `.inprogress-<attempt>-<subtask>-<n>` hidden files being written or awaiting commit.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    attempt: u64,
    operator_id: String,
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
            attempt: 0,
            operator_id: String::new(),
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
