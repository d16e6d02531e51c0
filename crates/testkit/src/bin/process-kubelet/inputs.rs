//! Values a pod takes from the API: env (`value`, `fieldRef`, `configMapKeyRef`,
//! `secretKeyRef`, `envFrom`) and ConfigMap / Secret / emptyDir volume files.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::{Api, Client};

use crate::spec::{config_error, expand, fatal, PrepError};

pub async fn container_env(
    lookups: &mut Lookups<'_>,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, PrepError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match lookups.config_map(&r.name).await? {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(config_error(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match lookups.secret(&r.name).await? {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(config_error(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path, pod_ip).ok_or_else(|| {
                    fatal(format!(
                        "env {:?}: fieldRef {:?} is not supported",
                        e.name, f.field_path
                    ))
                })?
            } else if let Some(r) = &from.config_map_key_ref {
                let data = lookups.config_map(&r.name).await?;
                match data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(config_error(format!(
                            "configmap {:?} key {:?} not found",
                            r.name, r.key
                        )))
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                let data = lookups.secret(&r.name).await?;
                match data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(config_error(format!(
                            "secret {:?} key {:?} not found",
                            r.name, r.key
                        )))
                    }
                }
            } else {
                return Err(fatal(format!(
                    "env {:?}: resourceFieldRef is not supported",
                    e.name
                )));
            }
        } else {
            let vars: HashMap<String, String> = base.iter().chain(env.iter()).cloned().collect();
            expand(e.value.as_deref().unwrap_or_default(), &vars)
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

fn field_value(pod: &Pod, path: &str, pod_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        _ => keyed("metadata.labels['", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations['", meta.annotations.as_ref())),
    }
}

pub async fn write_volume(
    lookups: &mut Lookups<'_>,
    v: &Volume,
    dir: &Path,
) -> Result<(), PrepError> {
    let io = |e: std::io::Error| config_error(format!("volume {:?}: {e}", v.name));
    if v.empty_dir.is_some() {
        return std::fs::create_dir_all(dir).map_err(io);
    }
    let (kind, name, items, optional, data) = if let Some(cm) = &v.config_map {
        let data = lookups.config_map(&cm.name).await?;
        (
            "configmap",
            cm.name.clone(),
            cm.items.clone(),
            cm.optional,
            data,
        )
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = lookups.secret(&name).await?;
        ("secret", name, s.items.clone(), s.optional, data)
    } else {
        return Err(fatal(format!("volume {:?}: unsupported type", v.name)));
    };
    let data = match data {
        Some(d) => d,
        None if optional == Some(true) => BTreeMap::new(),
        None => {
            return Err(config_error(format!(
                "{kind} {name:?} for volume {:?} not found",
                v.name
            )))
        }
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io)?;
    let files: Vec<(String, &Vec<u8>)> = match &items {
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(bytes) => out.push((it.path.clone(), bytes)),
                    None if optional == Some(true) => {}
                    None => {
                        return Err(config_error(format!(
                            "{kind} {name:?} has no key {:?}",
                            it.key
                        )))
                    }
                }
            }
            out
        }
        None => data.iter().map(|(k, b)| (k.clone(), b)).collect(),
    };
    for (rel, bytes) in files {
        let path = dir.join(rel.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
    }
    Ok(())
}

/// Cached ConfigMap / Secret reads for one pod start, as key -> bytes.
pub struct Lookups<'a> {
    client: &'a Client,
    ns: &'a str,
    config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl<'a> Lookups<'a> {
    pub fn new(client: &'a Client, ns: &'a str) -> Self {
        Self {
            client,
            ns,
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, PrepError> {
        if let Some(v) = self.config_maps.get(name) {
            return Ok(v.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.ns);
        let cm = api
            .get_opt(name)
            .await
            .map_err(|e| config_error(format!("failed to read configmap {name:?}: {e}")))?;
        let data = cm.map(|cm| {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                out.insert(k, v.0);
            }
            out
        });
        self.config_maps.insert(name.to_string(), data.clone());
        Ok(data)
    }

    async fn secret(&mut self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, PrepError> {
        if let Some(v) = self.secrets.get(name) {
            return Ok(v.clone());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.ns);
        let s = api
            .get_opt(name)
            .await
            .map_err(|e| config_error(format!("failed to read secret {name:?}: {e}")))?;
        let data = s.map(|s| {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                out.insert(k, v.into_bytes());
            }
            out
        });
        self.secrets.insert(name.to_string(), data.clone());
        Ok(data)
    }
}
