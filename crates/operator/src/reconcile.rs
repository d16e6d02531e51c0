//! One reconcile of a StreamJob: observe (API server, worker control API, snapshot storage) ->
//! validate -> decide (pure) -> write status (the intention, before anything is stopped) -> apply
//! the actions -> record their outcome. Errors are categorised for metrics and retried with backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Client, Resource, ResourceExt};
use streamjob_api::v1alpha1::{JobState, StreamJob, StreamJobStatus};
use streamjob_api::{FIELD_MANAGER, FINALIZER, LABEL_COMPONENT, LABEL_JOB};
use streamjob_checkpoint::catalog::delete_snapshot_dir;
use streamjob_checkpoint::SnapshotStore;

use crate::build::{build, pod_name, BuildError, TOKEN_KEY};
use crate::decide::{decide, record_savepoint, Action, Input, Limits, Note};
use crate::events::EventPublisher;
use crate::facts::{ObservedPod, PodPhase, WorkerReport};
use crate::hash::pod_spec_hash;
use crate::metrics::Metrics;
use crate::observe::{open_job_store, pod_facts, read_index, s3_options, token_of};
use crate::preflight::refused_objects;
use crate::validate::{validate, validate_name, ObservedFacts};
use crate::worker_client::WorkerClient;

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event publisher (one Event per distinct message).
    pub events: EventPublisher,
    /// Worker control API client.
    pub workers: WorkerClient,
    /// Bounds on waits.
    pub limits: Limits,
    /// Prometheus metrics.
    pub metrics: Metrics,
}

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API server call failed.
    #[error("Kubernetes API call failed while {action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: &'static str,
        /// The error.
        source: kube::Error,
    },
    /// The objects of an attempt could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Snapshot storage failed.
    #[error("snapshot storage: {0}")]
    Storage(String),
}

impl ReconcileError {
    /// Bounded metric label.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "kube_api",
            ReconcileError::Build(_) => "build",
            ReconcileError::Storage(_) => "storage",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Kube { action, source }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Label selector of a job's worker pods (also the scale subresource's selector).
pub fn worker_selector(name: &str) -> String {
    format!("{LABEL_JOB}={name},{LABEL_COMPONENT}=worker")
}

struct Observed {
    pods: Vec<ObservedPod>,
    token: String,
    report: Option<WorkerReport>,
    store: Option<Arc<dyn SnapshotStore>>,
    index: Option<crate::facts::SnapshotIndex>,
    storage_error: Option<String>,
    invalid: Vec<crate::validate::Invalid>,
}

async fn observe(
    job: &StreamJob,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Observed, ReconcileError> {
    let name_problems = validate_name(name);
    if !name_problems.is_empty() {
        // Nothing can exist under such a name (it is no label value, no Service name): report it
        // without listing or reading anything by it.
        return Ok(Observed {
            pods: Vec::new(),
            token: new_token(),
            report: None,
            store: None,
            index: None,
            storage_error: None,
            invalid: name_problems,
        });
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Vec<ObservedPod> = pods_api
        .list(&ListParams::default().labels(&worker_selector(name)))
        .await
        .map_err(kube_err("listing worker pods"))?
        .items
        .iter()
        .map(pod_facts)
        .collect();
    let token = secrets
        .get_opt(&format!("{name}-control"))
        .await
        .map_err(kube_err("reading the control token Secret"))?
        .and_then(|s| token_of(&s, TOKEN_KEY))
        .unwrap_or_else(new_token);

    let mut facts = ObservedFacts {
        storage_url: Some(job.spec.storage_url(ns, name)),
        ..ObservedFacts::default()
    };
    let mut credentials = None;
    if let Some(reference) = job
        .spec
        .storage
        .s3
        .as_ref()
        .and_then(|s3| s3.credentials_secret.as_ref())
    {
        if let Some(secret) = secrets
            .get_opt(&reference.name)
            .await
            .map_err(kube_err("reading the storage credentials Secret"))?
        {
            let keys = secret
                .data
                .as_ref()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default();
            facts.secrets.push((reference.name.clone(), keys));
            credentials = Some(secret);
        }
    }
    let mut invalid = validate(&job.spec, &facts);
    // A spec that has not run yet is first created as a dry run: what only the API server can
    // judge is reported like any invalid spec, before anything is stopped or created.
    let not_run_yet = job
        .status
        .as_ref()
        .and_then(|s| s.running_spec_hash.as_deref())
        != Some(pod_spec_hash(&job.spec).as_str());
    if invalid.is_empty()
        && not_run_yet
        && job.spec.state == JobState::Running
        && job.meta().deletion_timestamp.is_none()
    {
        invalid = refused_objects(&ctx.client, job, ns).await;
    }

    let attempt = job
        .status
        .as_ref()
        .and_then(|s| s.job_attempt)
        .map(|a| a as u64);
    let report = match pods.iter().find(|p| {
        p.attempt.is_some()
            && p.attempt == attempt
            && p.phase == PodPhase::Running
            && p.name == pod_name(name, 0)
    }) {
        Some(pod) => match &pod.ip {
            Some(ip) => match ctx.workers.status(ip).await {
                Ok(report) => Some(report),
                Err(e) => {
                    tracing::debug!(job = name, namespace = ns, error = %e, "worker status unavailable");
                    None
                }
            },
            None => None,
        },
        None => None,
    };

    let (mut store, mut index, mut storage_error) = (None, None, None);
    if invalid.is_empty() {
        let url = job.spec.storage_url(ns, name);
        match open_job_store(&url, s3_options(&job.spec, credentials.as_ref())).await {
            Ok(s) => {
                match read_index(s.as_ref(), &url).await {
                    Ok(i) => index = Some(i),
                    Err(e) => storage_error = Some(e.to_string()),
                }
                store = Some(s);
            }
            Err(e) => storage_error = Some(e.to_string()),
        }
    }
    Ok(Observed {
        pods,
        token,
        report,
        store,
        index,
        storage_error,
        invalid,
    })
}

async fn write_status(
    api: &Api<StreamJob>,
    name: &str,
    status: &StreamJobStatus,
) -> Result<(), ReconcileError> {
    let patch = serde_json::json!({
        "apiVersion": "streamjob.io/v1alpha1",
        "kind": "StreamJob",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err("writing status"))?;
    Ok(())
}

async fn publish(ctx: &Context, job: &StreamJob, note: &Note, action: &str) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.to_string(),
        note: Some(note.message.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    if note.warning {
        tracing::warn!(job = %job.name_any(), reason = note.reason, message = %note.message, "event");
    } else {
        tracing::info!(job = %job.name_any(), reason = note.reason, message = %note.message, "event");
    }
    if let Err(e) = ctx.events.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(job = %job.name_any(), error = %e, "failed to record an event");
    }
}

async fn ensure_finalizer(api: &Api<StreamJob>, job: &StreamJob) -> Result<(), ReconcileError> {
    let mut finalizers = job.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": job.resource_version() }
    });
    api.patch(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err("adding the finalizer"))?;
    Ok(())
}

