#!/usr/bin/env bash
# Tests the Helm chart charts/streamjob-operator without helm: builds the renderer, checks that the
# chart's CRD copy and manifests/operator.yaml are not stale, renders the chart with default and
# non-default values and checks the output's structure (check-render.py), checks that bad values
# are rejected, and that every value is documented. Then, if the local test cluster runs
# (tests/cluster/up.sh; never started here), applies the default rendering (server dry-run, then
# for real in a fresh namespace), checks the operator's RBAC with `kubectl auth can-i`, and runs
# the operator from the chart as its ServiceAccount on that namespace (run_operator). Cleans up
# what it created (never the CRD). Run from anywhere: bash tests/chart/test.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
CHART=charts/streamjob-operator
PY=/usr/bin/python3
# Where the cluster's env file is (KUBECONFIG=...); the cluster part is skipped if it does not answer.
CLUSTER_ENV=${STREAMJOB_CLUSTER_ENV:-$REPO/target/cluster/env}
WORK=$(mktemp -d)
# Set by the cluster part: what to delete from the cluster on exit.
CL_KUBECONFIG="" CL_NS="" CL_FULLNAME=""
cleanup() {
  if [ -n "$CL_NS" ]; then
    # StreamJobs first, while the operator still runs to remove its finalizer (else strip it), so
    # the namespace never hangs in Terminating.
    local sj
    kubectl --kubeconfig "$CL_KUBECONFIG" -n "$CL_NS" delete streamjobs.streamjob.io --all --timeout=30s >/dev/null 2>&1 || true
    for sj in $(kubectl --kubeconfig "$CL_KUBECONFIG" -n "$CL_NS" get streamjobs.streamjob.io -o name 2>/dev/null); do
      kubectl --kubeconfig "$CL_KUBECONFIG" -n "$CL_NS" patch "$sj" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1 || true
    done
    kubectl --kubeconfig "$CL_KUBECONFIG" delete namespace "$CL_NS" --wait=false --ignore-not-found >/dev/null 2>&1 || true
    kubectl --kubeconfig "$CL_KUBECONFIG" delete "clusterrole/$CL_FULLNAME" "clusterrolebinding/$CL_FULLNAME" --ignore-not-found >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
passed=0 failed=0

ok() { passed=$((passed + 1)); echo "  ok   $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL $*"; }

if ! [ -x "$PY" ] || ! "$PY" -c 'import yaml' 2>/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing python3 python3-yaml" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-yaml >/dev/null
fi

echo "== renderer"
RENDER=$(bash tests/chart/build-renderer.sh | tail -n1)
echo "  $RENDER"

echo "== generated files are up to date"
if bash tests/chart/render-manifests.sh --check; then
  ok "charts/streamjob-operator/files/streamjob-crd.yaml == crds/streamjob.yaml; manifests/operator.yaml is current"
else
  fail "stale generated files (message above)"
fi

# Runs check-render.py on one rendering and adds its counts.
check_case() { # case file
  local out last
  out=$("$PY" tests/chart/check-render.py "$1" "$2" crds/streamjob.yaml 2>&1) || true
  grep -v '^  ok' <<<"$out" || true
  last=$(tail -n1 <<<"$out")
  if [[ $last =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1])); failed=$((failed + BASH_REMATCH[2]))
  else
    fail "check-render.py $1 did not finish"
  fi
}

render_case() { # case namespace renderer-args...
  local case=$1 ns=$2; shift 2
  echo "== render: $case"
  if "$RENDER" --name streamjob --namespace "$ns" "$@" "$CHART" >"$WORK/$case.yaml" 2>"$WORK/$case.err"; then
    check_case "$case" "$WORK/$case.yaml"
  else
    fail "render $case: $(cat "$WORK/$case.err")"
  fi
}
render_case default streamjob-system
render_case custom ops -f tests/chart/values-custom.yaml
render_case single ops -f tests/chart/values-single.yaml
render_case set ops --set replicaCount=3,podDisruptionBudget.enabled=false --set metrics.serviceMonitor.enabled=false

echo "== NOTES.txt"
if notes=$("$RENDER" --notes --name streamjob --namespace streamjob-system "$CHART") \
    && grep -q "deployment/streamjob-operator" <<<"$notes"; then
  ok "NOTES.txt renders"
else
  fail "NOTES.txt does not render"
fi

