#!/usr/bin/env bash
# Compiles the Flink benchmark job (tests/bench/flink/src) with javac against the jars of the Flink
# installed by install.sh, into ${STREAMJOB_CACHE:-~/.cache/streamjob}/flink-bench/classes (nothing
# binary is committed). Recompiles only when a source changed. Prints the Java classpath to use.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${STREAMJOB_CACHE:-$HOME/.cache/streamjob}
LIB=$("$HERE/install.sh")
OUT=$CACHE/flink-bench
command -v javac >/dev/null || { echo "javac not found: Java 17 (a JDK) is needed" >&2; exit 1; }
CP="$(ls "$LIB"/flink-dist-*.jar):$(ls "$LIB"/log4j-*.jar | tr '\n' ':')"
CP=${CP%:}
STAMP=$( (find "$HERE/src" -name '*.java' -print0 | sort -z | xargs -0 sha256sum; echo "$LIB") | sha256sum | cut -c1-16)
if [ "$(cat "$OUT/stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "compiling the Flink benchmark job into $OUT/classes" >&2
  rm -rf "$OUT/classes"
  mkdir -p "$OUT/classes"
  find "$HERE/src" -name '*.java' > "$OUT/sources.txt"
  javac -nowarn -Xlint:-options --release 17 -encoding UTF-8 -cp "$CP" -d "$OUT/classes" @"$OUT/sources.txt" >&2
  echo "$STAMP" > "$OUT/stamp"
fi
echo "$OUT/classes:$CP"
