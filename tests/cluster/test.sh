#!/usr/bin/env bash
# Runs the harness tests of the local cluster: brings the cluster up if needed, runs
# `cargo test -p streamjob-testkit --test cluster --test operator`, and brings it down again if it started it.
# Extra arguments go to the test binary (e.g. a test name filter).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

out=$(mktemp)
bash tests/cluster/up.sh 2>&1 | tee "$out" >&2
started=1
if grep -q "already running" "$out"; then started=0; fi
rm -f "$out"
cleanup() { if [ $started = 1 ]; then bash tests/cluster/down.sh; fi; }
trap cleanup EXIT

# The generated CRD and the examples against the real API server (schema validation without CEL).
(
  set -a; . target/cluster/env; set +a
  kubectl apply --server-side --field-manager=streamjob-tests -f crds/streamjob.yaml >/dev/null
  kubectl wait --for=condition=Established crd/streamjobs.streamjob.io --timeout=60s >/dev/null
  kubectl apply --dry-run=client -f crds/streamjob.yaml >/dev/null
  for f in manifests/examples/*.yaml; do
    kubectl apply --dry-run=server -n default -f "$f" >/dev/null
  done
  bad=$(sed 's/^  parallelism: 2$/  parallelism: 0/' manifests/examples/windowed-count.yaml)
  if echo "$bad" | kubectl apply --dry-run=server -n default -f - >/dev/null 2>&1; then
    echo "the API server accepted a StreamJob with parallelism 0" >&2
    exit 1
  fi
  echo "[cluster] CRD established; examples accepted and an invalid StreamJob rejected by the API server" >&2
)

cargo test -p streamjob-testkit --test cluster -- "$@"
# The operator end to end: its own process per test, real workers, S3. The streamjob binary the
# pods run is the one `cargo build` (or the workspace tests) produced.
cargo build -q --bin streamjob
cargo test -p streamjob-testkit --test operator --test cli -- "$@"
# Hostile StreamJob manifests (wrong types, bounds, names, paths, storage without access, specs only
# the API server can judge): each rejected by the API server or reported in status, never a pod, a
# healthy job beside them untouched. Its own namespace and operator process, deleted at the end.
(
  set -a; . target/cluster/env; set +a
  python3 tests/chaos/hostile_manifests.py --bin "$STREAMJOB_BIN"
)
# Chaos under the operator: the operator SIGKILLed at random points (idle, during a restore, mid-upgrade
# with savepoint, after a savepoint request, with a corrupted newest checkpoint), worker pods killed;
# the verifier judges the committed output. Seeded: the same command line reproduces a run.
if [ $# -eq 0 ]; then
  python3 tests/chaos/operator_chaos.py --seed 1 --operator-kills 12
fi
# The Helm chart rendered without helm, applied to the cluster, RBAC checked, the operator run from it.
bash tests/chart/test.sh