echo "== values.yaml, values.schema.json and the README table agree"
if "$PY" - "$CHART" >"$WORK/docs.out" 2>&1 <<'PYTHON'
import json, re, sys, yaml
chart = sys.argv[1]
schema = json.load(open(f"{chart}/values.schema.json"))
values = yaml.safe_load(open(f"{chart}/values.yaml"))
lines = open(f"{chart}/values.yaml").read().splitlines()
readme = open(f"{chart}/README.md").read()
problems = []
def line_of(key, depth, start):
    pattern = re.compile("^" + " " * (2 * depth) + re.escape(key) + ":")
    return next(i for i in range(start, len(lines)) if pattern.match(lines[i]))
def walk(s, v, path, start=0):
    for key, sub in s["properties"].items():
        p = path + [key]
        name = ".".join(p)
        if key == "global" and not path:
            continue
        if not isinstance(v, dict) or key not in v:
            problems.append(f"{name}: in the schema, not in values.yaml")
        elif "properties" in sub:
            walk(sub, v[key], p, line_of(key, len(path), start))
        else:
            if f"| `{name}` |" not in readme:
                problems.append(f"{name}: missing from the README values table")
            i = line_of(key, len(path), start)
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
                j -= 1
            if j < 0 or not lines[j].strip().startswith("# --"):
                problems.append(f"{name}: no '# --' comment above it in values.yaml")
    for key in (v or {}):
        if key not in s["properties"]:
            problems.append(".".join(path + [key]) + ": in values.yaml, not in the schema")
walk(schema, values, [])
print("\n".join(problems))
sys.exit(1 if problems else 0)
PYTHON
then
  ok "every value has a schema entry, a '# --' comment and a README row"
else
  fail "values documentation: $(cat "$WORK/docs.out")"
fi

echo "== bad values are rejected"
reject() { # expected-message renderer-args...
  local want=$1; shift
  if "$RENDER" "$@" "$CHART" >/dev/null 2>"$WORK/err"; then
    fail "accepted: $*"
  elif grep -qF -- "$want" "$WORK/err"; then
    ok "rejected $*: $want"
  else
    fail "rejected $* without '$want': $(cat "$WORK/err")"
  fi
}
reject "Additional property replicas is not allowed" --set replicas=2
reject "replicaCount: Must be greater than or equal to 0" --set replicaCount=-1
reject "replicaCount: Invalid type" --set replicaCount=two
reject "savepointTimeout: Does not match pattern" --set savepointTimeout=5min
reject "image.pullPolicy must be one of" --set image.pullPolicy=Sometimes
reject "watchNamespace: Does not match pattern" --set watchNamespace=Apps_1
reject "serviceAccount.name is required" --set serviceAccount.create=false

# ---- the local cluster (optional) ------------------------------------------------------------
cluster_part() {
  local kcfg ns rel full sa yaml
  kcfg=$(grep '^KUBECONFIG=' "$CLUSTER_ENV" | cut -d= -f2-)
  k() { kubectl --kubeconfig "$kcfg" "$@"; }
  ns="sj-chart-$(date +%s)-$$"
  rel="sj-chart-$$"
  full="$rel-operator"
  sa="system:serviceaccount:$ns:$full"
  yaml="$WORK/cluster.yaml"
  CL_KUBECONFIG=$kcfg CL_NS=$ns CL_FULLNAME=$full

  echo "== cluster: namespace $ns, release $rel"
  k create namespace "$ns" >/dev/null
  # Default values; documents of kinds the cluster lacks (ServiceMonitor) are left out.
  only_known() { "$PY" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] != "ServiceMonitor"]
