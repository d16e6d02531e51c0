#!/usr/bin/env bash
# Brings the local test cluster up: etcd, kube-apiserver, kube-controller-manager, the S3 server
# (s3s-fs) and the process kubelet, all on 127.0.0.1. Idempotent: reuses a live cluster, builds
# what is missing. Writes target/cluster/env (KUBECONFIG, S3_ENDPOINT, AWS_*) and PIDs in
# target/cluster/pids/. Stop it with tests/cluster/down.sh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STREAMJOB_CACHE=${STREAMJOB_CACHE:-$HOME/.cache/streamjob}
K8S_BIN="$STREAMJOB_CACHE/k8s-1.20.2/bin"
CLUSTER="$REPO/target/cluster"
PIDS="$CLUSTER/pids"
DLOGS="$CLUSTER/daemons"
ENV_FILE="$CLUSTER/env"
NODE_NAME=${PROCESS_KUBELET_NODE:-process-node}

log() { echo "[cluster] $*" >&2; }

mkdir -p "$CLUSTER"
exec 9>"$CLUSTER/.lock"
flock 9

# The cluster is live when every recorded daemon runs and the API server answers.
pid_alive() { # name
  local f="$PIDS/$1" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  local cmd
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmd == *"$CLUSTER"* ]]
}
cluster_live() {
  [ -f "$ENV_FILE" ] || return 1
  for d in etcd kube-apiserver kube-controller-manager s3s-fs process-kubelet; do
    pid_alive "$d" || return 1
  done
  # shellcheck disable=SC1090
  KUBECONFIG=$(grep '^KUBECONFIG=' "$ENV_FILE" | cut -d= -f2-) kubectl get --raw /readyz >/dev/null 2>&1
}

usage() {
  cat >&2 <<USAGE
[cluster] up. Use it with:
    set -a; . $ENV_FILE; set +a
    kubectl get nodes,pods -A
  (or: kubectl --kubeconfig $CLUSTER/admin.kubeconfig get nodes,pods -A)
  pod logs: $CLUSTER/logs/<namespace>_<pod>_<container>.log
  daemon logs: $DLOGS/
  stop: tests/cluster/down.sh
USAGE
}

if cluster_live; then
  log "already running"
  usage
  exit 0
fi
t0=$(date +%s)

# Leftovers of a dead or half-started cluster go first.
"$REPO/tests/cluster/down.sh" --quiet || true

# ---- binaries -------------------------------------------------------------------------------
"$REPO/tests/cluster/build-k8s.sh"
S3S_FS=$("$REPO/tests/tools/install-s3s-fs.sh" | tail -n1)
TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The kubelet binary: $PROCESS_KUBELET_BIN, else the built one if it is newer than its sources
# (cargo test of the workspace or of testkit builds it), else build it now.
KUBELET_BIN=${PROCESS_KUBELET_BIN:-$TARGET_DIR/debug/process-kubelet}
if [ -z "${PROCESS_KUBELET_BIN:-}" ]; then
  if [ ! -x "$KUBELET_BIN" ] || [ -n "$(find "$REPO/crates/testkit/src" "$REPO/crates/testkit/Cargo.toml" \
      -newer "$KUBELET_BIN" -print -quit)" ]; then
    log "building process-kubelet"
    (cd "$REPO" && cargo build -q -p streamjob-testkit --bin process-kubelet)
  fi
fi
STREAMJOB_BIN=${STREAMJOB_BIN:-$TARGET_DIR/debug/streamjob}
ETCD_BIN=$(command -v etcd || echo /usr/bin/etcd)

# ---- fresh state ----------------------------------------------------------------------------
rm -f "$CLUSTER/started-by-test"
rm -rf "$CLUSTER/etcd" "$CLUSTER/s3" "$CLUSTER/pods" "$CLUSTER/logs" "$DLOGS" "$CLUSTER/pki" "$PIDS"
mkdir -p "$CLUSTER/etcd" "$CLUSTER/s3" "$CLUSTER/pods" "$CLUSTER/logs" "$DLOGS" "$CLUSTER/pki" "$PIDS"
chmod 700 "$CLUSTER/etcd"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port); API_PORT=$(free_port); S3_PORT=$(free_port)

