//! Turns a pod spec into process launches: what is unsupported, image -> binary, env and volumes
//! (read in `inputs`), per-container root folders, and mount paths rewritten.
//!
//! Mount paths: a process cannot see `/etc/config`, so each container gets a root folder
//! `<pod dir>/containers/<name>/root` (its working directory, also in `$PROCESS_KUBELET_ROOT`)
//! where every `mountPath` is a symlink to the volume's folder, and every occurrence of a mount
//! path in `command`, `args` and env values (at the start of a value, or after `=`, `:`, `,`,
//! `;`, a blank or a quote, so shell scripts work too) is rewritten to `<root><mountPath>`:
//! `--config=/etc/job/job.yaml` becomes `--config=<root>/etc/job/job.yaml`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use kube::Client;

use crate::images::{ImageError, ImageMap};
use crate::inputs::{container_env, write_volume, Lookups};
use crate::process::{log_path, Launch, MARKER_ENV};

/// Why a pod cannot be started (yet).
#[derive(Debug, Clone)]
pub enum PrepError {
    /// May succeed later (a ConfigMap appears, the binary gets built): retried.
    Retry { reason: String, message: String },
    /// Never runs here: the pod is failed with this reason.
    Fatal { reason: String, message: String },
}

pub fn fatal(message: String) -> PrepError {
    PrepError::Fatal {
        reason: "UnsupportedByProcessKubelet".into(),
        message,
    }
}

pub fn config_error(message: String) -> PrepError {
    PrepError::Retry {
        reason: "CreateContainerConfigError".into(),
        message,
    }
}

/// Where the kubelet keeps files.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub pod_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub marker: String,
}

/// Rejects what the process kubelet cannot do, before anything runs.
pub fn check_supported(pod: &Pod) -> Result<(), PrepError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| fatal("pod has no spec".into()))?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(fatal(
            "init containers are not supported by the process kubelet".into(),
        ));
    }
    for v in spec.volumes.iter().flatten() {
        if v.config_map.is_none() && v.secret.is_none() && v.empty_dir.is_none() {
            return Err(fatal(format!(
                "volume {:?} has an unsupported type (the process kubelet supports configMap, \
                 secret and emptyDir volumes only)",
                v.name
            )));
        }
    }
    for c in &spec.containers {
        if c.startup_probe.is_some() {
            return Err(fatal(format!(
                "container {:?}: startupProbe is not supported",
                c.name
            )));
        }
        if c.lifecycle.is_some() {
            return Err(fatal(format!(
                "container {:?}: lifecycle hooks are not supported",
                c.name
            )));
        }
        for (kind, probe) in [
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
        ] {
            if let Some(p) = probe {
                check_probe(&c.name, kind, p)?;
            }
        }
    }
    Ok(())
}

fn check_probe(container: &str, kind: &str, p: &Probe) -> Result<(), PrepError> {
    if p.exec.is_some() || p.grpc.is_some() {
        return Err(fatal(format!(
            "container {container:?}: {kind} must use httpGet or tcpSocket (exec and grpc probes \
             are not supported)"
        )));
    }
    if let Some(h) = &p.http_get {
        if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err(fatal(format!(
                "container {container:?}: {kind} scheme must be HTTP"
            )));
        }
    }
    Ok(())
}

/// Builds the launches of all containers (same order as the spec), writing volumes to disk.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    images: &ImageMap,
    dirs: &Dirs,
    pod_ip: &str,
) -> Result<Vec<Launch>, PrepError> {
    let spec = pod.spec.as_ref().expect("checked");
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut lookups = Lookups::new(client, &ns);

    let mut programs = Vec::new();
    for c in &spec.containers {
        let image = c.image.clone().unwrap_or_default();
        match images.resolve(&image) {
            Ok(p) => programs.push(p),
            Err(e) => {
                return Err(PrepError::Retry {
                    reason: match e {
                        ImageError::NotMapped(_) => "ErrImagePull".into(),
                        ImageError::BinaryMissing(_) => "ErrImagePull".into(),
                    },
                    message: e.message().to_string(),
                })
            }
        }
    }

    let volumes_dir = dirs.pod_dir.join("volumes");
    for v in spec.volumes.iter().flatten() {
        write_volume(&mut lookups, v, &volumes_dir.join(&v.name)).await?;
    }

    let mut launches = Vec::new();
    for (c, program) in spec.containers.iter().zip(programs) {
        let root = dirs.pod_dir.join("containers").join(&c.name).join("root");
        std::fs::create_dir_all(&root)
            .map_err(|e| config_error(format!("create {root:?}: {e}")))?;
        let mounts = link_mounts(c, &root, &volumes_dir)?;
        let mut env = base_env(&name, &root, &dirs.marker);
        let user_env = container_env(&mut lookups, pod, c, pod_ip, &env).await?;
        let vars: HashMap<String, String> = env.iter().chain(user_env.iter()).cloned().collect();
        env.extend(
            user_env
                .into_iter()
                .map(|(k, v)| (k, rewrite_paths(&v, &mounts))),
        );
        let expand_all = |items: &[String]| -> Vec<String> {
            items
                .iter()
                .map(|s| rewrite_paths(&expand(s, &vars), &mounts))
                .collect()
        };
        let command = expand_all(c.command.as_deref().unwrap_or_default());
        let mut args: Vec<String> = command.iter().skip(1).cloned().collect();
        args.extend(expand_all(c.args.as_deref().unwrap_or_default()));
        let argv0 = command
            .first()
            .cloned()
            .unwrap_or_else(|| program.display().to_string());
        let cwd = match &c.working_dir {
            Some(wd) => {
                let d = root.join(wd.trim_start_matches('/'));
                std::fs::create_dir_all(&d)
                    .map_err(|e| config_error(format!("create {d:?}: {e}")))?;
                d
            }
            None => root.clone(),
        };
        launches.push(Launch {
            program,
            argv0,
            args,
            env,
            cwd,
            log_file: log_path(&dirs.logs_dir, &ns, &name, &c.name),
        });
    }
    Ok(launches)
}

