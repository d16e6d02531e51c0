//! Pure: is a `--wait` done, still waiting (with the progress line to show), or failed? Decided
//! from the StreamJob as last read and the Warning events since the request. No client.

use streamjob_api::v1alpha1::{JobPhase, JobState, StreamJob};

use crate::format::{bytes, phase, NONE};

/// The state of a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not there yet; the line says where things stand.
    Waiting(String),
    /// Done; the line says what happened.
    Done(String),
    /// It will not happen (or failed); the reason, for the user.
    Failed(String),
}

/// Where the operator stands, for progress lines: `phase Running, attempt 2, pending upgrade (snapshot)`.
fn where_it_stands(job: &StreamJob) -> String {
    let status = job.status.clone().unwrap_or_default();
    let mut line = format!(
        "phase {}, attempt {}",
        phase(status.phase),
        status
            .job_attempt
            .map_or_else(|| NONE.to_string(), |a| a.to_string())
    );
    if let Some(p) = &status.pending_change {
        line.push_str(&format!(", pending {} ({})", p.kind, p.step));
    }
    line
}

/// Whether the operator has seen the spec as of `generation` (the one our patch produced).
fn observed(job: &StreamJob, generation: Option<i64>) -> bool {
    let seen = job.status.as_ref().and_then(|s| s.observed_generation);
    match (generation, seen) {
        (Some(want), Some(seen)) => seen >= want,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// A savepoint requested with `savepointTriggerNonce = nonce`; `before` is the location of
/// `status.lastSavepoint` when it was requested; `warnings` are the messages of the job's Warning
/// events since then (oldest first).
pub fn savepoint_progress(
    job: &StreamJob,
    nonce: i64,
    before: Option<&str>,
    warnings: &[String],
) -> Progress {
    let status = job.status.clone().unwrap_or_default();
    let handled = status.handled_nonces.savepoint.is_some_and(|n| n >= nonce);
    let latest = status.last_savepoint.as_ref();
    if handled {
        return match latest.filter(|s| Some(s.location.as_str()) != before) {
            Some(sp) => Progress::Done(format!(
                "savepoint {} of attempt {} completed in {} ms ({}) at {}",
                sp.id,
                sp.attempt,
                sp.duration_ms,
                bytes(sp.size_bytes),
                sp.location
            )),
            None => Progress::Failed(format!(
                "the operator acknowledged savepoint request {nonce} without taking a savepoint \
                 (the job had no running attempt: {})",
                where_it_stands(job)
            )),
        };
    }
    let last_warning = warnings.last().map(|w| format!("; last problem: {w}"));
    match status.phase {
        Some(JobPhase::Failed) => Progress::Failed(format!(
            "the job failed, so no savepoint will be taken: {}",
            status
                .message
                .as_deref()
                .unwrap_or("see `streamjob describe`")
        )),
        Some(JobPhase::Finished) => Progress::Failed(
            "the job has finished: there is no running attempt to take a savepoint".into(),
        ),
        Some(JobPhase::Suspended) | Some(JobPhase::Suspending)
            if job.spec.state == JobState::Suspended =>
        {
            Progress::Failed(
                "the job is suspended: the savepoint is taken once it runs again \
                 (`streamjob resume NAME`)"
                    .into(),
            )
        }
        _ => Progress::Waiting(format!(
            "waiting for savepoint request {nonce}: {}{}",
            where_it_stands(job),
            last_warning.unwrap_or_default()
        )),
    }
}

/// Waiting for the job to reach `target` (`Suspended` after suspend, `Running` after resume),
/// once the operator has observed `generation`.
pub fn phase_progress(
    job: &StreamJob,
    target: JobPhase,
    generation: Option<i64>,
    warnings: &[String],
) -> Progress {
    let status = job.status.clone().unwrap_or_default();
    if observed(job, generation) {
        if status.phase == Some(target) {
            return Progress::Done(match (&status.last_savepoint, target) {
                (Some(sp), JobPhase::Suspended) => {
                    format!("suspended with savepoint {} at {}", sp.id, sp.location)
                }
                (_, JobPhase::Running) => format!(
                    "running: attempt {}, {}",
                    status
                        .job_attempt
                        .map_or_else(|| NONE.to_string(), |a| a.to_string()),
                    status.restored_from.as_deref().map_or_else(
                        || "started with empty state".to_string(),
                        |r| format!("restored from {r}")
                    )
                ),
                _ => where_it_stands(job),
            });
        }
        if status.phase == Some(JobPhase::Failed) {
            return Progress::Failed(format!(
                "the job failed: {}",
                status
                    .message
                    .as_deref()
                    .unwrap_or("see `streamjob describe`")
            ));
        }
        if target == JobPhase::Running && status.phase == Some(JobPhase::Finished) {
            return Progress::Failed("the job has finished (a bounded job ends on its own)".into());
        }
    }
    Progress::Waiting(format!(
        "waiting for phase {target:?}: {}{}",
        where_it_stands(job),
        warnings
            .last()
            .map(|w| format!("; last problem: {w}"))
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{job, ts};

    #[test]
    fn savepoint_is_done_when_the_nonce_is_handled_with_a_new_savepoint() {
        let j = job("wc")
            .phase(JobPhase::Running)
            .savepoint(12, ts(-1), "manual")
            .handled_savepoint_nonce(3)
            .build();
        let Progress::Done(line) = savepoint_progress(&j, 3, Some("s3://old"), &[]) else {
            panic!("not done");
        };
        assert!(line.starts_with("savepoint 12 of attempt 2 completed in 40 ms (2.0 KiB) at s3://bucket/ns/wc/savepoints/"), "{line}");
        // A later nonce handled also answers ours (someone bumped it again).
        assert!(matches!(
            savepoint_progress(&j, 2, None, &[]),
            Progress::Done(_)
        ));
    }

    #[test]
    fn savepoint_waits_and_shows_the_last_failure() {
        let j = job("wc")
            .phase(JobPhase::Running)
            .attempt(2)
            .handled_savepoint_nonce(2)
            .build();
        let warnings = vec!["manual savepoint failed: timed out; retrying".to_string()];
        assert_eq!(
            savepoint_progress(&j, 3, None, &warnings),
            Progress::Waiting(
                "waiting for savepoint request 3: phase Running, attempt 2; last problem: manual savepoint failed: timed out; retrying".into()
            )
        );
    }

    #[test]
    fn savepoint_fails_fast_when_it_cannot_happen() {
        let failed = job("wc")
            .phase(JobPhase::Failed)
            .message("gave up after 5 consecutive failed attempts")
            .build();
        assert!(
            matches!(savepoint_progress(&failed, 1, None, &[]), Progress::Failed(m) if m.contains("gave up"))
        );
        let finished = job("wc").phase(JobPhase::Finished).build();
        assert!(matches!(
            savepoint_progress(&finished, 1, None, &[]),
            Progress::Failed(_)
        ));
        let mut suspended = job("wc").phase(JobPhase::Suspended).build();
        suspended.spec.state = JobState::Suspended;
        assert!(
            matches!(savepoint_progress(&suspended, 1, None, &[]), Progress::Failed(m) if m.contains("resume"))
        );
        // Acknowledged without a new savepoint: the job had not started.
        let skipped = job("wc")
            .savepoint(5, ts(-100), "manual")
            .handled_savepoint_nonce(1)
            .build();
        let before = skipped
            .status
            .as_ref()
            .unwrap()
            .last_savepoint
            .clone()
            .unwrap()
            .location;
        assert!(matches!(
            savepoint_progress(&skipped, 1, Some(&before), &[]),
            Progress::Failed(_)
        ));
    }

    #[test]
    fn phase_wait_needs_the_new_generation_observed() {
        let stale = job("wc").phase(JobPhase::Running).generation(4, 3).build();
        assert!(matches!(
            phase_progress(&stale, JobPhase::Running, Some(4), &[]),
            Progress::Waiting(_)
        ));
        let seen = job("wc")
            .phase(JobPhase::Running)
            .attempt(3)
            .generation(4, 4)
            .build();
        assert_eq!(
            phase_progress(&seen, JobPhase::Running, Some(4), &[]),
            Progress::Done("running: attempt 3, started with empty state".into())
        );
    }

    #[test]
    fn suspend_wait_reports_the_savepoint_and_failure_stops_it() {
        let suspended = job("wc")
            .phase(JobPhase::Suspended)
            .savepoint(9, ts(-1), "suspend")
            .generation(2, 2)
            .build();
        let Progress::Done(line) = phase_progress(&suspended, JobPhase::Suspended, Some(2), &[])
        else {
            panic!("not done");
        };
        assert!(
            line.starts_with("suspended with savepoint 9 at s3://"),
            "{line}"
        );
        let suspending = job("wc")
            .phase(JobPhase::Suspending)
            .pending("suspend", "snapshot", None)
            .generation(2, 2)
            .build();
        assert_eq!(
            phase_progress(&suspending, JobPhase::Suspended, Some(2), &[]),
            Progress::Waiting(
                "waiting for phase Suspended: phase Suspending, attempt <none>, pending suspend (snapshot)".into()
            )
        );
        let failed = job("wc").phase(JobPhase::Failed).generation(2, 2).build();
        assert!(matches!(
            phase_progress(&failed, JobPhase::Running, Some(2), &[]),
            Progress::Failed(_)
        ));
    }
}
