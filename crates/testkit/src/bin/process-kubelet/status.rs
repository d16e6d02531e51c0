//! The pod status the kubelet reports, computed from its containers' runtime state (no API
//! calls here: `podworker` patches the result).

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::process::Launch;
use crate::util::now_rfc3339;

#[derive(Debug, Clone)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// A container's state as `containerStatuses[].state` shows it.
#[derive(Debug, Clone)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated(Terminated),
}

/// One container of the pod at run time: its launch, current process group, state and backoff.
pub struct Ctr {
    pub spec: Container,
    pub launch: Option<Launch>,
    pub generation: u64,
    pub pgid: Option<i32>,
    pub run_started: Option<Instant>,
    pub state: State,
    pub last_terminated: Option<Terminated>,
    pub restart_count: i32,
    pub started_once: bool,
    pub ready: bool,
    pub backoff: Duration,
    pub restart_at: Option<Instant>,
    pub probes: Vec<tokio::task::JoinHandle<()>>,
}

impl Ctr {
    pub fn stop_probes(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
    }
}

/// `phase` per the Kubernetes rules, from the containers and a pod-level failure.
pub fn phase(ctrs: &[Ctr], failure: bool) -> &'static str {
    if failure {
        return "Failed";
    }
    let all_done = ctrs.iter().all(|c| matches!(c.state, State::Terminated(_)));
    if all_done && !ctrs.is_empty() {
        let ok = ctrs
            .iter()
            .all(|c| matches!(&c.state, State::Terminated(t) if t.exit_code == 0));
        return if ok { "Succeeded" } else { "Failed" };
    }
    if ctrs.iter().all(|c| c.started_once) {
        "Running"
    } else {
        "Pending"
    }
}

/// Reported conditions, remembering when each last changed.
#[derive(Default)]
pub struct Conditions(HashMap<&'static str, (bool, String)>);

impl Conditions {
    fn condition(&mut self, ctrs: &[Ctr], type_: &'static str, status: bool) -> Value {
        let now = now_rfc3339();
        let entry = self.0.entry(type_).or_insert((status, now.clone()));
        if entry.0 != status {
            *entry = (status, now);
        }
        let mut c = json!({
            "type": type_,
            "status": if status { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
        });
        if !status && (type_ == "Ready" || type_ == "ContainersReady") {
            let unready: Vec<&str> = ctrs
                .iter()
                .filter(|c| !c.ready)
                .map(|c| c.spec.name.as_str())
                .collect();
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            ));
        }
        c
    }
}

/// What the pod status is computed from.
pub struct PodView<'a> {
    pub ctrs: &'a [Ctr],
    pub failure: Option<&'a (String, String)>,
    pub ip: Option<std::net::Ipv4Addr>,
    pub start_time: &'a str,
}

/// The whole `status` object.
pub fn pod_status(view: &PodView<'_>, conditions: &mut Conditions) -> Value {
    let ctrs = view.ctrs;
    let phase = phase(ctrs, view.failure.is_some());
    let all_ready = phase == "Running" && ctrs.iter().all(|c| c.ready);
    let conds = vec![
        conditions.condition(ctrs, "Initialized", true),
        conditions.condition(ctrs, "Ready", all_ready),
        conditions.condition(ctrs, "ContainersReady", all_ready),
        conditions.condition(ctrs, "PodScheduled", true),
    ];
    let statuses: Vec<Value> = ctrs.iter().map(container_status).collect();
    let ip = view.ip.map(|i| i.to_string());
    let (reason, message) = match view.failure {
        Some((r, m)) => (json!(r), json!(m)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "phase": phase,
        "reason": reason,
        "message": message,
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": ip.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        "startTime": view.start_time,
        "conditions": conds,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    })
}

fn terminated_json(t: &Terminated, container_id: &Value) -> Value {
    json!({"terminated": {
        "exitCode": t.exit_code,
        "signal": t.signal,
        "reason": t.reason,
        "message": t.message,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
        "containerID": container_id,
    }})
}

fn container_status(c: &Ctr) -> Value {
    let container_id = match c.pgid {
        Some(pg) => json!(format!("process://{pg}")),
        None => Value::Null,
    };
    let state = match &c.state {
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated(t) => terminated_json(t, &container_id),
    };
    let last_state = match &c.last_terminated {
        Some(t) => terminated_json(t, &Value::Null),
        None => json!({}),
    };
    let image_id = c
        .launch
        .as_ref()
        .map(|l| format!("process://{}", l.program.display()))
        .unwrap_or_default();
    json!({
        "name": c.spec.name,
        "image": c.spec.image,
        "imageID": image_id,
        "containerID": container_id,
        "ready": c.ready,
        "started": matches!(c.state, State::Running { .. }),
        "restartCount": c.restart_count,
        "state": state,
        "lastState": last_state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctr(state: State, started_once: bool) -> Ctr {
        Ctr {
            spec: Container {
                name: "c".into(),
                ..Default::default()
            },
            launch: None,
            generation: 0,
            pgid: None,
            run_started: None,
            state,
            last_terminated: None,
            restart_count: 0,
            started_once,
            ready: false,
            backoff: Duration::from_secs(1),
            restart_at: None,
            probes: Vec::new(),
        }
    }

    fn done(code: i32) -> State {
        State::Terminated(Terminated {
            exit_code: code,
            signal: None,
            reason: "x".into(),
            message: None,
            started_at: String::new(),
            finished_at: String::new(),
        })
    }

    #[test]
    fn phase_follows_kubernetes_rules() {
        let waiting = || State::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        let running = || State::Running {
            started_at: String::new(),
        };
        assert_eq!(phase(&[ctr(waiting(), false)], false), "Pending");
        assert_eq!(
            phase(&[ctr(running(), true), ctr(waiting(), false)], false),
            "Pending"
        );
        assert_eq!(
            phase(&[ctr(running(), true), ctr(done(1), true)], false),
            "Running"
        );
        // Waiting to restart after a crash is still Running.
        assert_eq!(phase(&[ctr(waiting(), true)], false), "Running");
        assert_eq!(
            phase(&[ctr(done(0), true), ctr(done(0), true)], false),
            "Succeeded"
        );
        assert_eq!(
            phase(&[ctr(done(0), true), ctr(done(2), true)], false),
            "Failed"
        );
        assert_eq!(phase(&[ctr(running(), true)], true), "Failed");
    }
}
