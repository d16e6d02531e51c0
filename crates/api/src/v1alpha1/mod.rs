//! `streamjob.io/v1alpha1`: the StreamJob custom resource (spec, status) and its CRD.

mod schema;
mod spec;
mod status;

#[cfg(test)]
mod tests;

pub use spec::*;
pub use status::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CRD of StreamJob as installed in clusters (`crds/streamjob.yaml` is its YAML).
pub fn crd() -> CustomResourceDefinition {
    StreamJob::crd()
}
