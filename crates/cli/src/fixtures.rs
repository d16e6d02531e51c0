//! Test fixtures: a small StreamJob builder and a fixed clock (test only).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use streamjob_api::v1alpha1::{
    FailureInfo, JobPhase, PendingChange, SnapshotInfo, StreamJob, StreamJobSpec, StreamJobStatus,
};

/// The fixed "now" of every test: 2026-12-01T10:00:00Z.
pub fn now() -> Timestamp {
    "2026-12-01T10:00:00Z".parse().unwrap()
}

/// `now()` shifted by `offset` seconds.
pub fn ts(offset: i64) -> Time {
    Time(Timestamp::from_second(now().as_second() + offset).unwrap())
}

/// Storage root of fixture jobs.
pub const ROOT: &str = "s3://bucket/ns/wc";

/// A snapshot of the fixture job's storage.
pub fn snapshot(id: i64, attempt: i64, completed: Time, reason: Option<&str>) -> SnapshotInfo {
    let dir = if reason.is_some_and(|r| r != "periodic") {
        format!("savepoints/sp-{id:010}-{attempt:06}")
    } else {
        format!("checkpoints/{attempt:06}-{id:010}")
    };
    SnapshotInfo {
        id,
        attempt,
        location: format!("{ROOT}/{dir}"),
        completed_at: Some(completed),
        size_bytes: 2048,
        duration_ms: 40,
        reason: reason.map(str::to_string),
    }
}

pub struct JobBuilder(StreamJob);

pub fn job(name: &str) -> JobBuilder {
    let mut job = StreamJob::new(name, StreamJobSpec::builtin("windowed-count", "/tmp/x"));
    job.spec.parallelism = 2;
    job.metadata.namespace = Some("ns".into());
    job.metadata.creation_timestamp = Some(ts(-600));
    job.status = Some(StreamJobStatus::default());
    JobBuilder(job)
}

impl JobBuilder {
    fn status(&mut self) -> &mut StreamJobStatus {
        self.0.status.get_or_insert_with(Default::default)
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.into());
        self
    }
    pub fn created(mut self, t: Time) -> Self {
        self.0.metadata.creation_timestamp = Some(t);
        self
    }
    pub fn generation(mut self, g: i64, observed: i64) -> Self {
        self.0.metadata.generation = Some(g);
        self.status().observed_generation = Some(observed);
        self
    }
    pub fn phase(mut self, p: JobPhase) -> Self {
        self.status().phase = Some(p);
        self
    }
    pub fn attempt(mut self, a: i64) -> Self {
        self.status().job_attempt = Some(a);
        self
    }
    pub fn restarts(mut self, r: i32) -> Self {
        self.status().restarts = r;
        self
    }
    pub fn checkpoint(mut self, id: i64, t: Time) -> Self {
        self.status().last_checkpoint = Some(snapshot(id, 2, t, Some("periodic")));
        self
    }
    /// Adds a savepoint to the history (newest first) and makes it the last one.
    pub fn savepoint(mut self, id: i64, t: Time, reason: &str) -> Self {
        let info = snapshot(id, 2, t, Some(reason));
        self.status().savepoints.insert(0, info.clone());
        self.status().last_savepoint = Some(info);
        self
    }
    pub fn handled_savepoint_nonce(mut self, n: i64) -> Self {
        self.status().handled_nonces.savepoint = Some(n);
        self
    }
    pub fn restored_from(mut self, location: &str) -> Self {
        self.status().restored_from = Some(location.into());
        self
    }
    pub fn message(mut self, m: &str) -> Self {
        self.status().message = Some(m.into());
        self
    }
    pub fn failure(mut self, reason: &str, pod: &str, message: &str, t: Time) -> Self {
        self.status().last_failure = Some(FailureInfo {
            time: Some(t),
            attempt: 1,
            pod: Some(pod.into()),
            reason: reason.into(),
            message: Some(message.into()),
        });
        self
    }
    pub fn pending(mut self, kind: &str, step: &str, restore_from: Option<&str>) -> Self {
        self.status().pending_change = Some(PendingChange {
            kind: kind.into(),
            step: step.into(),
            restore_from: restore_from.map(str::to_string),
            started_at: Some(ts(-4)),
            ..Default::default()
        });
        self
    }
    pub fn condition(mut self, type_: &str, status: &str, reason: &str, message: &str) -> Self {
        self.status().conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: ts(-30),
        });
        self
    }
    pub fn build(self) -> StreamJob {
        self.0
    }
}
