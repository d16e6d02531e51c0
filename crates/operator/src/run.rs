//! `streamjob operator`: wires the reconciler into a kube-runtime Controller (StreamJobs and the
//! worker pods they own), behind a Lease so only one replica acts, with `/metrics`, `/healthz` and
//! `/readyz` on a side port, and a graceful shutdown on SIGTERM / Ctrl-C that lets running
//! reconciles finish and hands the lease over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Api, Client};
use streamjob_api::v1alpha1::StreamJob;
use streamjob_api::LABEL_MANAGED_BY;

use crate::decide::Limits;
use crate::events::EventPublisher;
use crate::leader::{LeaderElector, LeaderError};
use crate::metrics::Metrics;
use crate::reconcile::{error_policy, reconcile, Context};
use crate::worker_client::WorkerClient;

/// Settings of the operator process.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Watch only this namespace (default: all).
    pub namespace: Option<String>,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub http_addr: SocketAddr,
    /// Elect a leader with a Lease (needed with more than one replica).
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Bounds on waits.
    pub limits: Limits,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot connect to Kubernetes (set KUBECONFIG or run in a pod): {0}")]
    Connect(#[source] kube::Error),
    /// The HTTP port could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Leadership was lost or could not be kept.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

struct Health {
    metrics: Metrics,
    leading: AtomicBool,
}

async fn serve_metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    match h.metrics.render() {
        Ok(body) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.leading.load(Ordering::Relaxed) {
        (StatusCode::OK, "leader")
    } else {
        (StatusCode::OK, "standby")
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Run the operator until SIGTERM / Ctrl-C, or until leadership is lost (an error: restart the process).
pub async fn run(options: OperatorOptions) -> Result<(), OperatorError> {
    let client = Client::try_default()
        .await
        .map_err(OperatorError::Connect)?;
    let metrics = Metrics::new();
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        leading: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(options.http_addr)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: options.http_addr,
            source,
        })?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(serve_metrics))
        .with_state(health.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(addr = %options.http_addr, namespace = ?options.namespace, "operator starting");

    let elector = options.leader_election.then(|| {
        LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &options.lease_namespace),
            &options.lease_name,
            &options.identity,
            Duration::from_secs(15),
        )
    });
    if let Some(elector) = &elector {
        tokio::select! {
            acquired = elector.acquire() => acquired?,
            _ = shutdown_signal() => return Ok(()),
        }
    }
    health.leading.store(true, Ordering::Relaxed);

    let (jobs, pods): (Api<StreamJob>, Api<Pod>) = match &options.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let events = EventPublisher::new(
        client.clone(),
        Reporter {
            controller: "streamjob-operator".into(),
            instance: Some(options.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        events,
        workers: WorkerClient::default(),
        limits: options.limits.clone(),
        metrics,
    });
    let controller = Controller::new(jobs, watcher::Config::default())
        .owns(
            pods,
            watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}=streamjob-operator")),
        )
        .graceful_shutdown_on(shutdown_signal())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(job = %object.name, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(_, _)) => {}
                Err(e) => tracing::warn!(error = %e, "controller"),
            }
        });

    match &elector {
        Some(elector) => {
            tokio::select! {
                _ = controller => {
                    elector.release().await;
                    tracing::info!("operator stopped; lease released");
                    Ok(())
                }
                lost = elector.keep() => Err(lost.into()),
            }
        }
        None => {
            controller.await;
            tracing::info!("operator stopped");
            Ok(())
        }
    }
}
