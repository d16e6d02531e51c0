//! Helpers shared by the tests that run real `streamjob` processes: free ports, a single worker
//! process, a minimal HTTP client for the control API, polling, and reading a job's committed output.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `streamjob` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_streamjob");

/// Control token of the workers the tests start.
pub const TOKEN: &str = "test-token";

/// A `streamjob worker` process (one worker: it hosts the coordinator); killed on drop.
pub struct Worker {
    pub child: Child,
    /// Its control API port.
    pub port: u16,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `streamjob worker` for `manifest` as `attempt`, restoring `restore` (`latest`, `none` or a
/// snapshot folder); `env` adds (`Some`) or removes (`None`) environment variables.
pub fn start_worker(
    manifest: &Path,
    attempt: u64,
    restore: &str,
    env: &[(&str, Option<&str>)],
) -> Worker {
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .args(["worker", "--job-file"])
        .arg(manifest)
        .args(["--attempt", &attempt.to_string(), "--restore", restore])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("STREAMJOB_CONTROL_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, value) in env {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let child = command.spawn().expect("start streamjob worker");
    Worker { child, port }
}

/// A port nobody listens on right now, below the kernel's ephemeral range: a port handed out by
/// `bind(0)` is itself ephemeral, and an outgoing connection (a worker dialling its peers, an S3
/// client) may take it before the process under test binds it ("Address already in use").
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low > 21000 {
        // Random per call (std's RandomState has random keys), so parallel test processes spread out.
        let seed = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
        for attempt in 0..200u64 {
            let port = 20000 + (seed.wrapping_add(attempt * 7919) % u64::from(low - 20000)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 client: (status, body), `None` when nobody answers.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// `GET /v1/status` of a worker, parsed.
pub fn status(port: u16) -> Option<serde_json::Value> {
    let (code, body) = http(port, "GET", "/v1/status", None)?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Poll `check` every 50 ms until it holds; panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Every committed line of the sink folder `dir` (hidden in-progress files excluded), sorted.
pub fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
            let text = std::fs::read_to_string(path).unwrap();
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines.sort();
    lines
}
