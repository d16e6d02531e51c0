//! One task per pod bound to this node: prepare, start containers, restart them per
//! `restartPolicy` with backoff, probe, report status, and on deletion stop the processes
//! (SIGTERM, grace period, SIGKILL) and finalize the pod with grace 0.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::probe::{ProbeKind, ProbeResult};
use crate::process;
use crate::shared::Shared;
use crate::spec::{self, Dirs, PrepError};
use crate::status::{pod_status, Conditions, Ctr, PodView, State, Terminated};
use crate::util::now_rfc3339;

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting restarts without accumulated backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
const PREP_RETRY: Duration = Duration::from_secs(2);

struct Exit {
    container: usize,
    generation: u64,
    code: Option<i32>,
    signal: Option<i32>,
}

enum Wake {
    Pod(Option<Box<Pod>>),
    KubeletStopping,
    Exit(Exit),
    Probe(ProbeResult),
    RestartDue,
}

struct PodWorker {
    shared: Arc<Shared>,
    api: Api<Pod>,
    pod: Pod,
    name: String,
    ns: String,
    uid: String,
    ip: Option<Ipv4Addr>,
    start_time: String,
    ctrs: Vec<Ctr>,
    failure: Option<(String, String)>,
    conditions: Conditions,
    last_status: Option<Value>,
    exit_tx: mpsc::UnboundedSender<Exit>,
    exit_rx: mpsc::UnboundedReceiver<Exit>,
    probe_tx: mpsc::UnboundedSender<ProbeResult>,
    probe_rx: mpsc::UnboundedReceiver<ProbeResult>,
}

/// Runs the pod until it has been removed from the API.
pub async fn run(shared: Arc<Shared>, pod: Pod, rx: watch::Receiver<Option<Pod>>) {
    let mut w = PodWorker::new(shared, pod);
    w.run(rx).await;
    w.cleanup();
}

