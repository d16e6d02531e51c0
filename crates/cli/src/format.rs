//! Pure text formatting for the CLI: ages, sizes, aligned tables and the `jobs` table. No I/O.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use streamjob_api::v1alpha1::{JobPhase, StreamJob};

/// Shown where a value is unknown or unset (as kubectl does).
pub const NONE: &str = "<none>";

/// A duration the way kubectl prints ages: `45s`, `3m20s`, `25m`, `5h10m`, `30h`, `3d4h`, `20d`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        match s % 60 {
            0 => format!("{m}m"),
            rest => format!("{m}m{rest}s"),
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            rest => format!("{h}h{rest}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        match h % 24 {
            0 => format!("{d}d"),
            rest => format!("{d}d{rest}h"),
        }
    } else {
        format!("{d}d")
    }
}

/// Seconds from `then` to `now` (0 when `then` is in the future: clocks differ a little).
pub fn seconds_since(then: Timestamp, now: Timestamp) -> i64 {
    (now.as_second() - then.as_second()).max(0)
}

/// The age of a Kubernetes time, or [`NONE`].
pub fn age(time: Option<&Time>, now: Timestamp) -> String {
    time.map_or_else(
        || NONE.to_string(),
        |t| human_duration(seconds_since(t.0, now)),
    )
}

/// Bytes in binary units: `512 B`, `12.3 KiB`, `4.0 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{} B", n.max(0));
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The phase of a job as shown (`<none>` before the operator has seen it).
pub fn phase(phase: Option<JobPhase>) -> String {
    phase.map_or_else(|| NONE.to_string(), |p| format!("{p:?}"))
}

/// Left-aligned columns separated by three spaces, as `kubectl get` prints them.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Appends a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The rendered table, one line per row, each ending in a newline, trailing blanks trimmed.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The `streamjob jobs` table; with `all_namespaces` a NAMESPACE column comes first.
pub fn jobs_table(jobs: &[StreamJob], all_namespaces: bool, now: Timestamp) -> String {
    let mut headers = vec![
        "NAME",
        "PHASE",
        "PARALLELISM",
        "WORKERS",
        "ATTEMPT",
        "LAST CHECKPOINT",
        "RESTARTS",
        "AGE",
    ];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let mut table = Table::new(&headers);
    for job in jobs {
        let status = job.status.clone().unwrap_or_default();
        let checkpoint = status.last_checkpoint.as_ref().map_or_else(
            || NONE.to_string(),
            |c| match &c.completed_at {
                Some(t) => format!("{} ({} ago)", c.id, age(Some(t), now)),
                None => c.id.to_string(),
            },
        );
        let mut row = vec![
            job.metadata.name.clone().unwrap_or_default(),
            phase(status.phase),
            job.spec.parallelism.to_string(),
            job.spec.effective_workers().to_string(),
            status
                .job_attempt
                .map_or_else(|| NONE.to_string(), |a| a.to_string()),
            checkpoint,
            status.restarts.to_string(),
            age(job.metadata.creation_timestamp.as_ref(), now),
        ];
        if all_namespaces {
            row.insert(0, job.metadata.namespace.clone().unwrap_or_default());
        }
        table.row(row);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{job, now, ts};

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (-5, "0s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (25 * 60 + 7, "25m"),
            (5 * 3600 + 10 * 60, "5h10m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (20 * 86_400, "20d"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}s");
        }
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let mut t = Table::new(&["A", "LONG HEADER", "C"]);
        t.row(vec!["value".into(), "x".into(), String::new()]);
        assert_eq!(t.render(), "A       LONG HEADER   C\nvalue   x\n");
    }

    #[test]
    fn jobs_table_shows_phase_checkpoint_age_and_restarts() {
        let running = job("wc")
            .created(ts(-3600))
            .phase(JobPhase::Running)
            .attempt(2)
            .restarts(1)
            .checkpoint(41, ts(-3))
            .build();
        let fresh = job("new").created(ts(-5)).build();
        let out = jobs_table(&[running, fresh], false, now());
        assert_eq!(
            out,
            "NAME   PHASE     PARALLELISM   WORKERS   ATTEMPT   LAST CHECKPOINT   RESTARTS   AGE\n\
             wc     Running   2             1         2         41 (3s ago)       1          60m\n\
             new    <none>    2             1         <none>    <none>            0          5s\n"
        );
    }

    #[test]
    fn all_namespaces_adds_a_namespace_column() {
        let out = jobs_table(&[job("wc").namespace("team-a").build()], true, now());
        let header = out.lines().next().unwrap();
        assert!(header.starts_with("NAMESPACE   NAME"), "{header}");
        assert!(out.lines().nth(1).unwrap().starts_with("team-a      wc"));
    }
}
