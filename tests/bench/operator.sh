#!/usr/bin/env bash
# Operator recovery figures (printed, never asserted): time from a SIGKILLed worker to the job
# Running again, and the downtime of an upgrade with savepoint (parallelism 2 -> 3), over N runs of
# the end-to-end tests on the local cluster. Prints every run and the medians.
#   bash tests/bench/operator.sh [RUNS]      (default 5; starts the cluster if it is not running)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
runs=${1:-5}

out=$(mktemp)
bash tests/cluster/up.sh >"$out" 2>&1 || { cat "$out"; exit 1; }
started=1
if grep -q "already running" "$out"; then started=0; fi
cleanup() { rm -f "$out"; if [ $started = 1 ]; then bash tests/cluster/down.sh; fi; }
trap cleanup EXIT
set -a; . target/cluster/env; set +a
kubectl apply --server-side --field-manager=streamjob-tests -f crds/streamjob.yaml >/dev/null
cargo build -q --bin streamjob
cargo test -q -p streamjob-testkit --test operator --no-run 2>/dev/null

figures=$(mktemp)
for i in $(seq 1 "$runs"); do
  # One test per invocation, so one that fails does not hide the figures of the others.
  for test in deploys_checkpoints upgrade_takes_a_savepoint a_job_on_several_worker_pods; do
    cargo test -q -p streamjob-testkit --test operator -- --nocapture --test-threads=1 "$test" \
      2>&1 | grep '^\[figures\]' | tee -a "$figures"
  done
done
python3 - "$figures" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"\[figures\] (.*): ([0-9.]+)s", line.strip())
    if m:
        rows.setdefault(m.group(1), []).append(float(m.group(2)))
print(f"{'figure':58} {'runs':>4} {'median':>8} {'min':>7} {'max':>7}")
for name, xs in rows.items():
    print(f"{name:58} {len(xs):>4} {statistics.median(xs):>7.2f}s {min(xs):>6.2f}s {max(xs):>6.2f}s")
PY
rm -f "$figures"
