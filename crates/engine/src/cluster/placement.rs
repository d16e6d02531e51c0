//! Which worker process runs which subtask (pure). Every vertex of the job graph has the same
//! parallelism; subtasks are cut into contiguous blocks, one block per worker, so a forward exchange
//! (subtask i -> subtask i) never leaves its process and every worker gets at least one subtask.

use std::ops::Range;

/// The layout of one attempt's subtasks over its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    workers: u32,
    parallelism: u32,
}

impl Placement {
    /// `workers` processes sharing `parallelism` subtasks per vertex.
    pub fn new(workers: u32, parallelism: u32) -> Result<Self, String> {
        if workers == 0 {
            return Err("at least one worker is needed".into());
        }
        if workers > parallelism {
            return Err(format!(
                "{workers} workers for parallelism {parallelism}: a worker would have no subtask; use at most {parallelism} workers"
            ));
        }
        Ok(Self {
            workers,
            parallelism,
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// The worker that runs `subtask`.
    pub fn worker_of(&self, subtask: u32) -> u32 {
        (u64::from(subtask) * u64::from(self.workers) / u64::from(self.parallelism)) as u32
    }

    /// The subtasks `worker` runs (of every vertex).
    pub fn subtasks_of(&self, worker: u32) -> Range<u32> {
        let start = (0..self.parallelism)
            .find(|s| self.worker_of(*s) == worker)
            .unwrap_or(self.parallelism);
        let end = (start..self.parallelism)
            .find(|s| self.worker_of(*s) != worker)
            .unwrap_or(self.parallelism);
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_contiguous_cover_every_subtask_and_leave_no_worker_empty() {
        for p in 1..=12 {
            for w in 1..=p {
                let placement = Placement::new(w, p).unwrap();
                let mut covered = Vec::new();
                for worker in 0..w {
                    let range = placement.subtasks_of(worker);
                    assert!(!range.is_empty(), "worker {worker} of {w} empty at p={p}");
                    for s in range.clone() {
                        assert_eq!(placement.worker_of(s), worker);
                    }
                    covered.extend(range);
                }
                assert_eq!(covered, (0..p).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn four_subtasks_on_two_workers_split_in_halves() {
        let placement = Placement::new(2, 4).unwrap();
        assert_eq!(placement.subtasks_of(0), 0..2);
        assert_eq!(placement.subtasks_of(1), 2..4);
    }

    #[test]
    fn more_workers_than_subtasks_is_refused() {
        assert!(Placement::new(3, 2)
            .unwrap_err()
            .contains("at most 2 workers"));
        assert!(Placement::new(0, 2).is_err());
    }
}
