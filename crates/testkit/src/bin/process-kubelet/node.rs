//! The Node this kubelet provides: registration, then status and Lease heartbeats like a real
//! kubelet, so the node lifecycle controller keeps it Ready and never evicts its pods.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::util::{now_micro, now_rfc3339};

const FIELD_MANAGER: &str = "process-kubelet";
const LEASE_SECONDS: i32 = 40;

pub async fn register(client: &Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": crate::util::go_arch(),
                "node.streamjob.io/process-kubelet": "true",
            },
        },
    });
    nodes
        .patch(
            node,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    update_status(client, node).await?;
    renew_lease(client, node).await?;
    Ok(())
}

/// Renews the Lease every 10 s and the node status every 20 s, forever.
pub async fn heartbeat(client: Client, node: String) {
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        tick += 1;
        if let Err(e) = renew_lease(&client, &node).await {
            tracing::warn!(error = %e, "failed to renew node lease");
        }
        if tick.is_multiple_of(2) {
            if let Err(e) = update_status(&client, &node).await {
                tracing::warn!(error = %e, "failed to update node status");
            }
        }
    }
}

async fn renew_lease(client: &Client, node: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client.clone());
    let uid = nodes.get(node).await?.metadata.uid.unwrap_or_default();
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}],
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(),
        },
    });
    leases
        .patch(
            node,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(())
}

async fn update_status(client: &Client, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = now_rfc3339();
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let resources = json!({"cpu": cpus.to_string(), "memory": "16Gi", "pods": "500",
                           "ephemeral-storage": "100Gi"});
    let body = json!({"status": {
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "process kubelet"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "process kubelet"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "process kubelet"),
            cond("Ready", "True", "KubeletReady", "process kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": node},
        ],
        "capacity": resources,
        "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "process-kubelet", "systemUUID": "process-kubelet",
            "bootID": "process-kubelet", "kernelVersion": "linux",
            "osImage": "process kubelet (local processes)",
            "containerRuntimeVersion": "process://0.1.0",
            "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
            "operatingSystem": "linux", "architecture": crate::util::go_arch(),
        },
    }});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}
