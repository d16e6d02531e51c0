#!/usr/bin/env bash
# Installs Apache Flink (the benchmark peer, issue 7) from PyPI into a virtualenv and prints the path of
# the folder holding Flink's jars (flink-dist, MiniCluster, state backends). Idempotent: a second run
# only checks the installed version. About 1.5 min and 1.2 GB on first use.
#   tests/bench/flink/install.sh            -> prints the lib folder (pyflink/lib) on stdout
# Environment: STREAMJOB_CACHE (default ~/.cache/streamjob), FLINK_PIP_VERSION (default: the pinned one).
set -euo pipefail
FLINK_PIP_VERSION=${FLINK_PIP_VERSION:-2.3.0}
CACHE=${STREAMJOB_CACHE:-$HOME/.cache/streamjob}
VENV=$CACHE/flink-venv
PY=${PYTHON:-python3}

installed() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$FLINK_PIP_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("apache-flink") == sys.argv[1] and version("matplotlib") else 1)
PY
}

if ! installed; then
  echo "installing apache-flink==$FLINK_PIP_VERSION and matplotlib into $VENV (first use: ~1.5 min, ~1.2 GB)" >&2
  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" >&2 || {
      echo "python3 -m venv failed; on Debian install it with: apt-get install python3-venv" >&2
      exit 1
    }
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "apache-flink==$FLINK_PIP_VERSION" matplotlib >&2
  installed || { echo "apache-flink $FLINK_PIP_VERSION is not importable after pip install" >&2; exit 1; }
fi

LIB=$("$VENV/bin/python" -c 'import os, pyflink; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
[ -d "$LIB" ] || { echo "no Flink lib folder at $LIB" >&2; exit 1; }
echo "$LIB"
