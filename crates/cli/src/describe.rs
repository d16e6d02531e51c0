//! Pure: the text of `streamjob describe` (status, savepoint history, pending change, last
//! failure) and the job's recent Warning events picked from an event list. No client.

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use streamjob_api::v1alpha1::{SnapshotInfo, StreamJob};

use crate::format::{age, bytes, human_duration, phase, seconds_since, Table, NONE};

/// Warning events shown by `describe`.
pub const RECENT_WARNINGS: usize = 10;

/// A Warning event about the job, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// When it was last seen.
    pub time: Option<Timestamp>,
    /// Short reason (`PodFailed`, `SavepointFailed`...).
    pub reason: String,
    /// What happened.
    pub message: String,
    /// How often it was seen (1 unless the API server merged repeats).
    pub count: i32,
}

/// When an event was last seen: its series, its event time, or the older timestamps.
pub fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The Warning events about StreamJob `name`, oldest first; at most `limit`, the newest kept.
pub fn warnings_of(events: &[Event], name: &str, limit: usize) -> Vec<Warning> {
    let mut out: Vec<Warning> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.name.as_deref() == Some(name)
                    && r.kind.as_deref().is_none_or(|k| k == "StreamJob")
            })
        })
        .map(|e| Warning {
            time: event_time(e),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.note.clone().unwrap_or_default(),
            count: e
                .series
                .as_ref()
                .map(|s| s.count)
                .or(e.deprecated_count)
                .unwrap_or(1)
                .max(1),
        })
        .collect();
    out.sort_by_key(|w| w.time);
    let skip = out.len().saturating_sub(limit);
    out.split_off(skip)
}

fn ago(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(
        || NONE.to_string(),
        |t| format!("{} ago", human_duration(seconds_since(t, now))),
    )
}

fn snapshot_line(s: &SnapshotInfo, now: Timestamp) -> String {
    format!(
        "{} of attempt {} ({}), {}, {} ms, {} at {}",
        s.id,
        s.attempt,
        s.reason.as_deref().unwrap_or("periodic"),
        ago(s.completed_at.as_ref().map(|t| t.0), now),
        s.duration_ms,
        bytes(s.size_bytes),
        s.location
    )
}

fn field(out: &mut String, name: &str, value: impl AsRef<str>) {
    out.push_str(&format!("{:<17}{}\n", format!("{name}:"), value.as_ref()));
}

