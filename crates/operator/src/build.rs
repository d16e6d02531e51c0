//! Desired objects of one job attempt (pure: no client). From a validated StreamJob, the attempt
//! number, the snapshot to restore and the control token it builds the ConfigMap with the job
//! manifest, the Secret with the token, the headless Service and the worker Pod, each labelled and
//! owned by the StreamJob. Secrets are referenced, never copied into objects other than Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe, Secret,
    SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::Resource;
use streamjob_api::v1alpha1::{ImagePullPolicy, StreamJob};
use streamjob_api::{
    LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB, LABEL_MANAGED_BY, LABEL_WORKER_INDEX,
};

/// Port of the worker control API.
pub const CONTROL_PORT: i32 = 8080;
/// Port of the exchange between the workers of a job (records, and worker 0's control links).
pub const EXCHANGE_PORT: i32 = 6124;
/// Where the job manifest is mounted in worker pods.
pub const JOB_FILE_DIR: &str = "/etc/streamjob";
/// Key of the job manifest in the ConfigMap.
pub const JOB_FILE_KEY: &str = "job.yaml";
/// Key of the control token in the Secret.
pub const TOKEN_KEY: &str = "token";

/// A StreamJob that cannot be turned into objects.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The resource has no name or namespace (it was not read from the API server).
    #[error("the StreamJob has no {0}; it must come from the API server")]
    MissingMeta(&'static str),
    /// The job manifest could not be rendered.
    #[error("failed to render the job manifest: {0}")]
    Render(String),
}

/// What the new attempt starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPlan {
    /// Attempt number.
    pub attempt: u64,
    /// `latest`, `none`, or a snapshot folder relative to the job's storage root.
    pub restore: String,
    /// Build from `status.lastStableSpec` instead of the current spec (a rolled-back upgrade).
    pub last_stable: bool,
    /// Pod IP of worker 0 of this attempt, once it has one. Until then only worker 0 is built; the
    /// other workers join it at this address.
    pub coordinator_ip: Option<String>,
}

/// All objects of one attempt.
#[derive(Debug, Clone)]
pub struct DesiredObjects {
    /// Job manifest for the workers.
    pub config_map: ConfigMap,
    /// Control API token.
    pub secret: Secret,
    /// Headless service (stable DNS for workers where the cluster has DNS).
    pub service: Service,
    /// Worker pods (one today; all subtasks run in it).
    pub pods: Vec<Pod>,
}

fn names(job: &StreamJob) -> Result<(String, String), BuildError> {
    let name = job
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMeta("name"))?;
    let namespace = job
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMeta("namespace"))?;
    Ok((name, namespace))
}

/// Labels of every object of the job.
pub fn job_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_JOB.to_string(), name.to_string()),
        (
            LABEL_MANAGED_BY.to_string(),
            "streamjob-operator".to_string(),
        ),
    ])
}

