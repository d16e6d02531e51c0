#!/usr/bin/python3
"""Structural checks of one rendering of charts/streamjob-operator (used by tests/chart/test.sh).

usage: check-render.py CASE RENDERED.yaml CRD.yaml
CASE is default | custom | single | set; each names the values it was rendered with (see test.sh).
Prints one line per check and exits 1 if any failed.
"""
import sys

import yaml

# What the operator calls, and nothing more (charts/streamjob-operator/templates/rbac*.yaml).
OPERATOR_RULES = [
    (["streamjob.io"], ["streamjobs"], ["get", "list", "watch", "patch"]),
    (["streamjob.io"], ["streamjobs/status"], ["get", "patch", "update"]),
    (["streamjob.io"], ["streamjobs/finalizers"], ["update"]),
    ([""], ["pods"], ["get", "list", "watch", "patch", "delete"]),
    ([""], ["configmaps", "services", "secrets"], ["get", "patch"]),
    (["events.k8s.io"], ["events"], ["create", "patch"]),
]
LEASE_RULES = [(["coordination.k8s.io"], ["leases"], ["get", "create", "update"])]
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}

passed, failed = 0, 0


def check(what, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"  ok   {what}")
    else:
        failed += 1
        print(f"  FAIL {what}" + (f": {detail}" if detail else ""))


def norm_rules(rules):
    return sorted(
        (tuple(r.get("apiGroups", [])), tuple(sorted(r.get("resources", []))), tuple(sorted(r.get("verbs", []))),
         tuple(sorted(k for k in r if k not in ("apiGroups", "resources", "verbs"))))
        for r in rules or [])


def expected_rules(rules):
    return sorted((tuple(g), tuple(sorted(r)), tuple(sorted(v)), ()) for g, r, v in rules)


