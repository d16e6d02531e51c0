//! The worker's HTTP control API, used by the operator and by humans:
//! `GET /healthz`, `GET /readyz`, `GET /v1/status`, `GET /metrics` (Prometheus), and the mutating
//! `POST /v1/checkpoint` and `POST /v1/savepoint?stop=true|false`, which need
//! `Authorization: Bearer <STREAMJOB_CONTROL_TOKEN>` and answer once the snapshot completed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use streamjob_engine::coordinator::CompletedSnapshot;
use streamjob_engine::job::JobController;
use streamjob_engine::restore::DownloadSummary;
use streamjob_engine::types::SnapshotType;
use streamjob_engine::watermark_alignment::AlignmentSummary;

/// Lifecycle of the job in this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Restoring and starting.
    Starting,
    /// Tasks run.
    Running,
    /// Bounded input processed and committed.
    Finished,
    /// Stopped with a savepoint.
    Stopped,
    /// The attempt failed (the process exits non-zero).
    Failed,
}

/// A completed snapshot as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotReport {
    /// Checkpoint id.
    pub id: u64,
    /// Attempt that wrote it.
    pub attempt: u64,
    /// `checkpoint` or `savepoint`.
    pub kind: String,
    /// Full location of the snapshot folder.
    pub location: String,
    /// Bytes of state.
    pub size_bytes: u64,
    /// Trigger to completion.
    pub duration_ms: u64,
    /// The longest time a task stopped processing for it (the synchronous part), microseconds.
    #[serde(default)]
    pub sync_max_micros: u64,
    /// Completion time, unix ms.
    pub completed_at_ms: u64,
}

impl From<&CompletedSnapshot> for SnapshotReport {
    fn from(s: &CompletedSnapshot) -> Self {
        Self {
            id: s.id,
            attempt: s.attempt,
            kind: match s.kind {
                SnapshotType::Checkpoint => "checkpoint".into(),
                SnapshotType::Savepoint { .. } => "savepoint".into(),
            },
            location: s.location.clone(),
            size_bytes: s.size_bytes,
            duration_ms: s.duration.as_millis() as u64,
            sync_max_micros: s.sync_max_micros,
            completed_at_ms: s.completed_at_ms,
        }
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Job name.
    pub job: String,
    /// Attempt number.
    pub attempt: u64,
    /// This worker's index (0 hosts the job coordinator).
    pub worker: u32,
    /// Workers of the attempt.
    pub workers: u32,
    /// State.
    pub state: RunState,
    /// Snapshot restored by this attempt.
    pub restored_from: Option<String>,
    /// How much of it this worker downloaded (a worker needs only its key groups' files).
    pub restore_download: Option<DownloadSummary>,
    /// Newest completed checkpoint.
    pub last_checkpoint: Option<SnapshotReport>,
    /// Newest completed savepoint.
    pub last_savepoint: Option<SnapshotReport>,
    /// Records read by the sources.
    pub source_records: u64,
    /// What watermark alignment did to this worker's source subtasks.
    pub alignment: AlignmentSummary,
    /// Why the attempt failed, when it did.
    pub failure: Option<String>,
}

/// What the API serves from.
pub struct ControlState {
    /// Job name.
    pub job: String,
    /// Attempt (known once the attempt is recorded or joined).
    pub attempt: std::sync::atomic::AtomicU64,
    /// This worker's index and the number of workers.
    pub worker: (u32, u32),
    /// Restored snapshot.
    pub restored_from: Mutex<Option<String>>,
    /// How much of the restored snapshot this worker downloaded.
    pub restore_download: Mutex<Option<DownloadSummary>>,
    /// Token for mutating calls (`None`: mutating calls are refused).
    pub token: Option<String>,
    /// How long a snapshot request may take before the call gives up.
    pub snapshot_timeout: Duration,
    /// The running attempt (set once started).
    pub controller: Mutex<Option<JobController>>,
    /// State.
    pub state: Mutex<RunState>,
    /// Failure reason.
    pub failure: Mutex<Option<String>>,
    /// Last snapshot seen after the job ended (kept for status).
    pub final_progress: Mutex<Option<streamjob_engine::coordinator::JobProgress>>,
    /// Watermark alignment when the job ended (kept for status).
    pub final_alignment: Mutex<AlignmentSummary>,
}

impl ControlState {
    fn status(&self) -> StatusReport {
        let controller = self.controller.lock().ok().and_then(|c| c.clone());
        let progress = match &controller {
            Some(c) => Some(c.progress()),
            None => self.final_progress.lock().ok().and_then(|p| p.clone()),
        };
        StatusReport {
            job: self.job.clone(),
            attempt: self.attempt.load(std::sync::atomic::Ordering::Relaxed),
            worker: self.worker.0,
            workers: self.worker.1,
            state: self.state.lock().map(|s| *s).unwrap_or(RunState::Failed),
            restored_from: self.restored_from.lock().ok().and_then(|r| r.clone()),
            restore_download: self.restore_download.lock().ok().and_then(|r| *r),
            last_checkpoint: progress
                .as_ref()
                .and_then(|p| p.last_checkpoint.as_ref().map(SnapshotReport::from)),
            last_savepoint: progress
                .as_ref()
                .and_then(|p| p.last_savepoint.as_ref().map(SnapshotReport::from)),
            source_records: controller.as_ref().map_or(0, |c| c.source_records()),
            alignment: match &controller {
                Some(c) => c.alignment(),
                None => self.final_alignment.lock().map(|a| *a).unwrap_or_default(),
            },
            failure: self.failure.lock().ok().and_then(|f| f.clone()),
        }
    }
}

/// The router of the control API.
pub fn router(state: Arc<ControlState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/checkpoint", post(checkpoint))
        .route("/v1/savepoint", post(savepoint))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<ControlState>>) -> Response {
    match state.state.lock().map(|s| *s) {
        Ok(RunState::Running) => (StatusCode::OK, "running").into_response(),
        Ok(other) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{other:?}").to_lowercase(),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn status(State(state): State<Arc<ControlState>>) -> Json<StatusReport> {
    Json(state.status())
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Constant-time comparison of the bearer token.
fn authorized(state: &ControlState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(expected) = state.token.as_deref() else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "mutating calls are disabled: start the worker with STREAMJOB_CONTROL_TOKEN set",
        )));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same_len = given.len() == expected.len();
    let diff = given
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if same_len && diff == 0 {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        )))
    }
}

