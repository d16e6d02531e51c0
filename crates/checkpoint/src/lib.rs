//! Snapshot protocol: layout, manifests, checksums, retention, stores.
