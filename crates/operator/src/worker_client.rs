//! HTTP client of the worker control API (`GET /v1/status`, `POST /v1/savepoint`, `POST
//! /v1/checkpoint`), reached at the pod IP. Every call has a time limit; the token is sent as a
//! bearer header and never logged.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use streamjob_api::v1alpha1::SnapshotInfo;

use crate::build::CONTROL_PORT;
use crate::decide::ms_time;
use crate::facts::{WorkerReport, WorkerState};

/// A failed control API call.
#[derive(Debug, thiserror::Error)]
pub enum WorkerCallError {
    /// No answer in time.
    #[error("worker {addr} did not answer {path} within {timeout:?}")]
    Timeout {
        addr: String,
        path: String,
        timeout: Duration,
    },
    /// Connection or protocol failure.
    #[error("cannot reach worker {addr} ({path}): {reason}")]
    Unreachable {
        addr: String,
        path: String,
        reason: String,
    },
    /// The worker refused or failed the request.
    #[error("worker {addr} answered {path} with HTTP {code}: {message}")]
    Refused {
        addr: String,
        path: String,
        code: u16,
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("worker {addr} sent an unreadable answer to {path}: {reason}")]
    BadAnswer {
        addr: String,
        path: String,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSnapshot {
    id: u64,
    attempt: u64,
    location: String,
    size_bytes: u64,
    duration_ms: u64,
    completed_at_ms: u64,
}

impl WireSnapshot {
    fn into_info(self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id as i64,
            attempt: self.attempt as i64,
            location: self.location,
            completed_at: Some(ms_time(self.completed_at_ms)),
            size_bytes: self.size_bytes as i64,
            duration_ms: self.duration_ms as i64,
            reason: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    attempt: u64,
    state: String,
    last_checkpoint: Option<WireSnapshot>,
    failure: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireError {
    error: String,
}

/// Client for the control APIs of all workers (one connection pool).
#[derive(Clone)]
pub struct WorkerClient {
    http: Client<HttpConnector, Full<Bytes>>,
    status_timeout: Duration,
    snapshot_timeout: Duration,
}

impl Default for WorkerClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(3), Duration::from_secs(120))
    }
}

impl WorkerClient {
    /// A client with the given limits for status and snapshot calls.
    pub fn new(status_timeout: Duration, snapshot_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            status_timeout,
            snapshot_timeout,
        }
    }

    async fn call(
        &self,
        ip: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Bytes, WorkerCallError> {
        let addr = format!("{ip}:{CONTROL_PORT}");
        let unreachable = |reason: String| WorkerCallError::Unreachable {
            addr: addr.clone(),
            path: path.to_string(),
            reason,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let code = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, WorkerCallError>((code, body))
        };
        let (code, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| WorkerCallError::Timeout {
                addr: addr.clone(),
                path: path.to_string(),
                timeout,
            })??;
        if code.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<WireError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(WorkerCallError::Refused {
            addr,
            path: path.to_string(),
            code: code.as_u16(),
            message,
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(
        ip: &str,
        path: &str,
        body: &[u8],
    ) -> Result<T, WorkerCallError> {
        serde_json::from_slice(body).map_err(|e| WorkerCallError::BadAnswer {
            addr: format!("{ip}:{CONTROL_PORT}"),
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// `GET /v1/status`.
    pub async fn status(&self, ip: &str) -> Result<WorkerReport, WorkerCallError> {
        let path = "/v1/status";
        let body = self
            .call(ip, "GET", path, None, self.status_timeout)
            .await?;
        let wire: WireStatus = Self::parse(ip, path, &body)?;
        let state = match wire.state.as_str() {
            "starting" => WorkerState::Starting,
            "running" => WorkerState::Running,
            "finished" => WorkerState::Finished,
            "stopped" => WorkerState::Stopped,
            "failed" => WorkerState::Failed,
            other => {
                return Err(WorkerCallError::BadAnswer {
                    addr: format!("{ip}:{CONTROL_PORT}"),
                    path: path.into(),
                    reason: format!("unknown state {other:?}"),
                })
            }
        };
        Ok(WorkerReport {
            attempt: wire.attempt,
            state,
            last_checkpoint: wire.last_checkpoint.map(WireSnapshot::into_info),
            failure: wire.failure,
        })
    }

    /// `POST /v1/savepoint[?stop=true]`: waits until the savepoint is complete.
    pub async fn savepoint(
        &self,
        ip: &str,
        token: &str,
        stop: bool,
    ) -> Result<SnapshotInfo, WorkerCallError> {
        let path = if stop {
            "/v1/savepoint?stop=true"
        } else {
            "/v1/savepoint"
        };
        let body = self
            .call(ip, "POST", path, Some(token), self.snapshot_timeout)
            .await?;
        Ok(Self::parse::<WireSnapshot>(ip, path, &body)?.into_info())
    }

    /// `POST /v1/checkpoint`: waits until the checkpoint is complete.
    pub async fn checkpoint(&self, ip: &str, token: &str) -> Result<SnapshotInfo, WorkerCallError> {
        let path = "/v1/checkpoint";
        let body = self
            .call(ip, "POST", path, Some(token), self.snapshot_timeout)
            .await?;
        Ok(Self::parse::<WireSnapshot>(ip, path, &body)?.into_info())
    }
}
