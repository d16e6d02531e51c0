#!/usr/bin/env bash
# The project's test command (README): formatting, lints, and every test suite of the workspace.
# Installs the test tools it needs into the cache folder first (idempotent), so it works on a fresh
# machine. CI (.ci/run) installs system packages and then runs exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
export STREAMJOB_CACHE="${STREAMJOB_CACHE:-$HOME/.cache/streamjob}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== generated CRD is up to date"
cargo run -q --locked -- crd | diff -u crds/streamjob.yaml - \
  || { echo "crds/streamjob.yaml is stale: run 'cargo run -q -- crd > crds/streamjob.yaml'"; exit 1; }

echo "== test tools"
S3S_FS_BIN="$(bash tests/tools/install-s3s-fs.sh)"
export S3S_FS_BIN

echo "== tests"
cargo nextest run --workspace --exclude streamjob-testkit --locked --no-fail-fast

echo "== chaos: seeded worker kills, a zombie attempt, a corrupted checkpoint (real worker processes)"
cargo build -q --locked --bin streamjob
STREAMJOB_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/streamjob" \
  python3 tests/chaos/chaos.py --seeds 1,2 --kills 25

echo "== chaos: S3 outage (s3s-fs stopped 30 s) and S3 faults (500/503/delays/resets via a proxy), snapshots in S3"
STREAMJOB_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/streamjob" \
  python3 tests/chaos/chaos.py --scenarios s3-outage,s3-faults --seeds 1

echo "== GitOps health check (Argo CD Lua) on its test data"
bash tests/gitops/test.sh

echo "== generated field reference (docs/streamjob-reference.md) is up to date"
/usr/bin/python3 tests/docs/crd-reference.py --check   # PyYAML: installed by the GitOps test above

echo "== local cluster (real kube-apiserver, etcd, controller-manager, process kubelet, S3)"
bash tests/cluster/test.sh