async fn request(state: Arc<ControlState>, kind: SnapshotType) -> Response {
    let Some(controller) = state.controller.lock().ok().and_then(|c| c.clone()) else {
        return error(StatusCode::CONFLICT, "the job is not running");
    };
    if state.state.lock().map(|s| *s).ok() != Some(RunState::Running) {
        return error(StatusCode::CONFLICT, "the job is not running");
    }
    let reply = controller.request_snapshot(kind);
    let timeout = state.snapshot_timeout;
    let outcome = tokio::task::spawn_blocking(move || reply.recv_timeout(timeout)).await;
    match outcome {
        Ok(Ok(Ok(done))) => Json(SnapshotReport::from(&done)).into_response(),
        Ok(Ok(Err(reason))) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("snapshot failed: {reason}"),
        ),
        Ok(Err(_)) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the snapshot did not complete in time; it may still complete",
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        ),
    }
}

async fn checkpoint(State(state): State<Arc<ControlState>>, headers: HeaderMap) -> Response {
    if let Err(response) = authorized(&state, &headers) {
        return *response;
    }
    request(state, SnapshotType::Checkpoint).await
}

/// Query of `POST /v1/savepoint`.
#[derive(Debug, Deserialize)]
pub struct SavepointQuery {
    /// Stop the job once the savepoint is complete.
    #[serde(default)]
    pub stop: bool,
}

async fn savepoint(
    State(state): State<Arc<ControlState>>,
    headers: HeaderMap,
    Query(query): Query<SavepointQuery>,
) -> Response {
    if let Err(response) = authorized(&state, &headers) {
        return *response;
    }
    request(state, SnapshotType::Savepoint { stop: query.stop }).await
}

async fn metrics(State(state): State<Arc<ControlState>>) -> Response {
    let status = state.status();
    let progress = state
        .controller
        .lock()
        .ok()
        .and_then(|c| c.as_ref().map(|c| c.progress()))
        .or_else(|| state.final_progress.lock().ok().and_then(|p| p.clone()))
        .unwrap_or_default();
    let mut registry = Registry::with_prefix("streamjob");
    let mut counter = |name: &str, help: &str, value: u64| {
        let c: Counter = Counter::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    counter(
        "source_records",
        "Records read by the sources of this attempt",
        status.source_records,
    );
    counter(
        "checkpoints_completed",
        "Snapshots completed in this attempt",
        progress.completed,
    );
    counter(
        "checkpoints_failed",
        "Checkpoints failed or aborted in this attempt",
        progress.failed,
    );
    counter(
        "source_alignment_pauses",
        "Times a source subtask paused because its watermark was too far ahead of its alignment group",
        status.alignment.pauses,
    );
    let mut gauge = |name: &str, help: &str, value: i64| {
        let g: Gauge = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    };
    gauge(
        "source_watermark_drift_max_milliseconds",
        "Largest event-time distance of a source subtask's watermark ahead of its alignment group",
        status.alignment.max_drift_ms,
    );
    gauge("job_attempt", "Job attempt number", status.attempt as i64);
    if let Some(d) = &status.restore_download {
        gauge(
            "restore_downloaded_bytes",
            "Bytes of state files this worker downloaded to restore the attempt",
            d.downloaded_bytes as i64,
        );
        gauge(
            "restore_skipped_bytes",
            "Bytes of state files of the restored snapshot this worker did not need (other workers' key groups)",
            d.skipped_bytes as i64,
        );
    }
    if let Some(c) = &status.last_checkpoint {
        gauge(
            "checkpoint_last_duration_milliseconds",
            "Duration of the newest completed checkpoint",
            c.duration_ms as i64,
        );
        gauge(
            "checkpoint_last_sync_max_microseconds",
            "Longest time a task of this worker stopped processing for the newest checkpoint (copying and encoding state; the upload is asynchronous)",
            c.sync_max_micros as i64,
        );
        gauge(
            "checkpoint_last_size_bytes",
            "State size of the newest completed checkpoint",
            c.size_bytes as i64,
        );
        gauge(
            "checkpoint_last_completed_timestamp_seconds",
            "When the newest checkpoint completed",
            (c.completed_at_ms / 1000) as i64,
        );
    }
    let mut body = String::new();
    match encode(&mut body, &registry) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode metrics: {e}"),
        ),
    }
}
