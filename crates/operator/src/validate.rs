//! Validation of a StreamJob beyond its CRD schema (pure: no client, facts are passed in). Every
//! problem names the field and says what to do; an invalid spec is reported in status and events
//! and never touches running pods.

use streamjob_api::duration::parse_duration;
use streamjob_api::v1alpha1::StreamJobSpec;
use streamjob_api::BUILTIN_JOBS;

/// Facts from the cluster the checks need (observed before validation).
#[derive(Debug, Clone, Default)]
pub struct ObservedFacts {
    /// Secrets that exist in the job's namespace, with their keys.
    pub secrets: Vec<(String, Vec<String>)>,
    /// Root of the job's snapshot storage (`StreamJobSpec::storage_url`), when known.
    pub storage_url: Option<String>,
}

/// One problem with a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// JSON path of the field (`spec.checkpoint.interval`).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Every problem of `spec` (empty: valid).
pub fn validate(spec: &StreamJobSpec, facts: &ObservedFacts) -> Vec<Invalid> {
    let mut problems = Vec::new();

    if spec.parallelism > spec.max_parallelism {
        problems.push(invalid(
            "spec.parallelism",
            format!(
                "parallelism {} is above maxParallelism {}; lower parallelism or raise maxParallelism (only before the job has state)",
                spec.parallelism, spec.max_parallelism
            ),
        ));
    }

    match (&spec.job.name, spec.job.entrypoint.is_empty()) {
        (Some(_), false) => problems.push(invalid(
            "spec.job",
            "set either job.name (a built-in job) or job.entrypoint (a custom job), not both",
        )),
        (None, true) => problems.push(invalid(
            "spec.job",
            "set job.name to a built-in job or job.entrypoint to run a custom job",
        )),
        (Some(name), true) if !BUILTIN_JOBS.contains(&name.as_str()) => problems.push(invalid(
            "spec.job.name",
            format!(
                "unknown built-in job {name:?}; built-in jobs: {}",
                BUILTIN_JOBS.join(", ")
            ),
        )),
        _ => {}
    }

    let durations = [
        (
            "spec.checkpoint.interval",
            Some(spec.checkpoint.interval.as_str()),
            true,
        ),
        (
            "spec.checkpoint.timeout",
            Some(spec.checkpoint.timeout.as_str()),
            true,
        ),
        (
            "spec.checkpoint.minPause",
            Some(spec.checkpoint.min_pause.as_str()),
            false,
        ),
        (
            "spec.maxCheckpointAge",
            spec.max_checkpoint_age.as_deref(),
            true,
        ),
        (
            "spec.savepoint.periodicInterval",
            spec.savepoint.periodic_interval.as_deref(),
            true,
        ),
        (
            "spec.savepoint.historyMaxAge",
            spec.savepoint.history_max_age.as_deref(),
            true,
        ),
        (
            "spec.restartPolicy.backoff.initial",
            Some(spec.restart_policy.backoff.initial.as_str()),
            true,
        ),
        (
            "spec.restartPolicy.backoff.max",
            Some(spec.restart_policy.backoff.max.as_str()),
            true,
        ),
    ];
    for (field, value, positive) in durations {
        let Some(value) = value else { continue };
        match parse_duration(value) {
            Ok(d) if positive && d.is_zero() => {
                problems.push(invalid(field, "must be greater than zero"))
            }
            Ok(_) => {}
            Err(e) => problems.push(invalid(field, e.to_string())),
        }
    }
    if let (Ok(initial), Ok(max)) = (
        parse_duration(&spec.restart_policy.backoff.initial),
        parse_duration(&spec.restart_policy.backoff.max),
    ) {
        if initial > max {
            problems.push(invalid(
                "spec.restartPolicy.backoff",
                "initial must not be larger than max",
            ));
        }
    }

    match (&spec.storage.s3, &spec.storage.path) {
        (Some(_), Some(_)) => problems.push(invalid(
            "spec.storage",
            "set either storage.s3 or storage.path, not both",
        )),
        (None, None) => problems.push(invalid(
            "spec.storage",
            "set storage.s3 (bucket, ...) or storage.path",
        )),
        (None, Some(path)) => {
            let trimmed = path.strip_prefix("file://").unwrap_or(path);
            if !trimmed.starts_with('/') {
                problems.push(invalid(
                    "spec.storage.path",
                    "must be an absolute path (or file:///...) that every worker sees",
                ));
            }
            if trimmed.split('/').any(|segment| segment == "..") {
                problems.push(invalid(
                    "spec.storage.path",
                    "must not contain '..' segments",
                ));
            }
        }
        (Some(s3), None) => {
            if let Some(prefix) = &s3.prefix {
                if prefix.starts_with('/') {
                    problems.push(invalid(
                        "spec.storage.s3.prefix",
                        format!("must be a key prefix relative to the bucket, not an absolute path: write {:?}", prefix.trim_start_matches('/')),
                    ));
                }
                if prefix
                    .split('/')
                    .any(|segment| segment == ".." || segment == ".")
                {
                    problems.push(invalid(
                        "spec.storage.s3.prefix",
                        "must not contain '.' or '..' segments",
                    ));
                }
                if prefix.contains("//") {
                    problems.push(invalid(
                        "spec.storage.s3.prefix",
                        "must not contain empty segments ('//')",
                    ));
                }
            }
            if let Some(secret) = &s3.credentials_secret {
                match facts.secrets.iter().find(|(name, _)| *name == secret.name) {
                    None => problems.push(invalid(
                        "spec.storage.s3.credentialsSecret.name",
                        format!("Secret {:?} does not exist in the job's namespace; create it with the S3 access keys", secret.name),
                    )),
                    Some((_, keys)) => {
                        for key in [&secret.access_key_id_key, &secret.secret_access_key_key] {
                            if !keys.contains(key) {
                                problems.push(invalid(
                                    "spec.storage.s3.credentialsSecret",
                                    format!("Secret {:?} has no key {key:?}", secret.name),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    if let Some(resources) = &spec.resources {
        for (kind, quantities) in [
            ("limits", &resources.limits),
            ("requests", &resources.requests),
        ] {
            for (resource, quantity) in quantities.iter().flatten() {
                if let Err(why) = check_quantity(&quantity.0) {
                    problems.push(invalid(
                        &format!("spec.resources.{kind}.{resource}"),
                        format!("{:?} is not a resource quantity: {why} (write it like 500m, 2, 512Mi or 1Gi)", quantity.0),
                    ));
                }
            }
        }
    }
    if let Some(template) = &spec.pod_template {
        if let Err(e) = template.parse() {
            problems.push(invalid(
                "spec.podTemplate",
                format!(
                    "is not a pod template ({e}); it takes the fields of a Pod's metadata and spec"
                ),
            ));
        }
    }

    if let Some(path) = &spec.initial_savepoint_path {
        if !(path.starts_with("s3://") || path.starts_with("file:///") || path.starts_with('/')) {
            problems.push(invalid(
                "spec.initialSavepointPath",
                "must be a full s3:// or file:/// URL of a snapshot folder",
            ));
        }
        if let Some(root) = facts.storage_url.as_deref() {
            let root = root.trim_end_matches('/');
            let under_root = path
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1);
            if (root.contains("://") || root.starts_with('/')) && !under_root {
                problems.push(invalid(
                    "spec.initialSavepointPath",
                    format!(
                        "must be a snapshot folder under this job's storage {root}/ (copy the savepoint folder there first; restoring across storage roots is not supported)"
                    ),
                ));
            }
        }
        if path.split('/').any(|segment| segment == "..") {
            problems.push(invalid(
                "spec.initialSavepointPath",
                "must not contain '..' segments",
            ));
        }
    }
    problems
}

/// Longest StreamJob name: its workers Service `<name>-workers` must be a DNS label (63 characters).
pub const MAX_NAME_LEN: usize = 63 - "-workers".len();

/// Problems with the StreamJob's own name. The API server accepts any DNS subdomain (253 characters,
/// dots), but the name is also a label value and the prefix of the workers Service's name, which
/// must be a DNS label: at most [`MAX_NAME_LEN`] characters, lowercase letters, digits and `-`,
/// starting with a letter.
pub fn validate_name(name: &str) -> Vec<Invalid> {
    let field = "metadata.name";
    let mut problems = Vec::new();
    if name.len() > MAX_NAME_LEN {
        problems.push(invalid(
            field,
            format!(
                "is {} characters long; a StreamJob name has at most {MAX_NAME_LEN} (it names the workers Service `<name>-workers`, a DNS label); recreate the job under a shorter name",
                name.len()
            ),
        ));
    }
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let starts_with_letter = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if !valid_chars || !starts_with_letter || name.ends_with('-') {
        problems.push(invalid(
            field,
            "must be a DNS label: lowercase letters, digits and '-', starting with a letter (it names the workers Service); recreate the job under such a name",
        ));
    }
    problems
}

/// Check a Kubernetes resource quantity (`<number><suffix>`: `500m`, `2`, `1.5Gi`, `1e3`), which
/// must not be negative in a container's resources.
fn check_quantity(text: &str) -> Result<(), &'static str> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let unsigned = number.strip_prefix('+').unwrap_or(number);
    if unsigned.starts_with('-') {
        return Err("resources must not be negative");
    }
    let digits = unsigned.replacen('.', "", 1);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err("it does not start with a number");
    }
    let exponent_ok = |e: &str| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    };
    match suffix {
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => Ok(()),
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => Ok(()),
        s if (s.starts_with('e') || s.starts_with('E')) && exponent_ok(&s[1..]) => Ok(()),
        _ => Err("unknown unit (use m, k, M, G, Ki, Mi, Gi, ... or an exponent)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use streamjob_api::v1alpha1::{CredentialsSecretRef, PodTemplate, S3StorageSpec};

    fn spec() -> StreamJobSpec {
        StreamJobSpec::builtin("windowed-count", "/data/snapshots")
    }

    fn resources(kind: &str, resource: &str, quantity: &str) -> ResourceRequirements {
        let map = Some([(resource.to_string(), Quantity(quantity.to_string()))].into());
        match kind {
            "limits" => ResourceRequirements {
                limits: map,
                ..ResourceRequirements::default()
            },
            _ => ResourceRequirements {
                requests: map,
                ..ResourceRequirements::default()
            },
        }
    }

    fn fields(spec: &StreamJobSpec, facts: &ObservedFacts) -> Vec<String> {
        validate(spec, facts).into_iter().map(|i| i.field).collect()
    }

    #[test]
    fn a_default_spec_is_valid() {
        assert!(validate(&spec(), &ObservedFacts::default()).is_empty());
    }

    /// A change that makes a valid spec invalid.
    type Mutation = Box<dyn Fn(&mut StreamJobSpec)>;

    #[test]
    fn each_rule_reports_its_field() {
        let facts = ObservedFacts::default();
        let cases: Vec<(&str, Mutation)> = vec![
            ("spec.parallelism", Box::new(|s| s.parallelism = 200)),
            (
                "spec.job.name",
                Box::new(|s| s.job.name = Some("no-such-job".into())),
            ),
            (
                "spec.job",
                Box::new(|s| s.job.entrypoint = vec!["/bin/job".into()]),
            ),
            ("spec.job", Box::new(|s| s.job.name = None)),
            (
                "spec.checkpoint.interval",
                Box::new(|s| s.checkpoint.interval = "0s".into()),
            ),
            (
                "spec.checkpoint.timeout",
                Box::new(|s| s.checkpoint.timeout = "soon".into()),
            ),
            (
                "spec.restartPolicy.backoff",
                Box::new(|s| s.restart_policy.backoff.initial = "2m".into()),
            ),
            ("spec.storage", Box::new(|s| s.storage.path = None)),
            (
                "spec.storage.path",
                Box::new(|s| s.storage.path = Some("relative/dir".into())),
            ),
            (
                "spec.storage.path",
                Box::new(|s| s.storage.path = Some("/data/../etc".into())),
            ),
            (
                "spec.initialSavepointPath",
                Box::new(|s| s.initial_savepoint_path = Some("savepoints/sp-1".into())),
            ),
            (
                "spec.initialSavepointPath",
                Box::new(|s| {
                    s.initial_savepoint_path =
                        Some("/data/snapshots/savepoints/../../../etc/sp-1".into())
                }),
            ),
            (
                "spec.resources.limits.cpu",
                Box::new(|s| s.resources = Some(resources("limits", "cpu", "lots"))),
            ),
            (
                "spec.resources.requests.memory",
                Box::new(|s| s.resources = Some(resources("requests", "memory", "-1Gi"))),
            ),
            (
                "spec.podTemplate",
                Box::new(|s| {
                    s.pod_template = Some(PodTemplate(
                        serde_json::json!({"spec": {"containers": "worker"}}),
                    ))
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(
                fields(&s, &facts).contains(&field.to_string()),
                "{field}: {:?}",
                validate(&s, &facts)
            );
        }
    }

    #[test]
    fn s3_prefix_and_credentials_secret_are_checked_against_facts() {
        let mut s = spec();
        s.storage.path = None;
        s.storage.s3 = Some(S3StorageSpec {
            bucket: "snapshots".into(),
            prefix: Some("team/../other".into()),
            credentials_secret: Some(CredentialsSecretRef {
                name: "s3-keys".into(),
                access_key_id_key: "AWS_ACCESS_KEY_ID".into(),
                secret_access_key_key: "AWS_SECRET_ACCESS_KEY".into(),
            }),
            ..S3StorageSpec::default()
        });
        let missing = fields(&s, &ObservedFacts::default());
        assert!(missing.contains(&"spec.storage.s3.prefix".to_string()));
        assert!(missing.contains(&"spec.storage.s3.credentialsSecret.name".to_string()));
        let partial = ObservedFacts {
            secrets: vec![("s3-keys".into(), vec!["AWS_ACCESS_KEY_ID".into()])],
            ..ObservedFacts::default()
        };
        let problems = validate(&s, &partial);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("AWS_SECRET_ACCESS_KEY")),
            "{problems:?}"
        );
        s.storage.s3.as_mut().unwrap().prefix = Some("team-a/prod".into());
        let complete = ObservedFacts {
            secrets: vec![(
                "s3-keys".into(),
                vec!["AWS_ACCESS_KEY_ID".into(), "AWS_SECRET_ACCESS_KEY".into()],
            )],
            ..ObservedFacts::default()
        };
        assert!(validate(&s, &complete).is_empty());
    }

    #[test]
    fn the_initial_savepoint_must_be_under_the_job_storage() {
        let facts = ObservedFacts {
            storage_url: Some("s3://b/ns/job".into()),
            ..ObservedFacts::default()
        };
        let mut s = spec();
        s.initial_savepoint_path = Some("s3://b/ns/job/savepoints/sp-0000000004-000001".into());
        assert!(
            validate(&s, &facts).is_empty(),
            "{:?}",
            validate(&s, &facts)
        );
        s.initial_savepoint_path = Some("s3://b/ns/other/savepoints/sp-0000000004-000001".into());
        let problems = validate(&s, &facts);
        assert!(
            problems
                .iter()
                .any(|p| p.field == "spec.initialSavepointPath"
                    && p.message.contains("s3://b/ns/job/")),
            "{problems:?}"
        );
    }

    #[test]
    fn names_must_fit_the_workers_service() {
        for ok in ["healthy", "a", "job-2", &"n".repeat(MAX_NAME_LEN)] {
            assert!(
                validate_name(ok).is_empty(),
                "{ok}: {:?}",
                validate_name(ok)
            );
        }
        let too_long = "n".repeat(MAX_NAME_LEN + 1);
        for bad in [&too_long, "team.job", "1st-job", "Job", "job-", ""] {
            let problems = validate_name(bad);
            assert!(
                problems.iter().any(|p| p.field == "metadata.name"),
                "{bad:?} should be reported"
            );
        }
        assert!(validate_name(&too_long)[0].message.contains("at most 55"));
    }

    #[test]
    fn resource_quantities_follow_the_kubernetes_grammar() {
        for ok in [
            "500m",
            "2",
            "0",
            "1.5Gi",
            "1e3",
            "128974848",
            "129M",
            "+1",
            "0.5",
        ] {
            assert_eq!(check_quantity(ok), Ok(()), "{ok}");
        }
        for bad in ["lots", "-1Gi", "1.2.3", "5 Gi", "1Q", "", "Gi", "1e"] {
            assert!(check_quantity(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn an_absolute_s3_prefix_is_reported() {
        let mut s = spec();
        s.storage.path = None;
        s.storage.s3 = Some(S3StorageSpec {
            bucket: "snapshots".into(),
            prefix: Some("/etc".into()),
            ..S3StorageSpec::default()
        });
        let problems = validate(&s, &ObservedFacts::default());
        assert!(
            problems
                .iter()
                .any(|p| p.field == "spec.storage.s3.prefix" && p.message.contains("\"etc\"")),
            "{problems:?}"
        );
    }
}