print(yaml.safe_dump_all(docs, sort_keys=False), end="")'; }
  "$RENDER" --name "$rel" --namespace "$ns" "$CHART" | only_known >"$yaml"
  if k apply --server-side --dry-run=server -f "$yaml" >"$WORK/dry.out" 2>&1; then
    ok "default rendering accepted by the API server (dry run): $(wc -l <"$WORK/dry.out") objects"
  else
    fail "server dry run: $(cat "$WORK/dry.out")"
  fi

  # For real, with no operator replica: a running operator would reconcile every StreamJob of the
  # shared cluster. The CRD is applied only when absent (and then kept, as helm would).
  local extra=(--set replicaCount=0)
  if k get crd streamjobs.streamjob.io >/dev/null 2>&1; then extra+=(--set crds.install=false); fi
  "$RENDER" --name "$rel" --namespace "$ns" "${extra[@]}" "$CHART" | only_known >"$yaml"
  if k apply --server-side -f "$yaml" >"$WORK/apply.out" 2>&1; then
    ok "applied: $(tr '\n' ';' <"$WORK/apply.out")"
  else
    fail "apply: $(cat "$WORK/apply.out")"
    return
  fi
  local deadline=$(( $(date +%s) + 30 )) what
  for what in "serviceaccount/$full -n $ns" "clusterrole/$full" "clusterrolebinding/$full" "deployment/$full -n $ns" \
      "role/$full-leader-election -n $ns"; do
    # shellcheck disable=SC2086
    until k get $what >/dev/null 2>&1 || [ "$(date +%s)" -ge "$deadline" ]; do sleep 0.5; done
    # shellcheck disable=SC2086
    if k get $what >/dev/null 2>&1; then ok "exists: $what"; else fail "missing: $what"; fi
  done

  echo "== cluster: RBAC of $sa"
  can() { # yes|no verb resource [kubectl args...]
    local want=$1; shift
    local got
    got=$(k auth can-i --as="$sa" "$@" 2>/dev/null) || true
    if [ "$got" = "$want" ]; then ok "can-i $* -> $got"; else fail "can-i $* -> '$got', want $want"; fi
  }
  local other=default verb
  for verb in get list watch patch; do can yes "$verb" streamjobs.streamjob.io -n "$other"; done
  can yes list streamjobs.streamjob.io --all-namespaces
  for verb in get patch update; do can yes "$verb" streamjobs.streamjob.io --subresource=status -n "$other"; done
  can yes update streamjobs.streamjob.io --subresource=finalizers -n "$other"
  for verb in get list watch patch delete; do can yes "$verb" pods -n "$other"; done
  for verb in get patch; do
    can yes "$verb" configmaps -n "$other"; can yes "$verb" services -n "$other"; can yes "$verb" secrets -n "$other"
  done
  for verb in create patch; do can yes "$verb" events.events.k8s.io -n "$other"; done
  for verb in get create update; do can yes "$verb" leases.coordination.k8s.io -n "$ns"; done
  # ... and nothing more.
  can no delete streamjobs.streamjob.io -n "$other"
  can no create streamjobs.streamjob.io -n "$other"
  can no update streamjobs.streamjob.io -n "$other"
  can no list secrets --all-namespaces
  can no list secrets -n "$other"
  can no watch secrets -n "$other"
  can no delete secrets -n "$other"
  can no create pods -n "$other"
  can no delete configmaps -n "$other"
  can no create deployments.apps -n "$other"
  can no update nodes
  can no create events -n "$other"
  can no get leases.coordination.k8s.io -n "$other"
  can no delete leases.coordination.k8s.io -n "$ns"
  can no create clusterrolebindings.rbac.authorization.k8s.io
  can no patch customresourcedefinitions.apiextensions.k8s.io

  run_operator "$kcfg" "$ns" "$rel" "$full"
}