fn meta(
    job: &StreamJob,
    name: String,
    namespace: &str,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    let owner: Option<OwnerReference> = job.controller_owner_ref(&());
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Name of worker pod `index` of `job`.
pub fn pod_name(job: &str, index: u32) -> String {
    format!("{job}-worker-{index}")
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(CONTROL_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The job manifest the workers read: the StreamJob with only what workers need (no status).
pub fn render_job_manifest(job: &StreamJob) -> Result<String, BuildError> {
    let mut clean = StreamJob::new(
        job.metadata.name.as_deref().unwrap_or("job"),
        job.spec.clone(),
    );
    clean.metadata.namespace = job.metadata.namespace.clone();
    clean.spec.pod_template = None;
    clean.spec.resources = None;
    serde_json::to_string_pretty(&clean).map_err(|e| BuildError::Render(e.to_string()))
}

/// Build every object of attempt `plan` of `job`, with `token` as the control API token.
pub fn build(
    job: &StreamJob,
    plan: &AttemptPlan,
    token: &str,
) -> Result<DesiredObjects, BuildError> {
    let (name, namespace) = names(job)?;
    let labels = job_labels(&name);
    let config_name = format!("{name}-job");
    let secret_name = format!("{name}-control");

    let config_map = ConfigMap {
        metadata: meta(job, config_name.clone(), &namespace, labels.clone()),
        data: Some(BTreeMap::from([(
            JOB_FILE_KEY.to_string(),
            render_job_manifest(job)?,
        )])),
        ..ConfigMap::default()
    };
    let secret = Secret {
        metadata: meta(job, secret_name.clone(), &namespace, labels.clone()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    let mut selector = labels.clone();
    selector.insert(LABEL_COMPONENT.into(), "worker".into());
    let service = Service {
        metadata: meta(job, format!("{name}-workers"), &namespace, labels.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            // Server-side apply keys ports by (port, protocol): the protocol must be explicit.
            ports: Some(vec![
                ServicePort {
                    name: Some("control".into()),
                    port: CONTROL_PORT,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(CONTROL_PORT)),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("exchange".into()),
                    port: EXCHANGE_PORT,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(EXCHANGE_PORT)),
                    ..ServicePort::default()
                },
            ]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let spec = &job.spec;
    let mut env_vars = vec![
        env_from_secret("STREAMJOB_CONTROL_TOKEN", &secret_name, TOKEN_KEY),
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
        env_from_field("POD_IP", "status.podIP"),
        env("STREAMJOB_LOG", "info"),
    ];
    if let Some(s3) = &spec.storage.s3 {
        if let Some(endpoint) = &s3.endpoint {
            env_vars.push(env("S3_ENDPOINT", endpoint.clone()));
        }
        env_vars.push(env(
            "AWS_REGION",
            s3.region.clone().unwrap_or_else(|| "us-east-1".into()),
        ));
        env_vars.push(env("S3_FORCE_PATH_STYLE", s3.force_path_style.to_string()));
        if let Some(secret) = &s3.credentials_secret {
            env_vars.push(env_from_secret(
                "AWS_ACCESS_KEY_ID",
                &secret.name,
                &secret.access_key_id_key,
            ));
            env_vars.push(env_from_secret(
                "AWS_SECRET_ACCESS_KEY",
                &secret.name,
                &secret.secret_access_key_key,
            ));
        }
    }
    let job_file = format!("{JOB_FILE_DIR}/{JOB_FILE_KEY}");
    let worker_args = vec![
        "worker".to_string(),
        "--job-file".into(),
        job_file,
        "--attempt".into(),
        plan.attempt.to_string(),
        "--restore".into(),
        plan.restore.clone(),
        "--listen".into(),
        format!("$(POD_IP):{CONTROL_PORT}"),
        "--exchange-listen".into(),
        format!("$(POD_IP):{EXCHANGE_PORT}"),
    ];
    let (command, args) = if spec.job.entrypoint.is_empty() {
        (vec!["streamjob".to_string()], worker_args)
    } else {
        let mut args = worker_args;
        args.extend(spec.job.args.iter().cloned());
        (spec.job.entrypoint.clone(), args)
    };
    let mut container = Container {
        name: "worker".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| {
            match p {
                ImagePullPolicy::Always => "Always",
                ImagePullPolicy::IfNotPresent => "IfNotPresent",
                ImagePullPolicy::Never => "Never",
            }
            .to_string()
        }),
        command: Some(command),
        args: Some(args),
        env: Some(env_vars),
        ports: Some(vec![
            ContainerPort {
                name: Some("control".into()),
                container_port: CONTROL_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("exchange".into()),
                container_port: EXCHANGE_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 2, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "job".into(),
            mount_path: JOB_FILE_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let mut pod_labels = selector;
    pod_labels.insert(LABEL_ATTEMPT.into(), plan.attempt.to_string());
    pod_labels.insert(LABEL_WORKER_INDEX.into(), "0".into());
    let mut pod_meta = meta(job, pod_name(&name, 0), &namespace, pod_labels);
    let mut pod_spec = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        service_account_name: spec.service_account_name.clone(),
        termination_grace_period_seconds: Some(30),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![Volume {
            name: "job".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_name,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };

    // The user's pod template: metadata is merged, pod-level settings fill what is unset, the
    // `worker` container contributes env, volume mounts and resources, other containers are added.
    let template = spec
        .pod_template
        .as_ref()
        .map(|t| t.parse())
        .transpose()
        .map_err(|e| BuildError::Render(format!("spec.podTemplate is not a pod template: {e}")))?;
    if let Some(template) = &template {
        if let Some(tm) = &template.metadata {
            if let Some(extra) = &tm.labels {
                let labels = pod_meta.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in extra {
                    labels.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            if let Some(extra) = &tm.annotations {
                pod_meta
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .extend(extra.clone());
            }
        }
        if let Some(ts) = &template.spec {
            pod_spec.node_selector = ts.node_selector.clone();
            pod_spec.tolerations = ts.tolerations.clone();
            pod_spec.affinity = ts.affinity.clone();
            pod_spec.priority_class_name = ts.priority_class_name.clone();
            pod_spec.image_pull_secrets = ts.image_pull_secrets.clone();
            if let Some(grace) = ts.termination_grace_period_seconds {
                pod_spec.termination_grace_period_seconds = Some(grace);
            }
            if let Some(volumes) = &ts.volumes {
                pod_spec
                    .volumes
                    .get_or_insert_with(Vec::new)
                    .extend(volumes.iter().filter(|v| v.name != "job").cloned());
            }
            let mut sidecars = Vec::new();
            for c in &ts.containers {
                if c.name == "worker" {
                    if let Some(extra) = &c.env {
                        container.env.get_or_insert_with(Vec::new).extend(
                            extra
                                .iter()
                                .filter(|e| !e.name.starts_with("STREAMJOB_"))
                                .cloned(),
                        );
                    }
                    if let Some(mounts) = &c.volume_mounts {
                        container
                            .volume_mounts
                            .get_or_insert_with(Vec::new)
                            .extend(mounts.iter().cloned());
                    }
                    if container.resources.is_none() {
                        container.resources = c.resources.clone();
                    }
                } else {
                    sidecars.push(c.clone());
                }
            }
            pod_spec.containers = sidecars;
        }
    }
    // One pod per worker; they differ only in their index (and the coordinator address of the
    // others). Until worker 0 has an IP, only worker 0 is built.
    let workers = spec.effective_workers();
    let built = if workers == 1 || plan.coordinator_ip.is_some() {
        workers
    } else {
        1
    };
    let pods = (0..built)
        .map(|index| {
            let mut container = container.clone();
            let vars = container.env.get_or_insert_with(Vec::new);
            vars.push(env("STREAMJOB_WORKER_INDEX", index.to_string()));
            vars.push(env("STREAMJOB_WORKERS", workers.to_string()));
            if let (true, Some(ip)) = (index > 0, &plan.coordinator_ip) {
                vars.push(env(
                    "STREAMJOB_COORDINATOR",
                    format!("{ip}:{EXCHANGE_PORT}"),
                ));
            }
            let mut pod = pod_spec.clone();
            pod.containers.insert(0, container);
            let mut metadata = pod_meta.clone();
            metadata.name = Some(pod_name(&name, index));
            metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(LABEL_WORKER_INDEX.into(), index.to_string());
            Pod {
                metadata,
                spec: Some(pod),
                ..Pod::default()
            }
        })
        .collect();

    Ok(DesiredObjects {
        config_map,
        secret,
        service,
        pods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamjob_api::v1alpha1::{
        CredentialsSecretRef, PodTemplate, S3StorageSpec, StreamJobSpec,
    };

    fn job() -> StreamJob {
        let mut job = StreamJob::new(
            "bids",
            StreamJobSpec::builtin("windowed-count", "/data/snap"),
        );
        job.metadata.namespace = Some("prod".into());
        job.metadata.uid = Some("uid-1".into());
        job
    }

    fn plan() -> AttemptPlan {
        AttemptPlan {
            attempt: 3,
            restore: "checkpoints/000002-0000000041".into(),
            last_stable: false,
            coordinator_ip: None,
        }
    }

    #[test]
    fn worker_pod_runs_the_attempt_with_owner_labels_probes_and_no_api_access() {
        let objects = build(&job(), &plan(), "t0k3n").unwrap();
        let pod = &objects.pods[0];
        assert_eq!(pod.metadata.name.as_deref(), Some("bids-worker-0"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_JOB], "bids");
        assert_eq!(labels[LABEL_ATTEMPT], "3");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("StreamJob", "bids", Some(true))
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        let args = c.args.as_ref().unwrap();
        assert!(args.windows(2).any(|w| w == ["--attempt", "3"]));
        assert!(args
            .windows(2)
            .any(|w| w == ["--restore", "checkpoints/000002-0000000041"]));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let token = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "STREAMJOB_CONTROL_TOKEN")
            .unwrap();
        assert!(
            token.value.is_none(),
            "the token is referenced from the Secret, not copied"
        );
        assert_eq!(objects.secret.data.as_ref().unwrap()[TOKEN_KEY].0, b"t0k3n");
    }

    #[test]
    fn job_manifest_round_trips_without_status_or_pod_template() {
        let mut j = job();
        j.spec.pod_template = Some(Default::default());
        j.status = Some(Default::default());
        let objects = build(&j, &plan(), "t").unwrap();
        let text = &objects.config_map.data.as_ref().unwrap()[JOB_FILE_KEY];
        let back: StreamJob = serde_json::from_str(text).unwrap();
        assert_eq!(back.metadata.name.as_deref(), Some("bids"));
        assert!(back.status.is_none() && back.spec.pod_template.is_none());
        assert_eq!(back.spec.job, j.spec.job);
    }

    #[test]
    fn s3_credentials_are_secret_references_and_pod_template_merges() {
        let mut j = job();
        j.spec.storage.path = None;
        j.spec.storage.s3 = Some(S3StorageSpec {
            bucket: "snaps".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            force_path_style: true,
            credentials_secret: Some(CredentialsSecretRef {
                name: "s3-keys".into(),
                access_key_id_key: "id".into(),
                secret_access_key_key: "secret".into(),
            }),
            ..S3StorageSpec::default()
        });
        j.spec.pod_template = Some(PodTemplate(serde_json::json!({
            "metadata": {"labels": {"team": "a", "streamjob.io/job": "spoofed"}},
            "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [
                {"name": "worker", "env": [{"name": "EXTRA", "value": "1"}, {"name": "STREAMJOB_CONTROL_TOKEN", "value": "x"}]},
                {"name": "sidecar", "image": "busybox"}
            ]}
        })));
        let pod = build(&j, &plan(), "t").unwrap().pods.remove(0);
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(
            labels[LABEL_JOB], "bids",
            "the template cannot override operator labels"
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(spec.containers.len(), 2);
        let env = spec.containers[0].env.clone().unwrap();
        let secret_key = env
            .iter()
            .find(|e| e.name == "AWS_SECRET_ACCESS_KEY")
            .unwrap();
        assert!(secret_key.value.is_none());
        assert_eq!(
            secret_key
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .key,
            "secret"
        );
        assert!(env.iter().any(|e| e.name == "EXTRA"));
        assert_eq!(
            env.iter()
                .filter(|e| e.name == "STREAMJOB_CONTROL_TOKEN")
                .count(),
            1,
            "template cannot replace the token"
        );
        assert!(env
            .iter()
            .any(|e| e.name == "S3_FORCE_PATH_STYLE" && e.value.as_deref() == Some("true")));
    }

    #[test]
    fn a_multi_worker_job_gets_worker_0_first_then_members_that_join_it() {
        let mut job = job();
        job.spec.parallelism = 4;
        job.spec.workers = 3;
        let only_first = build(&job, &plan(), "t").unwrap();
        assert_eq!(only_first.pods.len(), 1, "members wait for worker 0's IP");

        let plan = AttemptPlan {
            coordinator_ip: Some("10.0.0.5".into()),
            ..plan()
        };
        let objects = build(&job, &plan, "t").unwrap();
        let names: Vec<_> = objects
            .pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["bids-worker-0", "bids-worker-1", "bids-worker-2"]);
        for (index, pod) in objects.pods.iter().enumerate() {
            let labels = pod.metadata.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_WORKER_INDEX], index.to_string());
            let container = &pod.spec.as_ref().unwrap().containers[0];
            let var = |name: &str| {
                container
                    .env
                    .as_ref()
                    .unwrap()
                    .iter()
                    .find(|e| e.name == name)
                    .and_then(|e| e.value.clone())
            };
            assert_eq!(var("STREAMJOB_WORKER_INDEX"), Some(index.to_string()));
            assert_eq!(var("STREAMJOB_WORKERS").as_deref(), Some("3"));
            let expected = (index > 0).then(|| format!("10.0.0.5:{EXCHANGE_PORT}"));
            assert_eq!(var("STREAMJOB_COORDINATOR"), expected);
            let args = container.args.as_ref().unwrap();
            assert!(
                args.contains(&format!("$(POD_IP):{EXCHANGE_PORT}")),
                "{args:?}"
            );
        }
        // The pods differ only in the index and the coordinator address: worker 0 is unchanged
        // when the members are added (server-side apply of the same pod is a no-op).
        assert_eq!(objects.pods[0], only_first.pods[0]);
    }

    #[test]
    fn never_more_workers_than_subtasks() {
        let mut job = job();
        job.spec.parallelism = 2;
        job.spec.workers = 5;
        let plan = AttemptPlan {
            coordinator_ip: Some("10.0.0.5".into()),
            ..plan()
        };
        assert_eq!(build(&job, &plan, "t").unwrap().pods.len(), 2);
    }
}
