#!/usr/bin/env bash
# Tests the Argo CD health check gitops/argocd/health.lua with Lua 5.1 (the dialect of Argo CD's
# gopher-lua): for each gitops/argocd/testdata/*.yaml (document 1: expected {status, message},
# document 2: a StreamJob), python3 turns the StreamJob into a Lua table `obj` (nulls dropped, as
# Argo CD does), the script runs, and its status and message must equal the expected ones.
# Installs lua5.1 and python3-yaml when missing. Run from anywhere: bash tests/gitops/test.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
PY=/usr/bin/python3
HEALTH=gitops/argocd/health.lua

need=()
command -v lua5.1 >/dev/null || need+=(lua5.1)
{ [ -x "$PY" ] && "$PY" -c 'import yaml' 2>/dev/null; } || need+=(python3 python3-yaml)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# YAML test case -> $WORK/obj.lua (obj = {...}) and $WORK/expected (status, message lines).
to_lua() { "$PY" - "$1" "$WORK" <<'PYTHON'
import sys, yaml

def lua(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):  # byte by byte: printable ASCII as is, the rest as \ddd escapes
        return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else "\\%03d" % b
                             for b in v.encode()) + '"'
    if isinstance(v, list):
        return "{" + ", ".join(lua(x) for x in v if x is not None) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join("[%s] = %s" % (lua(str(k)), lua(x)) for k, x in v.items() if x is not None) + "}"
    raise TypeError(type(v))

expected, obj = list(yaml.safe_load_all(open(sys.argv[1])))
open(sys.argv[2] + "/obj.lua", "w").write("obj = " + lua(obj) + "\n")
open(sys.argv[2] + "/expected", "w").write(expected["expected"]["status"] + "\n" + expected["expected"]["message"] + "\n")
PYTHON
}

passed=0 failed=0
if luac5.1 -p "$HEALTH" 2>"$WORK/err" || lua5.1 -e "assert(loadfile('$HEALTH'))" 2>"$WORK/err"; then
  passed=$((passed + 1)); echo "  ok   $HEALTH parses"
else
  failed=$((failed + 1)); echo "  FAIL $HEALTH does not parse: $(cat "$WORK/err")"
fi
for f in gitops/argocd/testdata/*.yaml; do
  name=$(basename "$f" .yaml)
  to_lua "$f"
  if lua5.1 -e "dofile('$WORK/obj.lua'); local hs = dofile('$HEALTH'); io.write(hs.status, '\n', hs.message or '', '\n')" \
      >"$WORK/got" 2>&1 && cmp -s "$WORK/got" "$WORK/expected"; then
    passed=$((passed + 1)); echo "  ok   $name: $(head -n1 "$WORK/got"): $(tail -n1 "$WORK/got")"
  else
    failed=$((failed + 1))
    echo "  FAIL $name: got '$(tr '\n' '|' <"$WORK/got")', want '$(tr '\n' '|' <"$WORK/expected")'"
  fi
done
echo "gitops: $passed passed, $failed failed"
[ "$failed" = 0 ]