fn base_env(pod_name: &str, root: &Path, marker: &str) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    vec![
        ("PATH".into(), path),
        ("HOSTNAME".into(), pod_name.into()),
        ("HOME".into(), root.display().to_string()),
        ("PROCESS_KUBELET_ROOT".into(), root.display().to_string()),
        (MARKER_ENV.into(), marker.into()),
    ]
}

/// Symlinks each mount under `root`; returns (mountPath, host path) pairs, longest first.
fn link_mounts(
    c: &Container,
    root: &Path,
    volumes_dir: &Path,
) -> Result<Vec<(String, String)>, PrepError> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let mut target = volumes_dir.join(&m.name);
        if !target.exists() {
            return Err(fatal(format!(
                "container {:?} mounts unknown volume {:?}",
                c.name, m.name
            )));
        }
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            target = target.join(sub);
            if !target.exists() {
                std::fs::create_dir_all(&target)
                    .map_err(|e| config_error(format!("subPath {sub:?}: {e}")))?;
            }
        }
        let mount_path = m.mount_path.trim_end_matches('/').to_string();
        let link = root.join(mount_path.trim_start_matches('/'));
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| config_error(format!("create {parent:?}: {e}")))?;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| config_error(format!("link {link:?} -> {target:?}: {e}")))?;
        mounts.push((mount_path, link.display().to_string()));
    }
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    Ok(mounts)
}

/// Rewrites mount paths that start a value or follow a separator (`=`, `:`, `,`, `;`, blank, quote).
pub fn rewrite_paths(value: &str, mounts: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    'outer: while i < value.len() {
        let at_boundary = i == 0 || is_separator(value.as_bytes()[i - 1]);
        if at_boundary {
            for (mp, host) in mounts {
                if mp.is_empty() || !value[i..].starts_with(mp.as_str()) {
                    continue;
                }
                let end = i + mp.len();
                let ends_ok = end == value.len()
                    || value.as_bytes()[end] == b'/'
                    || is_separator(value.as_bytes()[end]);
                if ends_ok {
                    out.push_str(host);
                    i = end;
                    continue 'outer;
                }
            }
        }
        let ch = value[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn is_separator(b: u8) -> bool {
    matches!(
        b,
        b'=' | b':' | b',' | b';' | b' ' | b'\t' | b'\n' | b'"' | b'\''
    )
}

/// Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` becomes `$`.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with("$$") {
            out.push('$');
            i += 2;
            continue;
        }
        if let Some(inner) = rest.strip_prefix("$(") {
            if let Some(end) = inner.find(')') {
                let name = &inner[..end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[..end + 3]),
                }
                i += end + 3;
                continue;
            }
        }
        let ch = rest.chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_defined_vars_only() {
        let vars = HashMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y$(B)z", &vars), "x1y$(B)z");
        assert_eq!(expand("$$(A) $(A", &vars), "$(A) $(A");
    }

    #[test]
    fn rewrites_mount_paths_at_boundaries() {
        let mounts = vec![("/etc/job".to_string(), "/p/root/etc/job".to_string())];
        assert_eq!(
            rewrite_paths("/etc/job/a.yaml", &mounts),
            "/p/root/etc/job/a.yaml"
        );
        assert_eq!(
            rewrite_paths("--config=/etc/job/a.yaml", &mounts),
            "--config=/p/root/etc/job/a.yaml"
        );
        assert_eq!(rewrite_paths("/etc/jobs", &mounts), "/etc/jobs");
        assert_eq!(rewrite_paths("x/etc/job", &mounts), "x/etc/job");
        assert_eq!(rewrite_paths("/etc/job", &mounts), "/p/root/etc/job");
        assert_eq!(
            rewrite_paths("cat /etc/job/x; ls '/etc/job'", &mounts),
            "cat /p/root/etc/job/x; ls '/p/root/etc/job'"
        );
    }
}
