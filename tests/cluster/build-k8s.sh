#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager 1.20.2 from Debian's `kubernetes` source package
# (bookworm) and cache them in $STREAMJOB_CACHE/k8s-1.20.2/bin. Idempotent: does nothing when both
# binaries are cached. Also installs etcd (Debian's etcd-server) which the cluster needs at run time.
set -euo pipefail

STREAMJOB_CACHE=${STREAMJOB_CACHE:-$HOME/.cache/streamjob}
K8S_VERSION=1.20.2
K8S_DIR="$STREAMJOB_CACHE/k8s-$K8S_VERSION"
BIN_DIR="$K8S_DIR/bin"
WORK_DIR="$K8S_DIR/work"

log() { echo "[build-k8s] $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_pkgs=()
for p in golang-go etcd-server rsync golang-github-modern-go-reflect2-dev dpkg-dev curl openssl python3 util-linux; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done

have_bins() { [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kube-controller-manager" ]; }

if have_bins && [ ${#need_pkgs[@]} -eq 0 ]; then
  log "cached: $BIN_DIR/{kube-apiserver,kube-controller-manager}"
  exit 0
fi

apt_updated=0
apt_update() {
  if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
}

if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if have_bins; then
  log "cached: $BIN_DIR/{kube-apiserver,kube-controller-manager}"
  exit 0
fi

# deb-src entry for bookworm main (only if none exists yet)
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src ' /etc/apt/sources.list; then
  # Use the archive this machine already installs packages from (first "deb" URI for bookworm).
  uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ && u != "" {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  if [ -z "$uri" ]; then
    log "no apt source for bookworm found; add a deb-src entry for bookworm main by hand"
    exit 1
  fi
  log "adding deb-src for bookworm main from $uri"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
    | $SUDO tee /etc/apt/sources.list.d/streamjob-deb-src.sources >/dev/null
  apt_updated=0
fi

mkdir -p "$WORK_DIR" "$BIN_DIR"
cd "$WORK_DIR"
SRC=$(find "$WORK_DIR" -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1 || true)
if [ -z "$SRC" ] || [ ! -f "$SRC/.streamjob-prepared" ]; then
  rm -rf "$WORK_DIR"/kubernetes-* "$WORK_DIR"/kubernetes_*
  apt_update
  log "apt-get source kubernetes"
  apt-get source -qq kubernetes >/dev/null
  SRC=$(find "$WORK_DIR" -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1)
  [ -n "$SRC" ] || { log "no kubernetes-1.20* source dir after apt-get source"; exit 1; }
  # The vendored reflect2 1.0.1 crashes under Go >= 1.18; use Debian's 1.0.2 copy without go.mod.
  R2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$R2" ] || { log "missing $R2"; exit 1; }
  rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
  cp -rL "$R2" "$SRC/vendor/github.com/modern-go/reflect2"
  rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod" "$SRC/vendor/github.com/modern-go/reflect2/go.sum"
  mkdir -p "$SRC/.go/src/k8s.io"
  ln -sfn "$SRC" "$SRC/.go/src/k8s.io/kubernetes"
  touch "$SRC/.streamjob-prepared"
fi

cd "$SRC/.go/src/k8s.io/kubernetes"
export GOPATH="$SRC/.go" GO111MODULE=off GOFLAGS="" CGO_ENABLED=0
export GOCACHE="$K8S_DIR/gocache"
for what in kube-apiserver kube-controller-manager; do
  if [ -x "$BIN_DIR/$what" ]; then continue; fi
  log "building $what (several minutes)"
  start=$(date +%s)
  make WHAT="cmd/$what" >"$K8S_DIR/build-$what.log" 2>&1 || { tail -n 40 "$K8S_DIR/build-$what.log" >&2; exit 1; }
  out=$(find "$SRC/_output" -type f -name "$what" -perm -u+x | head -n1)
  [ -n "$out" ] || { log "built $what not found under _output"; exit 1; }
  cp "$out" "$BIN_DIR/$what.tmp" && mv "$BIN_DIR/$what.tmp" "$BIN_DIR/$what"
  log "built $what in $(( $(date +%s) - start ))s"
done
log "done: $BIN_DIR"
