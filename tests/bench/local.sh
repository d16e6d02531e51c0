#!/usr/bin/env bash
# Quick local-mode throughput figures for the built-in jobs (streamjob side only; the side-by-side
# comparison with Apache Flink is issue 7). Prints a markdown table: events/s (wall clock, including
# start-up), checkpoints completed, peak RSS. Asserts nothing. Usage:
#   tests/bench/local.sh [EVENTS] [RUNS]        (defaults: 5000000 events, 3 runs; median reported)
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${1:-5000000}
RUNS=${2:-3}
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
cargo build --release -q
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/streamjob
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

run() { # job parallelism interval -> "events_per_s rss_kib checkpoints"
  local job=$1 p=$2 interval=$3 results=()
  for _ in $(seq "$RUNS"); do
    rm -rf "$WORK/out" "$WORK/snap"
    cat > "$WORK/job.yaml" <<YAML
apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {name: bench}
spec:
  parallelism: $p
  job: {name: $job, params: {events: $EVENTS, output: $WORK/out}}
  checkpoint: {interval: $interval}
  storage: {path: $WORK/snap}
YAML
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/rss" "$BIN" run "$WORK/job.yaml" --quiet 2>/dev/null
    end=$(date +%s.%N)
    local ckpts
    ckpts=$(ls "$WORK/snap/attempts" >/dev/null 2>&1 && python3 - "$WORK/snap" <<'PY'
import json, pathlib, sys
print(max((json.loads(p.read_text())["checkpointId"] for p in pathlib.Path(sys.argv[1]).glob("checkpoints/*/_manifest.json")), default=0))
PY
)
    results+=("$(python3 -c "print(f'{$EVENTS/($end-$start):.0f}')") $(cat "$WORK/rss") $ckpts")
  done
  printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p"
}

echo "| job | parallelism | checkpoint interval | events/s (median of $RUNS) | last checkpoint id | peak RSS |"
echo "|---|---|---|---|---|---|"
for job in nexmark-q0 nexmark-q1 nexmark-q2 nexmark-q5 nexmark-q7 nexmark-q8 windowed-count word-count sequence-check; do
  for interval in 1h 1s; do
    read -r eps rss ckpts <<<"$(run "$job" 2 "$interval")"
    echo "| $job | 2 | $interval | $eps | $ckpts | $((rss / 1024)) MiB |"
  done
done