# The operator from the chart, running as the chart's ServiceAccount, watching only the test
# namespace. Pods are host processes here, so kube-rs cannot use the in-cluster token path: the
# ServiceAccount's token (its Secret, auto-created by Kubernetes 1.20) goes into a kubeconfig
# Secret, mounted through extraVolumes and named by KUBECONFIG in extraEnv (the process kubelet
# rewrites the mount path in the env value). Needs the process kubelet and the streamjob binary.
run_operator() { # kubeconfig namespace release fullname
  local kcfg=$1 ns=$2 rel=$3 full=$4 bin
  bin=$(grep '^STREAMJOB_BIN=' "$CLUSTER_ENV" | cut -d= -f2- || true)
  if ! [ -x "$bin" ] || ! k get nodes 2>/dev/null | grep -q ' Ready'; then
    echo "== cluster: no streamjob binary ('$bin') or no Ready node; not running the operator"
    return
  fi
  echo "== cluster: the operator from the chart, as $full, watching $ns"
  local secret="" deadline=$(( $(date +%s) + 30 ))
  until [ -n "$secret" ] || [ "$(date +%s)" -ge "$deadline" ]; do
    secret=$(k -n "$ns" get serviceaccount "$full" -o jsonpath='{.secrets[0].name}' 2>/dev/null || true)
    [ -n "$secret" ] || sleep 0.5
  done
  if [ -z "$secret" ]; then fail "no token Secret for serviceaccount/$full"; return; fi
  local server token ca
  server=$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  token=$(k -n "$ns" get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)
  ca=$(k -n "$ns" get secret "$secret" -o jsonpath='{.data.ca\.crt}')
  cat >"$WORK/operator.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: operator, user: {token: "$token"}}]
contexts: [{name: c, context: {cluster: c, user: operator, namespace: "$ns"}}]
current-context: c
KC
  k -n "$ns" create secret generic operator-kubeconfig --from-file=kubeconfig="$WORK/operator.kubeconfig" >/dev/null
  cat >"$WORK/run-values.yaml" <<VALUES
watchNamespace: $ns
crds:
  install: false
automountServiceAccountToken: false
extraVolumes: [{name: kubeconfig, secret: {secretName: operator-kubeconfig}}]
extraVolumeMounts: [{name: kubeconfig, mountPath: /etc/streamjob, readOnly: true}]
extraEnv: [{name: KUBECONFIG, value: /etc/streamjob/kubeconfig}]
VALUES
  if ! "$RENDER" --name "$rel" --namespace "$ns" -f "$WORK/run-values.yaml" "$CHART" | only_known \
      | k apply --server-side -f - >"$WORK/apply.out" 2>&1; then
    fail "apply with the kubeconfig values: $(cat "$WORK/apply.out")"
    return
  fi
  local selector="app.kubernetes.io/instance=$rel,app.kubernetes.io/component=operator"
  deadline=$(( $(date +%s) + 30 ))
  until [ -n "$(k -n "$ns" get pods -l "$selector" -o name 2>/dev/null)" ] || [ "$(date +%s)" -ge "$deadline" ]; do
    sleep 0.5
  done
  if k -n "$ns" wait --for=condition=Ready pod -l "$selector" --timeout=90s >/dev/null 2>&1; then
    ok "operator pod Ready (GET /readyz on 8081)"
  else
    fail "operator pod not Ready: $(k -n "$ns" get pods -l "$selector" -o wide 2>&1 | tail -n +2)"
    local log
    for log in "$(grep '^STREAMJOB_CLUSTER_DIR=' "$CLUSTER_ENV" | cut -d= -f2-)/logs/${ns}_"*; do
      [ -f "$log" ] && tail -n 20 "$log"
    done
    return
  fi
  local pod holder=""
  pod=$(k -n "$ns" get pods -l "$selector" -o jsonpath='{.items[0].metadata.name}')
  deadline=$(( $(date +%s) + 30 ))
  until [ "$holder" = "$pod" ] || [ "$(date +%s)" -ge "$deadline" ]; do
    holder=$(k -n "$ns" get lease streamjob-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
    [ "$holder" = "$pod" ] || sleep 0.5
  done
  if [ "$holder" = "$pod" ]; then ok "the pod holds Lease $ns/streamjob-operator"; else fail "Lease holder '$holder', want $pod"; fi

  # A StreamJob the operator must reject without starting pods: parallelism above maxParallelism
  # (checked by the operator, not the schema). Its status and Warning event need the chart's RBAC.
  k -n "$ns" apply -f - >/dev/null <<SJ
apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {name: chart-test-invalid}
spec:
  parallelism: 4
  maxParallelism: 2
  job: {name: windowed-count, params: {events: 1000}}
  storage: {path: $WORK/snapshots}
SJ
  local reason=""
  deadline=$(( $(date +%s) + 30 ))
  until [ "$reason" = InvalidSpec ] || [ "$(date +%s)" -ge "$deadline" ]; do
    reason=$(k -n "$ns" get streamjob chart-test-invalid -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}' 2>/dev/null || true)
    [ "$reason" = InvalidSpec ] || sleep 0.5
  done
  if [ "$reason" = InvalidSpec ]; then ok "operator wrote status: Ready=False, reason InvalidSpec"; else fail "Ready reason '$reason', want InvalidSpec"; fi
  if k -n "$ns" get events.events.k8s.io -o jsonpath='{.items[*].reason}' 2>/dev/null | grep -qw InvalidSpec; then
    ok "operator recorded a Warning event InvalidSpec"
  else
    fail "no InvalidSpec event in $ns"
  fi
  if k -n "$ns" delete streamjob chart-test-invalid --timeout=30s >/dev/null 2>&1; then
    ok "operator removed its finalizer on delete"
  else
    fail "streamjob/chart-test-invalid not deleted within 30s"
  fi
}

kubeconfig=""
if [ -f "$CLUSTER_ENV" ]; then kubeconfig=$(grep '^KUBECONFIG=' "$CLUSTER_ENV" | cut -d= -f2- || true); fi
if [ -n "$kubeconfig" ] && command -v kubectl >/dev/null \
    && kubectl --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
  cluster_part
else
  echo "== cluster: not running ($CLUSTER_ENV); skipping the cluster part (start it with tests/cluster/up.sh)"
fi

echo "chart: $passed passed, $failed failed"
[ "$failed" = 0 ]
