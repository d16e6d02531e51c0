//! Test-only helpers: the local cluster (real kube-apiserver + etcd + kube-controller-manager, the
//! process kubelet, an S3 server) and a per-test handle on it. Never linked into shipped binaries.
//!
//! 1. `tests/cluster/up.sh` starts the cluster and writes `target/cluster/env`.
//! 2. [`ensure_cluster`] reads that file, running `up.sh` first when the cluster is not live
//!    (once per test binary). The last test process using a cluster that a test started stops
//!    it at exit; a cluster started by `up.sh` or `test.sh` is reused and left up.
//! 3. [`TestCluster::new`] gives a test its own namespace, kube client and S3 bucket; when the test
//!    panics its pods' logs are printed, and the namespace is deleted when it is dropped.
//!
//! The process kubelet itself is the `process-kubelet` binary of this crate.

mod cluster;
mod env;

pub use cluster::TestCluster;
pub use env::{ensure_cluster, install_crypto_provider, repo_root, ClusterEnv, ClusterError};