async fn remove_finalizer(api: &Api<StreamJob>, job: &StreamJob) -> Result<(), ReconcileError> {
    let finalizers: Vec<&String> = job
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = serde_json::json!({ "metadata": { "finalizers": finalizers } });
    match api
        .patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err("removing the finalizer")(e)),
    }
}

async fn apply_attempt(
    ctx: &Context,
    job: &StreamJob,
    ns: &str,
    plan: &crate::build::AttemptPlan,
    token: &str,
) -> Result<(), ReconcileError> {
    let stable;
    let job = if plan.last_stable {
        let mut rolled_back = job.clone();
        rolled_back.spec = job
            .status
            .as_ref()
            .and_then(crate::decide::stable_spec)
            .ok_or(BuildError::Render(
                "status.lastStableSpec is missing or unreadable; cannot roll back".into(),
            ))?;
        stable = rolled_back;
        &stable
    } else {
        job
    };
    let objects = build(job, plan, token)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let client = ctx.client.clone();
    let name_of = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            &name_of(&objects.config_map.metadata),
            &params,
            &Patch::Apply(&objects.config_map),
        )
        .await
        .map_err(kube_err("applying the job ConfigMap"))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            &name_of(&objects.secret.metadata),
            &params,
            &Patch::Apply(&objects.secret),
        )
        .await
        .map_err(kube_err("applying the control token Secret"))?;
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), ns)
        .patch(
            &name_of(&objects.service.metadata),
            &params,
            &Patch::Apply(&objects.service),
        )
        .await
        .map_err(kube_err("applying the workers Service"))?;
    let pods: Api<Pod> = Api::namespaced(client, ns);
    for pod in &objects.pods {
        pods.patch(&name_of(&pod.metadata), &params, &Patch::Apply(pod))
            .await
            .map_err(kube_err("creating a worker pod"))?;
    }
    tracing::info!(job = %job.name_any(), namespace = ns, attempt = plan.attempt, restore = %plan.restore, "attempt applied");
    Ok(())
}

async fn delete_pods(ctx: &Context, ns: &str, names: &[String]) -> Result<(), ReconcileError> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for name in names {
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err("deleting a worker pod")(e)),
        }
    }
    Ok(())
}

/// Reconcile one StreamJob.
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&job, &ctx).await;
    ctx.metrics.reconciled(
        started.elapsed(),
        result.as_ref().err().map(|e| e.category()),
    );
    result
}

