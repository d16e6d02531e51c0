//! The cluster's environment file (`target/cluster/env`) and starting the cluster once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("failed to start the test cluster: {0}")]
    Start(String),
    #[error("failed to read cluster env file {path}: {reason}")]
    Env { path: PathBuf, reason: String },
    #[error("failed to build a kube client from {path}: {reason}")]
    Client { path: PathBuf, reason: String },
    #[error("kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("S3 call failed: {0}")]
    S3(String),
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
}

/// What `up.sh` wrote to `target/cluster/env`.
#[derive(Debug, Clone)]
pub struct ClusterEnv {
    pub kubeconfig: PathBuf,
    pub s3_endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// `target/cluster`: pod logs in `logs/`, daemon logs in `daemons/`.
    pub cluster_dir: PathBuf,
    pub node_name: String,
    /// Every `KEY=value` line, for passing to processes.
    pub vars: BTreeMap<String, String>,
}

/// Selects rustls' ring provider for this process (kube and aws-sdk-s3 may together enable two
/// providers, and rustls then refuses to choose). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The repository root (this crate lives in `<repo>/crates/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl ClusterEnv {
    /// `<repo>/target/cluster/env`, or `$STREAMJOB_CLUSTER_ENV` if set.
    pub fn default_path() -> PathBuf {
        std::env::var_os("STREAMJOB_CLUSTER_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/cluster/env"))
    }

    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let err = |reason: String| ClusterError::Env {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let vars: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .ok_or_else(|| err(format!("missing {k}")))
        };
        let kubeconfig = PathBuf::from(get("KUBECONFIG")?);
        let cluster_dir = vars
            .get("STREAMJOB_CLUSTER_DIR")
            .map(PathBuf::from)
            .or_else(|| kubeconfig.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Ok(Self {
            s3_endpoint: get("S3_ENDPOINT")?,
            access_key_id: get("AWS_ACCESS_KEY_ID")?,
            secret_access_key: get("AWS_SECRET_ACCESS_KEY")?,
            region: get("AWS_REGION")?,
            node_name: vars
                .get("PROCESS_KUBELET_NODE")
                .cloned()
                .unwrap_or_else(|| "process-node".into()),
            kubeconfig,
            cluster_dir,
            vars,
        })
    }

    /// True when every daemon recorded in `pids/` still runs.
    pub fn is_live(&self) -> bool {
        let pids = self.cluster_dir.join("pids");
        let names = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "s3s-fs",
            "process-kubelet",
        ];
        names.iter().all(|n| {
            std::fs::read_to_string(pids.join(n))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        })
    }

    /// Folder of pod logs, `<ns>_<pod>_<container>.log`.
    pub fn logs_dir(&self) -> PathBuf {
        self.cluster_dir.join("logs")
    }

    /// A client for the admin user (system:masters).
    pub async fn kube_client(&self) -> Result<Client, ClusterError> {
        install_crypto_provider();
        let err = |reason: String| ClusterError::Client {
            path: self.kubeconfig.clone(),
            reason,
        };
        let kc = Kubeconfig::read_from(&self.kubeconfig).map_err(|e| err(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| err(e.to_string()))?;
        Client::try_from(config).map_err(|e| err(e.to_string()))
    }

    /// An S3 client for the cluster's S3 server (path style, static credentials).
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        self.s3_client_with_secret(&self.secret_access_key)
    }

    /// Same endpoint and key id with another secret (to check that bad signatures are refused).
    pub fn s3_client_with_secret(&self, secret: &str) -> aws_sdk_s3::Client {
        install_crypto_provider();
        let creds = Credentials::new(&self.access_key_id, secret, None, None, "streamjob-testkit");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.s3_endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

/// The cluster's env, starting the cluster with `tests/cluster/up.sh` if it is not live.
/// Blocking; runs at most once per process.
///
/// Test processes register as users of the cluster (`target/cluster/users/<pid>`). A cluster a
/// test process started (marker `target/cluster/started-by-test`) is stopped with `down.sh` by
/// the last user to exit, unless `STREAMJOB_KEEP_CLUSTER` is set; a cluster started by a person
/// or by `test.sh` is reused and left running.
pub fn ensure_cluster() -> Result<&'static ClusterEnv, ClusterError> {
    static ENV: OnceLock<ClusterEnv> = OnceLock::new();
    static START: Mutex<()> = Mutex::new(());
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let cluster_dir = repo_root().join("target/cluster");
    let _users_lock = UsersLock::acquire(&cluster_dir)?;
    let path = ClusterEnv::default_path();
    let live = ClusterEnv::load(&path).ok().filter(ClusterEnv::is_live);
    let env = match live {
        Some(env) => env,
        None => {
            let script = repo_root().join("tests/cluster/up.sh");
            eprintln!(
                "[testkit] starting the test cluster with {}",
                script.display()
            );
            let status = std::process::Command::new("bash")
                .arg(&script)
                .stdout(std::process::Stdio::inherit())
                .status()
                .map_err(|e| ClusterError::Start(format!("run {}: {e}", script.display())))?;
            if !status.success() {
                return Err(ClusterError::Start(format!(
                    "{} exited with {status}",
                    script.display()
                )));
            }
            let _ = std::fs::write(cluster_dir.join("started-by-test"), b"");
            ClusterEnv::load(&path)?
        }
    };
    let users = cluster_dir.join("users");
    let _ = std::fs::create_dir_all(&users);
    let _ = std::fs::write(users.join(std::process::id().to_string()), b"");
    // SAFETY: registers a plain extern "C" fn; it runs once at process exit.
    unsafe { libc::atexit(release_cluster) };
    Ok(ENV.get_or_init(|| env))
}

/// At exit: unregister; the last user of a cluster that a test started stops it.
extern "C" fn release_cluster() {
    let cluster_dir = repo_root().join("target/cluster");
    let Ok(_lock) = UsersLock::acquire(&cluster_dir) else {
        return;
    };
    let users = cluster_dir.join("users");
    let _ = std::fs::remove_file(users.join(std::process::id().to_string()));
    let others_alive = std::fs::read_dir(&users)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let alive = Path::new("/proc").join(&pid).exists();
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
            alive
        });
    let started_by_test = cluster_dir.join("started-by-test").exists();
    if started_by_test && !others_alive && std::env::var_os("STREAMJOB_KEEP_CLUSTER").is_none() {
        let script = repo_root().join("tests/cluster/down.sh");
        let _ = std::process::Command::new("bash").arg(script).status();
        let _ = std::fs::remove_file(cluster_dir.join("started-by-test"));
    }
}

/// An exclusive `flock` on `target/cluster/.users.lock`, released on drop.
struct UsersLock {
    _file: std::fs::File,
}

impl UsersLock {
    fn acquire(cluster_dir: &Path) -> Result<Self, ClusterError> {
        use std::os::fd::AsRawFd;
        std::fs::create_dir_all(cluster_dir).map_err(|e| ClusterError::Start(e.to_string()))?;
        let file = std::fs::File::create(cluster_dir.join(".users.lock"))
            .map_err(|e| ClusterError::Start(format!("open users lock: {e}")))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ClusterError::Start(format!(
                "lock users: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self { _file: file })
    }
}
