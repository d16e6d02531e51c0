#!/usr/bin/env bash
# Installs the s3s-fs S3-protocol server used by the checkpoint crate's S3 integration tests.
# Idempotent: does nothing when the pinned binary is already in the cache. Prints the binary path.
# Pinned to 0.14.1 because newer releases need a newer Rust than the project's toolchain.
set -euo pipefail

VERSION="0.14.1"
STREAMJOB_CACHE="${STREAMJOB_CACHE:-$HOME/.cache/streamjob}"
ROOT="$STREAMJOB_CACHE/s3s-fs-$VERSION"
BIN="$ROOT/bin/s3s-fs"

if [[ ! -x "$BIN" ]]; then
    mkdir -p "$ROOT"
    echo "installing s3s-fs $VERSION into $ROOT (takes several minutes)" >&2
    if ! cargo install "s3s-fs@$VERSION" --features binary --locked --root "$ROOT"; then
        echo "cargo install --locked failed; retrying without --locked" >&2
        cargo install "s3s-fs@$VERSION" --features binary --root "$ROOT"
    fi
fi

if [[ ! -x "$BIN" ]]; then
    echo "s3s-fs was not installed at $BIN; see the cargo output above" >&2
    exit 1
fi
echo "$BIN"
