//! process-kubelet: a test-only kubelet that runs pods as local processes.
//!
//! 1. Registers a Ready Node and renews its Lease and status (`node`).
//! 2. Watches all pods: binds unscheduled ones to itself (it is the scheduler too).
//! 3. Runs one worker task per pod bound to it (`podworker`): image -> binary (`images`), env and
//!    volumes (`spec`), one process group per container (`process`), probes (`probe`), status.
//! 4. Pods get their own loopback IP 127.0.x.y (`shared::IpPool`).
//!
//! It never pretends: a pod it cannot run gets a failure status with a reason.

mod images;
mod inputs;
mod node;
mod podworker;
mod probe;
mod process;
mod shared;
mod spec;
mod status;
mod util;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::images::ImageMap;
use crate::shared::{IpPool, Shared};

#[derive(Parser, Debug)]
#[command(about = "Runs Kubernetes pods as local processes on loopback IPs (test support)")]
struct Args {
    /// Node name to register.
    #[arg(long, env = "PROCESS_KUBELET_NODE", default_value = "process-node")]
    node_name: String,
    /// Folder for pod folders (`pods/`) and logs (`logs/<ns>_<pod>_<container>.log`).
    #[arg(long, env = "PROCESS_KUBELET_STATE_DIR")]
    state_dir: PathBuf,
    /// Image map entry NAME=PATH (NAME without a tag matches every tag); repeatable.
    #[arg(long = "image", value_name = "NAME=PATH")]
    images: Vec<String>,
    /// File of NAME=PATH lines, read before the --image flags.
    #[arg(long)]
    image_map: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let mut images = ImageMap::default();
    if let Some(path) = &args.image_map {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {path:?}"))?;
        images.extend(ImageMap::parse(text.lines())?);
    }
    images.extend(ImageMap::parse(args.images.iter().map(String::as_str))?);
    let state_dir = std::path::absolute(&args.state_dir)?;
    let pods_dir = state_dir.join("pods");
    let logs_dir = state_dir.join("logs");
    std::fs::create_dir_all(&pods_dir)?;
    std::fs::create_dir_all(&logs_dir)?;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("failed to create kube client")?;
    node::register(&client, &args.node_name)
        .await
        .context("failed to register node")?;
    tracing::info!(node = %args.node_name, images = ?images.names(), "node registered");
    tokio::spawn(node::heartbeat(client.clone(), args.node_name.clone()));

    let shared = Arc::new(Shared {
        client,
        node: args.node_name,
        images,
        pods_dir,
        logs_dir,
        marker: state_dir.display().to_string(),
        groups: Default::default(),
        reaper: process::Reaper::start().context("failed to start the child reaper")?,
        ips: Mutex::new(IpPool::default()),
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = dispatch(shared.clone()) => r,
        _ = sigterm.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    shutdown(&shared).await;
    result
}

/// Stops every process this kubelet started: SIGTERM, up to 3 s, SIGKILL.
async fn shutdown(shared: &Shared) {
    let groups = shared.groups.all();
    tracing::info!(
        groups = groups.len(),
        "shutting down: stopping all containers"
    );
    for pg in &groups {
        process::signal_group(*pg, libc::SIGTERM);
    }
    for _ in 0..30 {
        if !groups.iter().any(|pg| process::group_alive(*pg)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pg in &groups {
        process::signal_group(*pg, libc::SIGKILL);
    }
}

/// Watches pods and hands each one bound to this node to its worker.
async fn dispatch(shared: Arc<Shared>) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let mut stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut init_seen: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => { workers.remove(&uid); }
            ev = stream.next() => {
                let Some(ev) = ev else { anyhow::bail!("pod watch ended") };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => { tracing::warn!(error = %e, "pod watch error"); continue; }
                };
                match ev {
                    watcher::Event::Init => init_seen = Some(HashSet::new()),
                    watcher::Event::InitApply(p) => {
                        if let (Some(seen), Some(uid)) = (init_seen.as_mut(), p.metadata.uid.clone()) {
                            seen.insert(uid);
                        }
                        on_pod(&shared, &mut workers, &done_tx, p);
                    }
                    watcher::Event::InitDone => {
                        if let Some(seen) = init_seen.take() {
                            for (uid, tx) in &workers {
                                if !seen.contains(uid) {
                                    tx.send_replace(None);
                                }
                            }
                        }
                    }
                    watcher::Event::Apply(p) => on_pod(&shared, &mut workers, &done_tx, p),
                    watcher::Event::Delete(p) => {
                        if let Some(tx) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                            tx.send_replace(None);
                        }
                    }
                }
            }
        }
    }
}

fn on_pod(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, watch::Sender<Option<Pod>>>,
    done_tx: &mpsc::UnboundedSender<String>,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if node.is_empty() {
        if pod.metadata.deletion_timestamp.is_none() {
            tokio::spawn(bind(shared.clone(), pod));
        }
        return;
    }
    if node != shared.node {
        return;
    }
    if let Some(tx) = workers.get(&uid) {
        tx.send_replace(Some(pod));
        return;
    }
    let (tx, rx) = watch::channel(Some(pod.clone()));
    workers.insert(uid.clone(), tx);
    let shared = shared.clone();
    let done_tx = done_tx.clone();
    tokio::spawn(async move {
        podworker::run(shared, pod, rx).await;
        let _ = done_tx.send(uid);
    });
}

/// Schedules a pod onto this node through the `binding` subresource.
async fn bind(shared: Arc<Shared>, pod: Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": shared.node},
    });
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "bound to node"),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
        Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "failed to bind pod"),
    }
}
