//! The I/O edge of the CLI: reads StreamJobs and events from the API server and snapshots from
//! storage, patches the spec, polls; every decision and every line of output comes from the pure
//! modules (`format`, `describe`, `snapshots`, `progress`).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use streamjob_api::v1alpha1::{JobPhase, StreamJob};
use streamjob_checkpoint::{
    list_snapshots, open_store, read_attempts, verify_deep, S3Options, DEFAULT_REGION,
};

use crate::describe::{describe, warnings_of, RECENT_WARNINGS};
use crate::format::jobs_table;
use crate::progress::{phase_progress, savepoint_progress, Progress};
use crate::snapshots::{build_report, render_report, StorageFacts};

/// Longest wait for the snapshot storage to answer.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time between two reads of the job while waiting.
const POLL: Duration = Duration::from_secs(1);

/// One CLI command.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// List jobs with phase, attempt, last checkpoint and restarts.
    Jobs {
        /// Every namespace.
        all_namespaces: bool,
    },
    /// A job's snapshots from status and storage, verified.
    Snapshots {
        /// Job name.
        name: String,
        /// Download every file and check its CRC-32C.
        deep: bool,
    },
    /// Trigger a savepoint (`savepointTriggerNonce` + 1).
    Savepoint {
        /// Job name.
        name: String,
        /// Wait until status records it.
        wait: bool,
        /// Longest wait.
        timeout: Duration,
    },
    /// Set `spec.state`: `suspend = true` for suspended, false for running.
    SetState {
        /// Job name.
        name: String,
        /// Suspend (true) or resume (false).
        suspend: bool,
        /// Wait for phase Suspended / Running.
        wait: bool,
        /// Longest wait.
        timeout: Duration,
    },
    /// Status, history, pending change, last failure and Warning events of a job.
    Describe {
        /// Job name.
        name: String,
    },
}

/// Errors of the CLI commands; the binary prints them and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No kubeconfig or in-cluster configuration.
    #[error(
        "failed to connect to the Kubernetes API: {0} (set KUBECONFIG or select a kubectl context)"
    )]
    Connect(#[source] kube::Error),
    /// The job does not exist.
    #[error(
        "StreamJob {namespace}/{name} not found (list them with `streamjob jobs -n {namespace}`)"
    )]
    NotFound {
        /// Namespace searched.
        namespace: String,
        /// Job name.
        name: String,
    },
    /// The API server did not answer.
    #[error("failed to {action}: cannot reach the Kubernetes API server ({source}); check KUBECONFIG and the current context")]
    Unreachable {
        /// What was attempted.
        action: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// An API call failed.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was attempted.
        action: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The snapshot storage could not be read (the report above says what was known).
    #[error("cannot read the snapshot storage {url}: {reason}")]
    Storage {
        /// Storage URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {}s: {last}", .after.as_secs())]
    Timeout {
        /// The timeout.
        after: Duration,
        /// The last progress line.
        last: String,
    },
    /// What was asked for will not happen.
    #[error("{0}")]
    Failed(String),
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CliError {
    let action = action.into();
    move |source| match source {
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            CliError::Unreachable { action, source }
        }
        source => CliError::Api { action, source },
    }
}

/// Runs `cmd` against the cluster of the current kubeconfig context (or the in-cluster config);
/// `namespace` defaults to the context's namespace.
pub async fn run(cmd: Cmd, namespace: Option<String>) -> Result<(), CliError> {
    let client = Client::try_default().await.map_err(CliError::Connect)?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    match cmd {
        Cmd::Jobs { all_namespaces } => jobs(&client, &ns, all_namespaces).await,
        Cmd::Snapshots { name, deep } => snapshots(&client, &ns, &name, deep).await,
        Cmd::Savepoint {
            name,
            wait,
            timeout,
        } => savepoint(&client, &ns, &name, wait.then_some(timeout)).await,
        Cmd::SetState {
            name,
            suspend,
            wait,
            timeout,
        } => set_state(&client, &ns, &name, suspend, wait.then_some(timeout)).await,
        Cmd::Describe { name } => {
            let job = get_job(&client, &ns, &name).await?;
            let warnings = warnings_of(&events(&client, &ns).await?, &name, RECENT_WARNINGS);
            print!("{}", describe(&job, &warnings, Timestamp::now()));
            Ok(())
        }
    }
}

async fn jobs(client: &Client, ns: &str, all: bool) -> Result<(), CliError> {
    let api: Api<StreamJob> = if all {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    };
    let mut list = api
        .list(&ListParams::default())
        .await
        .map_err(api_error("list StreamJobs"))?
        .items;
    if list.is_empty() {
        match all {
            true => eprintln!("No StreamJobs found."),
            false => eprintln!("No StreamJobs found in namespace {ns}."),
        }
        return Ok(());
    }
    list.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    print!("{}", jobs_table(&list, all, Timestamp::now()));
    Ok(())
}

async fn get_job(client: &Client, ns: &str, name: &str) -> Result<StreamJob, CliError> {
    Api::<StreamJob>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(api_error(format!("read StreamJob {ns}/{name}")))?
        .ok_or_else(|| CliError::NotFound {
            namespace: ns.into(),
            name: name.into(),
        })
}

async fn events(client: &Client, ns: &str) -> Result<Vec<Event>, CliError> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(api_error(format!("list events in {ns}")))?
        .items)
}

