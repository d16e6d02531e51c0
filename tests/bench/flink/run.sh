#!/usr/bin/env bash
# Runs the Flink benchmark job (see src/io/streamjob/bench/FlinkBench.java for the options), building
# it first if needed. The JVM replaces this shell (exec), so `/usr/bin/time -f %M run.sh ...` measures
# the JVM's peak RSS. Example:
#   tests/bench/flink/run.sh --query q5 --events 2000000 --parallelism 2 --checkpoint-interval 1000 \
#       --state-backend rocksdb
# JAVA_OPTS adds JVM options (none by default: Flink's JVM runs with the JVM's default heap sizing).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CP=$("$HERE/build.sh")
# The module openings Flink's own launch scripts pass on Java 17 (pyflink/conf/config.yaml, env.java.opts.all).
OPENS=(
  --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)
# shellcheck disable=SC2086
exec java "${OPENS[@]}" -Dlog4j.configurationFile="$HERE/log4j2.properties" ${JAVA_OPTS:-} \
  -cp "$CP" io.streamjob.bench.FlinkBench "$@"
