//! The hash of the part of a spec that the worker pods are built from. A change of it is an upgrade
//! (savepoint, new attempt); fields only the operator reads (state, nonces, savepoint policy, upgrade
//! mode, restart policy) are left out, so changing them never restarts the job.

use sha2::{Digest, Sha256};
use streamjob_api::v1alpha1::{
    JobState, RestartPolicySpec, SavepointSpec, StreamJobSpec, UpgradeMode,
};

/// Hex SHA-256 (first 16 bytes) of the pod-affecting fields of `spec`.
pub fn pod_spec_hash(spec: &StreamJobSpec) -> String {
    let mut relevant = spec.clone();
    relevant.state = JobState::Running;
    relevant.savepoint_trigger_nonce = None;
    relevant.checkpoint_trigger_nonce = None;
    relevant.restart_nonce = None;
    relevant.savepoint = SavepointSpec::default();
    relevant.upgrade_mode = UpgradeMode::default();
    relevant.max_checkpoint_age = None;
    relevant.initial_savepoint_path = None;
    relevant.allow_non_restored_state = false;
    relevant.restart_policy = RestartPolicySpec::default();
    // serde_json writes struct fields in declaration order and maps sorted: stable across runs.
    let bytes = serde_json::to_vec(&relevant).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_only_fields_do_not_change_the_hash() {
        let base = StreamJobSpec::builtin("windowed-count", "/tmp/x");
        let h = pod_spec_hash(&base);
        let mut s = base.clone();
        s.state = JobState::Suspended;
        s.savepoint_trigger_nonce = Some(3);
        s.restart_nonce = Some(1);
        s.savepoint.history_max_count = 2;
        s.upgrade_mode = UpgradeMode::Stateless;
        assert_eq!(pod_spec_hash(&s), h);
    }

    #[test]
    fn pod_fields_change_the_hash() {
        let base = StreamJobSpec::builtin("windowed-count", "/tmp/x");
        let h = pod_spec_hash(&base);
        let mut p = base.clone();
        p.parallelism += 1;
        assert_ne!(pod_spec_hash(&p), h);
        let mut j = base.clone();
        j.job.params.insert(
            "rate".into(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5),
        );
        assert_ne!(pod_spec_hash(&j), h);
        let mut i = base;
        i.image = "streamjob/streamjob:0.2.0".into();
        assert_ne!(pod_spec_hash(&i), h);
        assert_eq!(pod_spec_hash(&i).len(), 32);
    }
}