/// S3 settings: endpoint, region and addressing from the spec; keys from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), else from the job's credentials Secret if this
/// user may read it, else the standard AWS credential chain.
async fn s3_options(client: &Client, ns: &str, job: &StreamJob) -> S3Options {
    let mut options = S3Options::default();
    let Some(s3) = &job.spec.storage.s3 else {
        return options.with_env_defaults();
    };
    options.endpoint = s3.endpoint.clone();
    options.region = Some(s3.region.clone().unwrap_or_else(|| DEFAULT_REGION.into()));
    options.force_path_style = Some(s3.force_path_style);
    let options = options.with_env_defaults();
    if options.access_key_id.is_some() {
        return options;
    }
    let Some(reference) = &s3.credentials_secret else {
        return options;
    };
    let Ok(Some(secret)) = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&reference.name)
        .await
    else {
        return options;
    };
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    S3Options {
        access_key_id: key(&reference.access_key_id_key),
        secret_access_key: key(&reference.secret_access_key_key),
        ..options
    }
}

/// Reads attempts and snapshots (and with `deep` downloads and checks every complete one).
async fn read_storage(url: &str, options: S3Options, deep: bool) -> Result<StorageFacts, String> {
    let store = open_store(url, options).await.map_err(|e| e.to_string())?;
    let attempts = read_attempts(store.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let mut snapshots = list_snapshots(store.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    if deep {
        for facts in &mut snapshots {
            let Ok(manifest) = &facts.manifest else {
                continue;
            };
            match verify_deep(store.as_ref(), manifest).await {
                Ok(()) => {}
                Err(e) if e.is_transient() => return Err(e.to_string()),
                Err(e) => facts.manifest = Err(format!("deep verification failed: {e}")),
            }
        }
    }
    Ok(StorageFacts {
        root: store.url(),
        attempts,
        snapshots,
        deep,
    })
}

async fn snapshots(client: &Client, ns: &str, name: &str, deep: bool) -> Result<(), CliError> {
    let job = get_job(client, ns, name).await?;
    let url = job.spec.storage_url(ns, name);
    let options = s3_options(client, ns, &job).await;
    let storage =
        match tokio::time::timeout(STORAGE_TIMEOUT, read_storage(&url, options, deep)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", STORAGE_TIMEOUT.as_secs())),
        };
    let status = job.status.clone().unwrap_or_default();
    let report = build_report(&status, storage.as_ref().map_err(String::as_str));
    print!("{}", render_report(&report, &url, Timestamp::now()));
    match storage {
        Ok(_) => Ok(()),
        Err(reason) => Err(CliError::Storage { url, reason }),
    }
}

/// A merge patch of `spec`, guarded by the resourceVersion read before (retried on conflict).
async fn patch_spec(
    client: &Client,
    ns: &str,
    name: &str,
    make: impl Fn(&StreamJob) -> serde_json::Value,
) -> Result<(StreamJob, StreamJob), CliError> {
    let api: Api<StreamJob> = Api::namespaced(client.clone(), ns);
    let mut tries = 0;
    loop {
        let before = get_job(client, ns, name).await?;
        let patch = json!({
            "metadata": {"resourceVersion": before.metadata.resource_version},
            "spec": make(&before),
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(after) => return Ok((before, after)),
            Err(kube::Error::Api(e)) if e.code == 409 && tries < 5 => tries += 1,
            Err(e) => return Err(api_error(format!("patch StreamJob {ns}/{name}"))(e)),
        }
    }
}

async fn savepoint(
    client: &Client,
    ns: &str,
    name: &str,
    wait: Option<Duration>,
) -> Result<(), CliError> {
    let next = |job: &StreamJob| {
        let handled = job
            .status
            .as_ref()
            .and_then(|s| s.handled_nonces.savepoint)
            .unwrap_or(0);
        job.spec.savepoint_trigger_nonce.unwrap_or(0).max(handled) + 1
    };
    let requested_at = Timestamp::now();
    let (before, after) = patch_spec(
        client,
        ns,
        name,
        |job| json!({"savepointTriggerNonce": next(job)}),
    )
    .await?;
    let nonce = after.spec.savepoint_trigger_nonce.unwrap_or_default();
    println!("savepoint requested for StreamJob {ns}/{name} (savepointTriggerNonce {nonce})");
    let previous = before
        .status
        .as_ref()
        .and_then(|s| s.last_savepoint.as_ref())
        .map(|s| s.location.clone());
    let Some(timeout) = wait else {
        // Say so at once when the request cannot be served now.
        if let Progress::Failed(why) = savepoint_progress(&after, nonce, previous.as_deref(), &[]) {
            eprintln!("note: {why}");
        }
        return Ok(());
    };
    poll(client, ns, name, timeout, requested_at, |job, warnings| {
        savepoint_progress(job, nonce, previous.as_deref(), warnings)
    })
    .await
}

async fn set_state(
    client: &Client,
    ns: &str,
    name: &str,
    suspend: bool,
    wait: Option<Duration>,
) -> Result<(), CliError> {
    let state = if suspend { "suspended" } else { "running" };
    let requested_at = Timestamp::now();
    let (_, after) = patch_spec(client, ns, name, |_| json!({ "state": state })).await?;
    println!("StreamJob {ns}/{name}: spec.state set to {state}");
    let Some(timeout) = wait else {
        return Ok(());
    };
    let target = if suspend {
        JobPhase::Suspended
    } else {
        JobPhase::Running
    };
    let generation = after.metadata.generation;
    poll(client, ns, name, timeout, requested_at, |job, warnings| {
        phase_progress(job, target, generation, warnings)
    })
    .await
}

/// Polls the job until `check` says done or failed, showing progress on stderr (one line
/// rewritten in place on a terminal, a new line whenever it changes otherwise).
async fn poll(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    since: Timestamp,
    check: impl Fn(&StreamJob, &[String]) -> Progress,
) -> Result<(), CliError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut shown = String::new();
    let since = Timestamp::from_second(since.as_second() - 1).unwrap_or(since);
    loop {
        let job = get_job(client, ns, name).await?;
        let warnings: Vec<String> = warnings_of(&events(client, ns).await?, name, usize::MAX)
            .into_iter()
            .filter(|w| w.time.is_none_or(|t| t >= since))
            .map(|w| format!("{}: {}", w.reason, w.message))
            .collect();
        let progress = check(&job, &warnings);
        let elapsed = started.elapsed();
        if tty {
            eprint!("\r\x1b[K");
        }
        match progress {
            Progress::Done(line) => {
                println!("{line}");
                return Ok(());
            }
            Progress::Failed(reason) => return Err(CliError::Failed(reason)),
            Progress::Waiting(line) if elapsed >= timeout => {
                return Err(CliError::Timeout {
                    after: timeout,
                    last: line,
                })
            }
            Progress::Waiting(line) => {
                if tty {
                    eprint!("[{:>3}s] {line}", elapsed.as_secs());
                    let _ = std::io::stderr().flush();
                } else if line != shown {
                    eprintln!("[{:>3}s] {line}", elapsed.as_secs());
                }
                shown = line;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
