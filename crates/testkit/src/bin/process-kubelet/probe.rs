//! HTTP GET and TCP readiness / liveness probes against the pod's loopback IP.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Readiness,
    Liveness,
}

/// A probe's verdict changed: readiness flips, or liveness gave up.
#[derive(Debug)]
pub struct ProbeResult {
    pub container: usize,
    pub generation: u64,
    pub kind: ProbeKind,
    pub ok: bool,
}

/// Runs one probe for one container attempt until the receiver is gone or the task is aborted.
pub async fn run(
    probe: Probe,
    container: Container,
    ip: String,
    kind: ProbeKind,
    index: usize,
    generation: u64,
    tx: mpsc::UnboundedSender<ProbeResult>,
) {
    let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(delay)).await;
    let (mut successes, mut failures) = (0, 0);
    let mut reported: Option<bool> = None;
    loop {
        let ok = tokio::time::timeout(timeout, check(&probe, &container, &ip))
            .await
            .unwrap_or(false);
        if ok {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let verdict = if successes >= success_threshold {
            Some(true)
        } else if failures >= failure_threshold {
            Some(false)
        } else {
            None
        };
        if let Some(v) = verdict {
            let report = match kind {
                ProbeKind::Readiness => reported != Some(v),
                ProbeKind::Liveness => !v,
            };
            if report {
                reported = Some(v);
                let msg = ProbeResult {
                    container: index,
                    generation,
                    kind,
                    ok: v,
                };
                if tx.send(msg).is_err() {
                    return;
                }
                if kind == ProbeKind::Liveness {
                    return;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn check(probe: &Probe, container: &Container, ip: &str) -> bool {
    if let Some(h) = &probe.http_get {
        let Some(port) = resolve_port(&h.port, container) else {
            return false;
        };
        let host = h.host.clone().unwrap_or_else(|| ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let headers: String = h
            .http_headers
            .iter()
            .flatten()
            .map(|hd| format!("{}: {}\r\n", hd.name, hd.value))
            .collect();
        return http_get(&host, port, &path, &headers)
            .await
            .is_some_and(|code| (200..400).contains(&code));
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = resolve_port(&t.port, container) else {
            return false;
        };
        let host = t.host.clone().unwrap_or_else(|| ip.to_string());
        return TcpStream::connect((host.as_str(), port)).await.is_ok();
    }
    false
}

fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

async fn http_get(host: &str, port: u16, path: &str, headers: &str) -> Option<u16> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.20\r\n\
         Accept: */*\r\n{headers}Connection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1)?.parse().ok()
}
