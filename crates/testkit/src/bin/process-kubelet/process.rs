//! Starting and stopping container processes: one session (and process group) per container,
//! a parent-death signal so nothing outlives the kubelet, logs appended to a file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Environment variable set on every container process; `down.sh` kills whatever still carries it.
pub const MARKER_ENV: &str = "PROCESS_KUBELET_CLUSTER";

/// Process groups that may still have members; used to clean up on kubelet shutdown.
#[derive(Clone, Default)]
pub struct ProcessGroups(Arc<Mutex<HashSet<i32>>>);

impl ProcessGroups {
    pub fn add(&self, pgid: i32) {
        self.0.lock().unwrap().insert(pgid);
    }
    pub fn remove(&self, pgid: i32) {
        self.0.lock().unwrap().remove(&pgid);
    }
    pub fn all(&self) -> Vec<i32> {
        self.0.lock().unwrap().iter().copied().collect()
    }
}

/// What to run for one container attempt.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    /// argv[0] as the pod named it (`command[0]`), else the program path.
    pub argv0: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log_file: PathBuf,
}

/// How a container's main process ended.
#[derive(Debug, Clone, Copy)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Reaps every child and orphan of the kubelet. The kubelet is a child subreaper, so processes a
/// container leaves behind are re-parented to it and reaped here rather than lingering as zombies
/// in the container's process group. Main processes report their exit through a oneshot.
#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitInfo>>>,
}

impl Reaper {
    /// Makes this process a child subreaper and starts reaping on SIGCHLD (and every second).
    pub fn start() -> std::io::Result<Arc<Self>> {
        // SAFETY: plain prctl on our own process.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let reaper = Arc::new(Self::default());
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                r.reap_all();
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            let mut status = 0;
            // SAFETY: plain syscall with a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let info = if libc::WIFEXITED(status) {
                ExitInfo {
                    code: Some(libc::WEXITSTATUS(status)),
                    signal: None,
                }
            } else if libc::WIFSIGNALED(status) {
                ExitInfo {
                    code: None,
                    signal: Some(libc::WTERMSIG(status)),
                }
            } else {
                continue;
            };
            if let Some(tx) = self.waiters.lock().unwrap().remove(&pid) {
                let _ = tx.send(info);
            }
        }
    }

    /// Spawns `launch` in its own session; returns its pid (also its process group id) and its
    /// exit. No await between fork and registering the waiter, so no exit can be missed.
    pub fn spawn(&self, launch: &Launch) -> std::io::Result<(i32, oneshot::Receiver<ExitInfo>)> {
        let child = spawn(launch)?;
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(pid, tx);
        Ok((pid, rx))
    }
}

fn spawn(launch: &Launch) -> std::io::Result<std::process::Child> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log_file)?;
    writeln!(
        log,
        "--- process-kubelet: starting {} {:?} at {} ---",
        launch.program.display(),
        launch.args,
        crate::util::now_rfc3339()
    )?;
    let stderr = log.try_clone()?;
    let mut cmd = std::process::Command::new(&launch.program);
    cmd.arg0(&launch.argv0)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(stderr);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The kubelet may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends `signal` to the whole process group; false if the group no longer exists.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: plain syscall.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// True while any process of the group is alive.
pub fn group_alive(pgid: i32) -> bool {
    signal_group(pgid, 0)
}

/// Kills a group that should already be gone (after its leader exited): SIGKILL, wait a little.
pub async fn reap_group(pgid: i32) {
    if signal_group(pgid, libc::SIGKILL) {
        for _ in 0..50 {
            if !group_alive(pgid) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

pub fn log_path(logs_dir: &Path, ns: &str, pod: &str, container: &str) -> PathBuf {
    logs_dir.join(format!("{ns}_{pod}_{container}.log"))
}