async fn reconcile_inner(cached: &StreamJob, ctx: &Context) -> Result<Requeue, ReconcileError> {
    let name = cached.name_any();
    let Some(ns) = cached.namespace() else {
        return Ok(Requeue::await_change());
    };
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);
    // The watch cache may lag behind the status this operator wrote a moment ago; decisions are
    // taken over a fresh read, never over a stale intention.
    let Some(fresh) = api
        .get_opt(&name)
        .await
        .map_err(kube_err("reading the StreamJob"))?
    else {
        return Ok(Requeue::await_change());
    };
    let job = &fresh;
    let deleting = job.meta().deletion_timestamp.is_some();
    let has_finalizer = job.finalizers().iter().any(|f| f == FINALIZER);
    if deleting && !has_finalizer {
        return Ok(Requeue::await_change());
    }
    if !deleting && !has_finalizer {
        ensure_finalizer(&api, job).await?;
        return Ok(Requeue::requeue(Duration::from_millis(100)));
    }

    let observed = observe(job, ctx, &ns, &name).await?;
    let status = job.status.clone().unwrap_or_default();
    let spec_hash = pod_spec_hash(&job.spec);
    let storage_url = job.spec.storage_url(&ns, &name);
    let decision = decide(&Input {
        spec: &job.spec,
        generation: job.meta().generation.unwrap_or(0),
        deleting,
        status: &status,
        spec_hash: &spec_hash,
        storage_url: &storage_url,
        invalid: &observed.invalid,
        pods: &observed.pods,
        report: observed.report.as_ref(),
        index: observed.index.as_ref(),
        storage_error: observed.storage_error.as_deref(),
        now_ms: now_ms(),
        limits: &ctx.limits,
    });
    let mut new_status = decision.status.clone();
    new_status.selector = Some(worker_selector(&name));
    if new_status.parallelism.is_none() {
        new_status.parallelism = Some(job.spec.parallelism);
    }
    if new_status != status {
        write_status(&api, &name, &new_status).await?;
    }
    for note in &decision.events {
        publish(ctx, job, note, "Reconcile").await;
        if matches!(
            note.reason,
            "PodFailed" | "PodDeleted" | "JobFailed" | "StartTimeout"
        ) {
            ctx.metrics.restart(note.reason);
        }
    }
    ctx.metrics.observe_job(&ns, &name, &new_status, now_ms());

    let worker_ip = || {
        observed
            .pods
            .iter()
            .find(|p| {
                p.name == pod_name(&name, 0)
                    && p.attempt == new_status.job_attempt.map(|a| a as u64)
            })
            .and_then(|p| p.ip.clone())
    };
    for action in &decision.actions {
        match action {
            Action::StartAttempt(plan) => {
                apply_attempt(ctx, job, &ns, plan, &observed.token).await?;
            }
            Action::DeletePods(names) => delete_pods(ctx, &ns, names).await?,
            Action::Savepoint {
                stop,
                reason,
                nonce,
            } => {
                let Some(ip) = worker_ip() else { continue };
                let began = std::time::Instant::now();
                let result = ctx
                    .workers
                    .savepoint(&ip, &observed.token, *stop)
                    .await
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    ctx.metrics.savepoint(reason, began.elapsed());
                }
                let note = record_savepoint(&mut new_status, result, *stop, reason, *nonce);
                write_status(&api, &name, &new_status).await?;
                publish(ctx, job, &note, "Savepoint").await;
                if note.warning {
                    return Ok(Requeue::requeue(Duration::from_secs(5)));
                }
                return Ok(Requeue::requeue(Duration::from_millis(200)));
            }
            Action::Checkpoint { nonce } => {
                let Some(ip) = worker_ip() else { continue };
                let note = match ctx.workers.checkpoint(&ip, &observed.token).await {
                    Ok(info) => {
                        new_status.handled_nonces.checkpoint = Some(*nonce);
                        let message = format!(
                            "checkpoint {} completed on request in {} ms at {}",
                            info.id, info.duration_ms, info.location
                        );
                        new_status.last_checkpoint = Some(info);
                        write_status(&api, &name, &new_status).await?;
                        Note {
                            warning: false,
                            reason: "CheckpointCompleted",
                            message,
                        }
                    }
                    Err(e) => Note {
                        warning: true,
                        reason: "CheckpointFailed",
                        message: format!("requested checkpoint failed: {e}; retrying"),
                    },
                };
                publish(ctx, job, &note, "Checkpoint").await;
            }
            Action::DeleteSnapshots(dirs) => {
                let Some(store) = &observed.store else {
                    continue;
                };
                for dir in dirs {
                    delete_snapshot_dir(store.as_ref(), dir)
                        .await
                        .map_err(|e| ReconcileError::Storage(format!("deleting {dir}: {e}")))?;
                    tracing::info!(job = %name, namespace = %ns, dir = %dir, "savepoint deleted by the history policy");
                }
            }
            Action::RemoveFinalizer => {
                remove_finalizer(&api, job).await?;
                ctx.metrics.forget_job(&ns, &name);
                return Ok(Requeue::await_change());
            }
        }
    }
    Ok(Requeue::requeue(decision.requeue))
}

/// After a failed reconcile: log, count, retry soon.
pub fn error_policy(job: Arc<StreamJob>, error: &ReconcileError, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), category = error.category(), error = %error, "reconcile failed; retrying");
    Requeue::requeue(Duration::from_secs(3))
}
