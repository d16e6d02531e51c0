//! Kubernetes controller for StreamJob resources.
