#!/usr/bin/env bash
# manifests/operator.yaml is the chart rendered with its default values (release "streamjob",
# namespace streamjob-system) plus that Namespace. This script prints it (no argument), writes it
# together with the chart's copy of the CRD (--write), or fails when either is stale (--check).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART="$REPO/charts/streamjob-operator"
CRD_COPY="$CHART/files/streamjob-crd.yaml"
OUT="$REPO/manifests/operator.yaml"
NAMESPACE=streamjob-system
REGEN="bash tests/chart/render-manifests.sh --write"

render() {
  local bin
  bin=$(bash "$REPO/tests/chart/build-renderer.sh" | tail -n1)
  cat <<HEADER
# The streamjob operator as plain YAML: charts/streamjob-operator rendered with its default values
# (release "streamjob", namespace $NAMESPACE), plus that Namespace. Generated, do not edit:
# regenerate with \`$REGEN\`. Install with \`kubectl apply --server-side -f manifests/operator.yaml\`.
---
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
HEADER
  "$bin" --name streamjob --namespace "$NAMESPACE" "$CHART"
}

case "${1:-}" in
  "")
    render
    ;;
  --write)
    cp "$REPO/crds/streamjob.yaml" "$CRD_COPY"
    render >"$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
    echo "wrote ${CRD_COPY#"$REPO/"} and ${OUT#"$REPO/"}" >&2
    ;;
  --check)
    if ! cmp -s "$REPO/crds/streamjob.yaml" "$CRD_COPY"; then
      echo "charts/streamjob-operator/files/streamjob-crd.yaml differs from crds/streamjob.yaml: run '$REGEN'" >&2
      exit 1
    fi
    if ! render | diff -u "$OUT" - >&2; then
      echo "manifests/operator.yaml is stale (diff above): run '$REGEN'" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 [--write|--check]" >&2
    exit 2
    ;;
esac
