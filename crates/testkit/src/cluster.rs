//! `TestCluster`: one test's slice of the shared cluster (namespace, client, S3 bucket), with
//! pod logs printed when the test fails and the namespace deleted when it ends.

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::env::{ensure_cluster, ClusterEnv, ClusterError};

/// A test's own namespace, kube client and S3 bucket on the shared local cluster.
pub struct TestCluster {
    env: &'static ClusterEnv,
    client: Client,
    namespace: String,
    bucket: String,
    s3: aws_sdk_s3::Client,
}

impl TestCluster {
    /// Starts (or reuses) the cluster, then creates namespace and bucket `t-<name>-<random>`.
    pub async fn new(name: &str) -> Result<Self, ClusterError> {
        let env = tokio::task::spawn_blocking(ensure_cluster)
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))??;
        let slug: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let namespace = format!(
            "t-{}-{:06x}",
            slug.trim_matches('-'),
            rand::random::<u32>() & 0xff_ffff
        );
        let client = env.kube_client().await?;
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": namespace, "labels": {"streamjob.io/test": "true"}}
        }))
        .expect("static namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        wait_for_default_token(&client, &namespace).await?;
        let s3 = env.s3_client();
        s3.create_bucket()
            .bucket(&namespace)
            .send()
            .await
            .map_err(|e| {
                ClusterError::S3(format!(
                    "create bucket {namespace}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                ))
            })?;
        Ok(Self {
            env,
            client,
            bucket: namespace.clone(),
            namespace,
            s3,
        })
    }

    pub fn env(&self) -> &'static ClusterEnv {
        self.env
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    /// An `Api` for a namespaced kind in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Path of a container's log file written by the process kubelet.
    pub fn log_path(&self, pod: &str, container: &str) -> PathBuf {
        self.env
            .logs_dir()
            .join(format!("{}_{pod}_{container}.log", self.namespace))
    }

    /// A container's log so far (empty if none).
    pub fn pod_log(&self, pod: &str, container: &str) -> String {
        std::fs::read_to_string(self.log_path(pod, container)).unwrap_or_default()
    }

    /// Polls `name` until `cond` holds; returns the object that satisfied it.
    pub async fn wait_for<K>(
        &self,
        name: &str,
        timeout: Duration,
        cond: impl Fn(&K) -> bool,
    ) -> Result<K, ClusterError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = self.api();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(obj) = api.get_opt(name).await? {
                if cond(&obj) {
                    return Ok(obj);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("{name} in {}", self.namespace),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until `name` no longer exists.
    pub async fn wait_gone<K>(&self, name: &str, timeout: Duration) -> Result<(), ClusterError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = self.api();
        let deadline = tokio::time::Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("{name} to be deleted"),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Prints every container log of this namespace and the pods' statuses, to stderr.
    pub fn dump_logs(&self) {
        let prefix = format!("{}_", self.namespace);
        let mut files: Vec<_> = std::fs::read_dir(self.env.logs_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        files.sort();
        eprintln!(
            "===== process kubelet logs for namespace {} ({} files) =====",
            self.namespace,
            files.len()
        );
        for f in files {
            eprintln!("----- {} -----", f.display());
            eprintln!("{}", std::fs::read_to_string(&f).unwrap_or_default());
        }
        let env = self.env;
        let ns = self.namespace.clone();
        let pods = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = env.kube_client().await.ok()?;
                Api::<Pod>::namespaced(client, &ns)
                    .list(&ListParams::default())
                    .await
                    .ok()
            })
        })
        .join()
        .ok()
        .flatten();
        for p in pods.into_iter().flat_map(|l| l.items) {
            eprintln!(
                "----- pod {}: {} -----",
                p.metadata.name.unwrap_or_default(),
                serde_json::to_string(&p.status).unwrap_or_default()
            );
        }
    }
}

/// Pods are refused until the controller-manager gave the namespace's `default` service account its
/// token; wait for that like `kubectl` users wait for a namespace to be usable.
async fn wait_for_default_token(client: &Client, namespace: &str) -> Result<(), ClusterError> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sa = sas.get_opt("default").await?;
        if sa.is_some_and(|sa| sa.secrets.is_some_and(|s| !s.is_empty())) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: format!("service account token in {namespace}"),
                secs: 60,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if std::env::var_os("STREAMJOB_KEEP_NAMESPACES").is_some() {
            return;
        }
        // The test's runtime may be shutting down: delete from a thread with its own runtime.
        let env = self.env;
        let ns = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = env.kube_client().await.ok()?;
                Api::<Namespace>::all(client)
                    .delete(&ns, &DeleteParams::default())
                    .await
                    .ok()
            })
        })
        .join();
    }
}