fn indent(out: &mut String, text: &str) {
    for line in text.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

/// The full `describe` text.
pub fn describe(job: &StreamJob, warnings: &[Warning], now: Timestamp) -> String {
    let status = job.status.clone().unwrap_or_default();
    let spec = &job.spec;
    let mut out = String::new();
    field(
        &mut out,
        "Name",
        job.metadata.name.as_deref().unwrap_or_default(),
    );
    field(
        &mut out,
        "Namespace",
        job.metadata.namespace.as_deref().unwrap_or_default(),
    );
    field(
        &mut out,
        "Age",
        age(job.metadata.creation_timestamp.as_ref(), now),
    );
    field(
        &mut out,
        "Job",
        spec.job.name.as_deref().unwrap_or("(custom entrypoint)"),
    );
    field(
        &mut out,
        "Desired state",
        format!("{:?}", spec.state).to_lowercase(),
    );
    field(&mut out, "Phase", phase(status.phase));
    field(
        &mut out,
        "Parallelism",
        format!(
            "{} (workers: {})",
            spec.parallelism,
            spec.effective_workers()
        ),
    );
    field(
        &mut out,
        "Attempt",
        status
            .job_attempt
            .map_or_else(|| NONE.to_string(), |a| a.to_string()),
    );
    field(
        &mut out,
        "Restarts",
        format!(
            "{} (consecutive failures: {})",
            status.restarts, status.consecutive_failures
        ),
    );
    field(
        &mut out,
        "Restored from",
        status.restored_from.as_deref().unwrap_or("(empty state)"),
    );
    field(
        &mut out,
        "Generation",
        format!(
            "{} (observed: {})",
            job.metadata
                .generation
                .map_or_else(|| NONE.to_string(), |g| g.to_string()),
            status
                .observed_generation
                .map_or_else(|| NONE.to_string(), |g| g.to_string())
        ),
    );
    field(
        &mut out,
        "Message",
        status.message.as_deref().unwrap_or(NONE),
    );

    out.push_str("Conditions:\n");
    if status.conditions.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut table = Table::new(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]);
        for c in &status.conditions {
            table.row(vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                age(Some(&c.last_transition_time), now),
                c.message.clone(),
            ]);
        }
        indent(&mut out, &table.render());
    }

    let snapshot = |s: &Option<SnapshotInfo>| {
        s.as_ref()
            .map_or_else(|| NONE.to_string(), |s| snapshot_line(s, now))
    };
    field(
        &mut out,
        "Last checkpoint",
        snapshot(&status.last_checkpoint),
    );
    field(&mut out, "Last savepoint", snapshot(&status.last_savepoint));
    out.push_str("Savepoint history:\n");
    if status.savepoints.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut table = Table::new(&["ID", "ATTEMPT", "REASON", "COMPLETED", "SIZE", "LOCATION"]);
        for s in &status.savepoints {
            table.row(vec![
                s.id.to_string(),
                s.attempt.to_string(),
                s.reason.clone().unwrap_or_else(|| "-".into()),
                ago(s.completed_at.as_ref().map(|t| t.0), now),
                bytes(s.size_bytes),
                s.location.clone(),
            ]);
        }
        indent(&mut out, &table.render());
    }

    match &status.pending_change {
        None => field(&mut out, "Pending change", NONE),
        Some(p) => {
            out.push_str("Pending change:\n");
            let mut text = format!("Kind:          {}\nStep:          {}\n", p.kind, p.step);
            if let Some(g) = p.target_generation {
                text.push_str(&format!("Generation:    {g}\n"));
            }
            text.push_str(&format!(
                "Restores:      {}\nStarted:       {}\n",
                p.restore_from.as_deref().unwrap_or("(not decided yet)"),
                ago(p.started_at.as_ref().map(|t| t.0), now)
            ));
            indent(&mut out, &text);
        }
    }

    match &status.last_failure {
        None => field(&mut out, "Last failure", NONE),
        Some(f) => {
            out.push_str("Last failure:\n");
            let time = f.time.as_ref().map(|t| t.0);
            let text = format!(
                "Reason:        {}\nAttempt:       {}\nPod:           {}\nTime:          {}\nMessage:       {}\n",
                f.reason,
                f.attempt,
                f.pod.as_deref().unwrap_or(NONE),
                time.map_or_else(
                    || NONE.to_string(),
                    |t| format!("{} ({})", t.strftime("%Y-%m-%dT%H:%M:%SZ"), ago(Some(t), now))
                ),
                f.message.as_deref().unwrap_or(NONE)
            );
            indent(&mut out, &text);
        }
    }

    out.push_str("Warning events:\n");
    if warnings.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut table = Table::new(&["LAST SEEN", "REASON", "COUNT", "MESSAGE"]);
        for w in warnings {
            table.row(vec![
                ago(w.time, now),
                w.reason.clone(),
                w.count.to_string(),
                w.message.clone(),
            ]);
        }
        indent(&mut out, &table.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{job, now, ts};
    use k8s_openapi::api::core::v1::ObjectReference;
    use streamjob_api::v1alpha1::JobPhase;

    fn event(name: &str, type_: &str, reason: &str, offset: i64) -> Event {
        Event {
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            note: Some(format!("{reason} happened")),
            regarding: Some(ObjectReference {
                kind: Some("StreamJob".into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            deprecated_last_timestamp: Some(ts(offset)),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_jobs_recent_warnings_oldest_first() {
        let events = vec![
            event("wc", "Warning", "SavepointFailed", -5),
            event("wc", "Normal", "SavepointCompleted", -4),
            event("other", "Warning", "PodFailed", -3),
            event("wc", "Warning", "PodFailed", -60),
            event("wc", "Warning", "PodDeleted", -1),
        ];
        let got: Vec<String> = warnings_of(&events, "wc", 2)
            .into_iter()
            .map(|w| w.reason)
            .collect();
        assert_eq!(got, ["SavepointFailed", "PodDeleted"]);
    }

    #[test]
    fn describe_shows_status_history_failure_and_warnings() {
        let j = job("wc")
            .phase(JobPhase::Running)
            .attempt(2)
            .restarts(1)
            .restored_from("s3://bucket/ns/wc/checkpoints/000001-0000000007")
            .checkpoint(41, ts(-3))
            .savepoint(30, ts(-300), "upgrade")
            .savepoint(40, ts(-20), "manual")
            .failure(
                "PodFailed",
                "wc-worker-0",
                "Error (exit code 137)",
                ts(-120),
            )
            .pending("upgrade", "snapshot", None)
            .condition(
                "Ready",
                "True",
                "Running",
                "attempt 2 runs at parallelism 2",
            )
            .build();
        let warnings = warnings_of(&[event("wc", "Warning", "PodFailed", -120)], "wc", 10);
        let text = describe(&j, &warnings, now());
        for want in [
            "Name:            wc\n",
            "Phase:           Running\n",
            "Parallelism:     2 (workers: 1)\n",
            "Attempt:         2\n",
            "Restarts:        1 (consecutive failures: 0)\n",
            "Restored from:   s3://bucket/ns/wc/checkpoints/000001-0000000007\n",
            "Last checkpoint: 41 of attempt 2 (periodic), 3s ago, 40 ms, 2.0 KiB at s3://",
            "Last savepoint:  40 of attempt 2 (manual), 20s ago",
            "  TYPE    STATUS   REASON    SINCE   MESSAGE\n  Ready   True     Running   30s     attempt 2 runs",
            "  ID   ATTEMPT   REASON    COMPLETED   SIZE      LOCATION\n  40   2         manual    20s ago",
            "  30   2         upgrade   5m ago",
            "Pending change:\n  Kind:          upgrade\n  Step:          snapshot\n  Restores:      (not decided yet)\n",
            "Last failure:\n  Reason:        PodFailed\n  Attempt:       1\n  Pod:           wc-worker-0\n  Time:          2026-12-01T09:58:00Z (2m ago)\n  Message:       Error (exit code 137)\n",
            "Warning events:\n  LAST SEEN   REASON      COUNT   MESSAGE\n  2m ago      PodFailed   1       PodFailed happened\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn describe_of_a_new_job_says_none() {
        let text = describe(&job("new").build(), &[], now());
        assert!(text.contains("Phase:           <none>\n"), "{text}");
        assert!(text.contains("Last failure:    <none>\n"), "{text}");
        assert!(text.contains("Warning events:\n  <none>\n"), "{text}");
    }
}
