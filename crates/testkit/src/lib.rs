//! Test-only helpers: local cluster, process kubelet, fixtures.