# ---- PKI, tokens, kubeconfigs ----------------------------------------------------------------
PKI="$CLUSTER/pki"
(
  cd "$PKI"
  openssl genrsa -out ca.key 2048 2>/dev/null
  openssl req -x509 -new -nodes -key ca.key -subj "/CN=streamjob-test-ca" -days 3650 -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl genrsa -out apiserver.key 2048 2>/dev/null
  openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
  cat >apiserver.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EXT
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile apiserver.ext -out apiserver.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
ADMIN_TOKEN=$(openssl rand -hex 24)
CM_TOKEN=$(openssl rand -hex 24)
KUBELET_TOKEN=$(openssl rand -hex 24)
cat >"$PKI/tokens.csv" <<TOKENS
$ADMIN_TOKEN,admin,admin,"system:masters"
$CM_TOKEN,system:kube-controller-manager,kube-controller-manager,"system:masters"
$KUBELET_TOKEN,system:node:$NODE_NAME,process-kubelet,"system:masters"
TOKENS
chmod 600 "$PKI/tokens.csv" "$PKI"/*.key

kubeconfig() { # file user token
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: streamjob-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: streamjob-test
  context:
    cluster: streamjob-test
    user: $2
    namespace: default
current-context: streamjob-test
KC
  chmod 600 "$1"
}
kubeconfig "$CLUSTER/admin.kubeconfig" admin "$ADMIN_TOKEN"
kubeconfig "$CLUSTER/controller-manager.kubeconfig" kube-controller-manager "$CM_TOKEN"
kubeconfig "$CLUSTER/kubelet.kubeconfig" process-kubelet "$KUBELET_TOKEN"

# ---- start ----------------------------------------------------------------------------------
on_error() {
  log "start failed; daemon logs are in $DLOGS; stopping what was started"
  "$REPO/tests/cluster/down.sh" --quiet --keep-logs || true
}
trap on_error ERR

start() { # name cmd...
  local name=$1; shift
  # fd 9 (the lock) is closed for daemons: a live daemon must not keep later up.sh runs waiting.
  setsid "$@" >"$DLOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDS/$name"
}

wait_for() { # what seconds daemon cmd...
  local what=$1 secs=$2 daemon=$3; shift 3
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$daemon"; then
      log "$daemon exited while waiting for $what:"; tail -n 30 "$DLOGS/$daemon.log" >&2; return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out waiting for $what:"; tail -n 30 "$DLOGS/$daemon.log" >&2; return 1
    fi
    sleep 0.3
  done
}

log "starting etcd on 127.0.0.1:$ETCD_PORT"
start etcd "$ETCD_BIN" --name streamjob --data-dir "$CLUSTER/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "streamjob=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn
wait_for etcd 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

log "starting kube-apiserver on https://127.0.0.1:$API_PORT"
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --authorization-mode RBAC --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
  --endpoint-reconciler-type none --cert-dir "$PKI" --profiling=false --v=1
wait_for "kube-apiserver /readyz" 90 kube-apiserver \
  curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "https://127.0.0.1:$API_PORT/readyz"

log "starting kube-controller-manager"
start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$CLUSTER/controller-manager.kubeconfig" \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --leader-elect=false --port 0 --secure-port 0 --use-service-account-credentials=false \
  --concurrent-gc-syncs 5 --v=1

log "starting s3s-fs on 127.0.0.1:$S3_PORT"
S3_KEY=streamjob-test
S3_SECRET=$(openssl rand -hex 20)
start s3s-fs "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" \
  --access-key "$S3_KEY" --secret-key "$S3_SECRET" "$CLUSTER/s3"
wait_for s3s-fs 30 s3s-fs curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/"

log "starting process-kubelet (node $NODE_NAME)"
IMAGE_FLAGS=(--image test/sleep=/bin/sleep --image test/sh=/bin/sh --image test/true=/bin/true
  --image test/false=/bin/false --image "streamjob/streamjob=$STREAMJOB_BIN")
for extra in ${PROCESS_KUBELET_IMAGES:-}; do IMAGE_FLAGS+=(--image "$extra"); done
KUBECONFIG="$CLUSTER/kubelet.kubeconfig" start process-kubelet "$KUBELET_BIN" \
  --node-name "$NODE_NAME" --state-dir "$CLUSTER" "${IMAGE_FLAGS[@]}"

export KUBECONFIG="$CLUSTER/admin.kubeconfig"
wait_for "node $NODE_NAME Ready" 60 process-kubelet \
  kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
wait_for "default service account" 60 kube-controller-manager \
  kubectl get serviceaccount default -n default

cat >"$ENV_FILE" <<ENV
KUBECONFIG=$CLUSTER/admin.kubeconfig
S3_ENDPOINT=http://127.0.0.1:$S3_PORT
AWS_ACCESS_KEY_ID=$S3_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET
AWS_REGION=us-east-1
STREAMJOB_CLUSTER_DIR=$CLUSTER
PROCESS_KUBELET_NODE=$NODE_NAME
STREAMJOB_BIN=$STREAMJOB_BIN
ENV
trap - ERR
log "cluster started in $(( $(date +%s) - t0 ))s"
usage