def main():
    case, rendered, crd_file = sys.argv[1:4]
    text = open(rendered).read()
    docs = [d for d in yaml.safe_load_all(text) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    kinds = sorted(by_kind)

    ns = {"default": "streamjob-system", "custom": "ops", "single": "ops", "set": "ops"}[case]
    watch_ns = "apps" if case == "custom" else ""
    replicas = {"default": 1, "custom": 2, "single": 1, "set": 3}[case]
    leader = case != "single"
    expect_kinds = {"Service", "Deployment"}
    if case != "single":
        expect_kinds |= {"ServiceAccount", "CustomResourceDefinition"}
    expect_kinds |= {"Role", "RoleBinding"} if watch_ns else {"ClusterRole", "ClusterRoleBinding"}
    if leader:
        expect_kinds |= {"Role", "RoleBinding"}
    if case == "custom":
        expect_kinds |= {"PodDisruptionBudget", "ServiceMonitor"}
    print(f"[{case}] {len(docs)} documents: {', '.join(kinds)}")

    check("kinds", set(kinds) == expect_kinds, f"got {kinds}, want {sorted(expect_kinds)}")
    check("one '# Source:' line per document", text.count("# Source: streamjob-operator/templates/") == len(docs))
    for d in docs:
        meta = d["metadata"]
        if d["kind"] not in CLUSTER_SCOPED and d["kind"] != "Role" and d["kind"] != "RoleBinding":
            check(f"{d['kind']}/{meta['name']} in namespace {ns}", meta.get("namespace") == ns, meta.get("namespace"))
        check(f"{d['kind']}/{meta['name']} labelled managed-by Helm",
              meta.get("labels", {}).get("app.kubernetes.io/managed-by") == "Helm")

    sa_name = "existing-sa" if case == "single" else "streamjob-operator"
    # RBAC: the operator's rules in the watched scope, the Lease rules in the release namespace.
    roles = {(r["kind"], r["metadata"]["name"]): r for r in by_kind.get("Role", []) + by_kind.get("ClusterRole", [])}
    op_kind = "Role" if watch_ns else "ClusterRole"
    op_role = roles.get((op_kind, "streamjob-operator"))
    check(f"operator rules in a {op_kind}", op_role is not None)
    if op_role:
        check("operator rules exactly as the operator needs", norm_rules(op_role["rules"]) == expected_rules(OPERATOR_RULES),
              op_role["rules"])
        if watch_ns:
            check(f"operator Role in the watched namespace {watch_ns}", op_role["metadata"].get("namespace") == watch_ns)
    lease_role = roles.get(("Role", "streamjob-operator-leader-election"))
    check("Lease Role present iff leader election", (lease_role is not None) == leader)
    if lease_role:
        check("Lease rules exactly get/create/update leases", norm_rules(lease_role["rules"]) == expected_rules(LEASE_RULES))
        check("Lease Role in the release namespace", lease_role["metadata"].get("namespace") == ns)
    bindings = by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", [])
    check("one binding per role", len(bindings) == len(roles), f"{len(bindings)} bindings, {len(roles)} roles")
    for b in bindings:
        check(f"{b['kind']}/{b['metadata']['name']} binds the operator's ServiceAccount to its role",
              b["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": ns}]
              and (b["roleRef"]["kind"], b["roleRef"]["name"]) in roles
              and b["metadata"]["name"] == b["roleRef"]["name"]
              and b["metadata"].get("namespace") == roles[(b["roleRef"]["kind"], b["roleRef"]["name"])]["metadata"].get("namespace"),
              b)

    # The Deployment.
    dep = by_kind["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    check(f"replicas {replicas}", dep["spec"]["replicas"] == replicas)
    check("selector labels on the pod template",
          all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()))
    check("Recreate strategy iff no leader election",
          (dep["spec"].get("strategy", {}).get("type") == "Recreate") == (not leader))
    tag = {"custom": "1.2.3"}.get(case, "0.1.0")
    check("image", c["image"] == f"streamjob/streamjob:{tag}", c["image"])
    check("command streamjob operator", c["command"] == ["streamjob", "operator"])
    args = c["args"]
    want = ["--http-addr=0.0.0.0:8081"] + (["--leader-election"] if leader else []) \
        + ([f"--namespace={watch_ns}"] if watch_ns else []) + [f"--lease-namespace={ns}"] \
        + (["--savepoint-timeout=10m", "--delete-timeout=90s"] if case == "custom"
           else ["--savepoint-timeout=5m", "--delete-timeout=2m"])
    check("args", args == want, f"got {args}, want {want}")
    check("--leader-election iff expected", ("--leader-election" in args) == leader)
    env = {e["name"]: e for e in c["env"]}
    check("POD_NAME from the downward API", env["POD_NAME"].get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.name"}})
    check("POD_NAMESPACE from the downward API",
          env["POD_NAMESPACE"].get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.namespace"}})
    check("STREAMJOB_LOG", env["STREAMJOB_LOG"].get("value") == ("debug" if case == "custom" else "info"))
    check("liveness GET /healthz :8081", c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8081})
    check("readiness GET /readyz :8081", c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8081})
    check("container port 8081 http-metrics", {"name": "http-metrics", "containerPort": 8081, "protocol": "TCP"} in c["ports"])
    sc, psc = c["securityContext"], pod["securityContext"]
    check("container non-root 65532", sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532)
    check("read-only root filesystem", sc.get("readOnlyRootFilesystem") is True)
    check("no privilege escalation", sc.get("allowPrivilegeEscalation") is False)
    check("capabilities drop ALL", sc.get("capabilities") == {"drop": ["ALL"]})
    check("seccomp RuntimeDefault", sc.get("seccompProfile") == {"type": "RuntimeDefault"}
          and psc.get("seccompProfile") == {"type": "RuntimeDefault"})
    check("pod non-root 65532", psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532)
    check(f"serviceAccountName {sa_name}", pod["serviceAccountName"] == sa_name)
    check("automountServiceAccountToken", pod["automountServiceAccountToken"] is (case != "single"))
    if case == "custom":
        check("custom resources", c["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                      "limits": {"cpu": "1", "memory": "512Mi"}}, c["resources"])
        check("podAnnotations", dep["spec"]["template"]["metadata"].get("annotations") == {"example.com/team": "streaming"})
        check("nodeSelector and tolerations", pod.get("nodeSelector") == {"kubernetes.io/os": "linux"}
              and pod.get("tolerations", [{}])[0].get("key") == "dedicated")
        check("extraEnv appended", c["env"][-1] == {"name": "AWS_REGION", "value": "eu-west-1"})
        pdb = by_kind["PodDisruptionBudget"][0]
        check("PDB minAvailable 1, same selector", pdb["spec"] == {"minAvailable": 1, "selector": dep["spec"]["selector"]})
        sm = by_kind["ServiceMonitor"][0]
        check("ServiceMonitor scrapes http-metrics /metrics", sm["apiVersion"] == "monitoring.coreos.com/v1"
              and sm["spec"]["endpoints"][0]["port"] == "http-metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
              and sm["metadata"]["labels"].get("release") == "prometheus")
    else:
        check("default resources", c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}})
    if case == "single":
        check("kubeconfig volume, mount and env", pod["volumes"] == [{"name": "kubeconfig", "secret": {"secretName": "operator-kubeconfig"}}]
              and c["volumeMounts"] == [{"name": "kubeconfig", "mountPath": "/etc/streamjob", "readOnly": True}]
              and env.get("KUBECONFIG", {}).get("value") == "/etc/streamjob/kubeconfig")
    else:
        check("no extra volumes", "volumes" not in pod and "volumeMounts" not in c)

    svc = by_kind["Service"][0]
    check("metrics Service port 8081 http-metrics", svc["spec"]["ports"] == [
        {"name": "http-metrics", "port": 8081, "targetPort": "http-metrics", "protocol": "TCP"}]
        and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"])

    if "CustomResourceDefinition" in by_kind:
        crd = by_kind["CustomResourceDefinition"][0]
        check("CRD kept on uninstall (helm, Argo CD, Flux)", crd["metadata"].get("annotations") == {
            "helm.sh/resource-policy": "keep", "argocd.argoproj.io/sync-options": "Prune=false,Delete=false",
            "kustomize.toolkit.fluxcd.io/prune": "disabled"}, crd["metadata"].get("annotations"))
        want_crd = yaml.safe_load(open(crd_file))
        got = {**crd, "metadata": {k: v for k, v in crd["metadata"].items() if k not in ("labels", "annotations")}}
        check("CRD content equals crds/streamjob.yaml", got == want_crd)

    print(f"[{case}] {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
