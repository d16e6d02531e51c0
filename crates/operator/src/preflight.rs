//! Preflight of a spec that has not run yet: the objects of its next attempt are created as a dry
//! run, so what only the API server can judge (a pod template's labels, a missing service account,
//! requests above limits, a ConfigMap over 1 MiB) is reported as an invalid spec before anything is
//! stopped or created. Reads and dry runs only: it never changes the cluster.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::PostParams;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::Serialize;
use streamjob_api::v1alpha1::StreamJob;
use streamjob_api::FIELD_MANAGER;

use crate::build::{build, AttemptPlan};
use crate::decide::RESTORE_NONE;
use crate::validate::Invalid;

/// Whether the answer to a dry run says the object itself is wrong (a spec problem the user must
/// fix) rather than the moment (exists already, API server busy, network). An exceeded quota is the
/// moment too: during an upgrade the old pods still count, and they are gone when the new ones start.
fn refused_for_the_spec(code: u16, message: &str) -> bool {
    match code {
        400 | 422 => true,
        403 => !message.contains("exceeded quota"),
        _ => false,
    }
}

async fn dry_run<K>(client: &Client, ns: &str, object: &K, what: &str) -> Option<Invalid>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    match Api::<K>::namespaced(client.clone(), ns)
        .create(&params, object)
        .await
    {
        Err(kube::Error::Api(status)) if refused_for_the_spec(status.code, &status.message) => {
            Some(Invalid {
                field: "spec".to_string(),
                message: format!(
                    "the API server refuses the job's {what}: {}; fix the spec (podTemplate, resources, serviceAccountName, ...)",
                    status.message
                ),
            })
        }
        Err(e) => {
            tracing::debug!(error = %e, what, "preflight dry run inconclusive");
            None
        }
        Ok(_) => None,
    }
}

/// What the API server refuses among the objects the next attempt of `job` would create.
pub async fn refused_objects(client: &Client, job: &StreamJob, ns: &str) -> Vec<Invalid> {
    let attempt = job
        .status
        .as_ref()
        .and_then(|s| s.job_attempt)
        .map_or(1, |a| a.max(0) as u64 + 1);
    let plan = AttemptPlan {
        attempt,
        restore: RESTORE_NONE.to_string(),
        last_stable: false,
        coordinator_ip: None,
    };
    let objects = match build(job, &plan, "preflight") {
        Ok(objects) => objects,
        Err(e) => {
            return vec![Invalid {
                field: "spec".to_string(),
                message: e.to_string(),
            }]
        }
    };
    // All at once: a reconcile waits for one round trip, not one per object.
    let (config_map, service, pods) = futures::join!(
        dry_run::<ConfigMap>(client, ns, &objects.config_map, "ConfigMap"),
        dry_run::<Service>(client, ns, &objects.service, "workers Service"),
        futures::future::join_all(objects.pods.iter().map(|pod| dry_run::<Pod>(
            client,
            ns,
            pod,
            "worker pod"
        ))),
    );
    config_map
        .into_iter()
        .chain(service)
        .chain(pods.into_iter().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_about_the_object_count_as_refusals() {
        assert!(refused_for_the_spec(
            422,
            "Pod \"x\" is invalid: metadata.labels"
        ));
        assert!(refused_for_the_spec(
            403,
            "pods \"x\" is forbidden: error looking up service account ns/sa: serviceaccount \"sa\" not found"
        ));
        assert!(!refused_for_the_spec(
            403,
            "pods \"x\" is forbidden: exceeded quota: compute, requested: cpu=2, used: cpu=2, limited: cpu=3"
        ));
        for transient in [409, 429, 500, 503, 504] {
            assert!(!refused_for_the_spec(transient, "try again"), "{transient}");
        }
    }
}
