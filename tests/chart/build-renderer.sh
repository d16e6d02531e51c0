#!/usr/bin/env bash
# Builds the chart renderer (tests/chart/render/*.go, helm's template rendering without helm) into
# $STREAMJOB_CACHE/chart-render/render, offline, from Debian's Go packages (installed with apt when
# missing). Rebuilds only when its sources changed. Prints the binary's path (stdout, last line).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STREAMJOB_CACHE=${STREAMJOB_CACHE:-$HOME/.cache/streamjob}
OUT="$STREAMJOB_CACHE/chart-render"
BIN="$OUT/render"
SRC="$REPO/tests/chart/render"
PKGS=(golang-go golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev golang-github-xeipuuv-gojsonschema-dev)

log() { echo "[chart-render] $*" >&2; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# The stamp covers the sources, this script and the Go and library versions.
stamp=$( (cat "$SRC"/*.go "$SRC/go.mod" "${BASH_SOURCE[0]}"; go version;
          dpkg-query -W -f='${Package} ${Version}\n' "${PKGS[@]}") | sha256sum | cut -d' ' -f1)
if [ -x "$BIN" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$BIN"
  exit 0
fi

log "building $BIN"
# GOPATH mode against /usr/share/gocode: no module proxy, no network.
(cd "$SRC" && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$OUT/go-build" GOFLAGS='' \
  go build -trimpath -o "$BIN.tmp" .)
mv "$BIN.tmp" "$BIN"
echo "$stamp" >"$OUT/stamp"
echo "$BIN"