impl PodWorker {
    fn new(shared: Arc<Shared>, pod: Pod) -> Self {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api = Api::namespaced(shared.client.clone(), &ns);
        let prior: HashMap<String, i32> = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|s| (s.name.clone(), s.restart_count))
            .collect();
        let ctrs = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| Ctr {
                spec: c.clone(),
                launch: None,
                generation: 0,
                pgid: None,
                run_started: None,
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                last_terminated: None,
                restart_count: prior.get(&c.name).copied().unwrap_or(0),
                started_once: false,
                ready: false,
                backoff: BACKOFF_START,
                restart_at: None,
                probes: Vec::new(),
            })
            .collect();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(now_rfc3339);
        Self {
            shared,
            api,
            pod,
            name,
            ns,
            uid,
            ip: None,
            start_time,
            ctrs,
            failure: None,
            conditions: Conditions::default(),
            last_status: None,
            exit_tx,
            exit_rx,
            probe_tx,
            probe_rx,
        }
    }

    fn dirs(&self) -> Dirs {
        Dirs {
            pod_dir: self
                .shared
                .pods_dir
                .join(format!("{}_{}_{}", self.ns, self.name, self.uid)),
            logs_dir: self.shared.logs_dir.clone(),
            marker: self.shared.marker.clone(),
        }
    }

    async fn run(&mut self, mut rx: watch::Receiver<Option<Pod>>) {
        if self.pod.metadata.deletion_timestamp.is_some() {
            self.finalize(true).await;
            return;
        }
        let phase = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            // Terminal before this kubelet (re)started: nothing runs, wait for deletion.
            self.last_status = Some(Value::Null);
            return self.wait_for_deletion(&mut rx).await;
        }
        self.assign_ip();
        tracing::info!(pod = %self.key(), ip = ?self.ip, "starting pod");
        if let Err(PrepError::Fatal { reason, message }) = spec::check_supported(&self.pod) {
            return self.fail(&mut rx, reason, message).await;
        }
        let dirs = self.dirs();
        let ip = self.ip.map(|i| i.to_string()).unwrap_or_default();
        let launches = loop {
            match spec::prepare(
                &self.shared.client,
                &self.pod,
                &self.shared.images,
                &dirs,
                &ip,
            )
            .await
            {
                Ok(l) => break l,
                Err(PrepError::Fatal { reason, message }) => {
                    return self.fail(&mut rx, reason, message).await
                }
                Err(PrepError::Retry { reason, message }) => {
                    for c in &mut self.ctrs {
                        c.state = State::Waiting {
                            reason: reason.clone(),
                            message: Some(message.clone()),
                        };
                    }
                    self.publish().await;
                    tokio::select! {
                        _ = tokio::time::sleep(PREP_RETRY) => {}
                        changed = rx.changed() => {
                            let latest = if changed.is_ok() { rx.borrow_and_update().clone() } else { None };
                            match latest {
                                Some(p) if p.metadata.deletion_timestamp.is_none() => self.pod = p,
                                Some(_) => return self.finalize(true).await,
                                None => return,
                            }
                        }
                    }
                }
            }
        };
        for (c, l) in self.ctrs.iter_mut().zip(launches) {
            c.launch = Some(l);
        }
        for i in 0..self.ctrs.len() {
            self.start(i);
        }
        self.publish().await;
        self.main_loop(&mut rx).await;
    }

    async fn main_loop(&mut self, rx: &mut watch::Receiver<Option<Pod>>) {
        loop {
            let next_restart = self.ctrs.iter().filter_map(|c| c.restart_at).min();
            let wake = tokio::select! {
                changed = rx.changed() => match changed {
                    Ok(()) => Wake::Pod(rx.borrow_and_update().clone().map(Box::new)),
                    Err(_) => Wake::KubeletStopping,
                },
                Some(e) = self.exit_rx.recv() => Wake::Exit(e),
                Some(p) = self.probe_rx.recv() => Wake::Probe(p),
                _ = sleep_until_opt(next_restart) => Wake::RestartDue,
            };
            match wake {
                Wake::KubeletStopping => return,
                Wake::Pod(None) => {
                    // Removed from the API (force delete): stop quickly, nothing to finalize.
                    self.terminate(Duration::from_secs(2)).await;
                    return;
                }
                Wake::Pod(Some(p)) => {
                    let deleting = p.metadata.deletion_timestamp.is_some();
                    self.pod = *p;
                    if deleting {
                        let grace = self.grace_period();
                        tracing::info!(pod = %self.key(), ?grace, "pod deleted: stopping containers");
                        self.terminate(grace).await;
                        self.finalize(false).await;
                        return;
                    }
                }
                Wake::Exit(e) => self.on_exit(e, true),
                Wake::Probe(p) => self.on_probe(p),
                Wake::RestartDue => {
                    let now = Instant::now();
                    for i in 0..self.ctrs.len() {
                        if self.ctrs[i].restart_at.is_some_and(|t| t <= now) {
                            self.ctrs[i].restart_at = None;
                            self.start(i);
                        }
                    }
                }
            }
            self.publish().await;
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    fn assign_ip(&mut self) {
        let existing = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse::<Ipv4Addr>().ok());
        let mut pool = self.shared.ips.lock().unwrap();
        self.ip = match existing {
            Some(ip) => {
                pool.reserve(ip);
                Some(ip)
            }
            None => pool.allocate(),
        };
    }

    fn grace_period(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn start(&mut self, i: usize) {
        let ip = self.ip.map(|i| i.to_string()).unwrap_or_default();
        let shared = self.shared.clone();
        let exit_tx = self.exit_tx.clone();
        let probe_tx = self.probe_tx.clone();
        let c = &mut self.ctrs[i];
        let Some(launch) = c.launch.clone() else {
            return;
        };
        if c.started_once {
            c.restart_count += 1;
        }
        c.started_once = true;
        c.generation += 1;
        let generation = c.generation;
        let started_at = now_rfc3339();
        match shared.reaper.spawn(&launch) {
            Ok((pg, exited)) => {
                shared.groups.add(pg);
                c.pgid = Some(pg);
                c.run_started = Some(Instant::now());
                c.state = State::Running { started_at };
                c.ready = c.spec.readiness_probe.is_none();
                tokio::spawn(async move {
                    let (code, signal) = match exited.await {
                        Ok(info) => (info.code, info.signal),
                        Err(_) => (None, None),
                    };
                    let _ = exit_tx.send(Exit {
                        container: i,
                        generation,
                        code,
                        signal,
                    });
                });
                for (kind, probe) in [
                    (ProbeKind::Readiness, c.spec.readiness_probe.clone()),
                    (ProbeKind::Liveness, c.spec.liveness_probe.clone()),
                ] {
                    if let Some(probe) = probe {
                        let task = crate::probe::run(
                            probe,
                            c.spec.clone(),
                            ip.clone(),
                            kind,
                            i,
                            generation,
                            probe_tx.clone(),
                        );
                        c.probes.push(tokio::spawn(task));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", self.ns, self.name), container = %c.spec.name, error = %e, "failed to start process");
                c.run_started = Some(Instant::now());
                c.state = State::Running { started_at };
                let msg = format!("failed to start {}: {e}", launch.program.display());
                // Treat like an immediate exit so restartPolicy applies.
                let _ = self.exit_tx.send(Exit {
                    container: i,
                    generation,
                    code: Some(128),
                    signal: None,
                });
                self.failure_message_for(i, msg);
            }
        }
    }

    fn failure_message_for(&mut self, i: usize, msg: String) {
        let c = &mut self.ctrs[i];
        c.state = State::Waiting {
            reason: "StartError".into(),
            message: Some(msg),
        };
    }

    fn on_exit(&mut self, e: Exit, may_restart: bool) {
        let policy = self.restart_policy();
        let groups = self.shared.groups.clone();
        let c = &mut self.ctrs[e.container];
        if e.generation != c.generation {
            return;
        }
        if let Some(pg) = c.pgid.take() {
            // The container is its whole process group: kill what the main process left behind.
            tokio::spawn(async move {
                process::reap_group(pg).await;
                groups.remove(pg);
            });
        }
        c.stop_probes();
        c.ready = false;
        let started_at = match &c.state {
            State::Running { started_at } => started_at.clone(),
            _ => now_rfc3339(),
        };
        let start_error = match &c.state {
            State::Waiting { reason, message } if reason == "StartError" => message.clone(),
            _ => None,
        };
        let exit_code = e.code.unwrap_or_else(|| 128 + e.signal.unwrap_or(0));
        let reason = if start_error.is_some() {
            "StartError"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let term = Terminated {
            exit_code,
            signal: e.signal,
            reason: reason.into(),
            message: start_error,
            started_at,
            finished_at: now_rfc3339(),
        };
        tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %c.spec.name, exit_code, "container exited");
        let restart = may_restart
            && match policy.as_str() {
                "Always" => true,
                "OnFailure" => exit_code != 0,
                _ => false,
            };
        if restart {
            if c.run_started
                .is_some_and(|t| t.elapsed() >= BACKOFF_RESET_AFTER)
            {
                c.backoff = BACKOFF_START;
            }
            let delay = c.backoff;
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            c.restart_at = Some(Instant::now() + delay);
            c.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={}",
                    delay.as_secs(),
                    c.spec.name,
                    self.name
                )),
            };
            c.last_terminated = Some(term);
        } else {
            c.state = State::Terminated(term);
        }
    }

    fn on_probe(&mut self, p: ProbeResult) {
        let c = &mut self.ctrs[p.container];
        if p.generation != c.generation || !matches!(c.state, State::Running { .. }) {
            return;
        }
        match p.kind {
            ProbeKind::Readiness => c.ready = p.ok,
            ProbeKind::Liveness => {
                tracing::info!(container = %c.spec.name, "liveness probe failed: killing container");
                if let Some(pg) = c.pgid {
                    process::signal_group(pg, libc::SIGKILL);
                }
            }
        }
    }

    /// SIGTERM every running container's process group, wait up to `grace`, then SIGKILL.
    async fn terminate(&mut self, grace: Duration) {
        let signalled: Vec<i32> = self.ctrs.iter().filter_map(|c| c.pgid).collect();
        for c in &mut self.ctrs {
            c.restart_at = None;
            c.stop_probes();
            if let Some(pg) = c.pgid {
                process::signal_group(pg, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        let mut killed = false;
        while self.ctrs.iter().any(|c| c.pgid.is_some()) {
            tokio::select! {
                Some(e) = self.exit_rx.recv() => self.on_exit(e, false),
                _ = tokio::time::sleep_until(deadline), if !killed => {
                    killed = true;
                    for c in &self.ctrs {
                        if let Some(pg) = c.pgid {
                            process::signal_group(pg, libc::SIGKILL);
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline + Duration::from_secs(10)) => break,
            }
        }
        for c in &mut self.ctrs {
            c.pgid = None;
        }
        for pg in signalled {
            process::reap_group(pg).await;
            self.shared.groups.remove(pg);
        }
    }

    async fn fail(
        &mut self,
        rx: &mut watch::Receiver<Option<Pod>>,
        reason: String,
        message: String,
    ) {
        tracing::warn!(pod = %self.key(), %reason, %message, "pod cannot run");
        for c in &mut self.ctrs {
            c.state = State::Waiting {
                reason: reason.clone(),
                message: Some(message.clone()),
            };
        }
        self.failure = Some((reason, message));
        self.publish().await;
        self.wait_for_deletion(rx).await;
    }

    async fn wait_for_deletion(&mut self, rx: &mut watch::Receiver<Option<Pod>>) {
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let latest = rx.borrow_and_update().clone();
            match latest {
                None => return,
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    self.pod = p;
                    return self.finalize(true).await;
                }
                Some(p) => self.pod = p,
            }
        }
    }

    /// Final status, then delete with grace 0 (the API object goes away).
    async fn finalize(&mut self, nothing_ran: bool) {
        if !nothing_ran {
            self.publish().await;
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.name, &dp).await {
            Ok(_) => tracing::info!(pod = %self.key(), "pod removed"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "failed to remove pod"),
        }
    }

    fn cleanup(&mut self) {
        for c in &mut self.ctrs {
            c.stop_probes();
        }
        if let Some(ip) = self.ip.take() {
            self.shared.ips.lock().unwrap().release(ip);
        }
        let _ = std::fs::remove_dir_all(self.dirs().pod_dir);
    }

    /// Patches the pod status if it changed since the last patch.
    async fn publish(&mut self) {
        let view = PodView {
            ctrs: &self.ctrs,
            failure: self.failure.as_ref(),
            ip: self.ip,
            start_time: &self.start_time,
        };
        let status = pod_status(&view, &mut self.conditions);
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let body = json!({ "status": status });
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "failed to patch pod status"),
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
