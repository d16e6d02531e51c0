#!/usr/bin/env bash
# Stops the local test cluster started by up.sh: every daemon by its PID file, then any process
# still carrying the process kubelet's marker (pods' children), then removes target/cluster/env.
# Flags: --quiet (no summary), --keep-logs (keep daemon and pod logs; the default keeps them too,
# the next up.sh clears them).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER="$REPO/target/cluster"
PIDS="$CLUSTER/pids"
QUIET=0
for a in "$@"; do [ "$a" = --quiet ] && QUIET=1; done
log() { [ $QUIET = 1 ] || echo "[cluster] $*" >&2; }

ours() { # pid: alive and started for this cluster (its command line names the cluster folder)
  local cmd
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
  [[ $cmd == *"$CLUSTER"* ]]
}

stopped=()
# The kubelet first (it stops its pods), the store last.
for name in process-kubelet kube-controller-manager kube-apiserver s3s-fs etcd; do
  f="$PIDS/$name"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do ours "$pid" || break; sleep 0.1; done
    if ours "$pid"; then kill -KILL "$pid" 2>/dev/null; sleep 0.2; fi
    stopped+=("$name")
  fi
  rm -f "$f"
done

# Pod processes (and their children) carry PROCESS_KUBELET_CLUSTER=<cluster dir>.
marker="PROCESS_KUBELET_CLUSTER=$CLUSTER"
for envf in /proc/[0-9]*/environ; do
  pid=${envf#/proc/}; pid=${pid%/environ}
  [ "$pid" = $$ ] && continue
  envs=$(tr '\0' '\n' 2>/dev/null <"$envf") || continue
  if grep -qxF "$marker" <<<"$envs"; then
    kill -KILL "$pid" 2>/dev/null && stopped+=("pod-process:$pid")
  fi
done

rm -f "$CLUSTER/env"
if [ ${#stopped[@]} -gt 0 ]; then log "stopped: ${stopped[*]}"; else log "nothing was running"; fi
