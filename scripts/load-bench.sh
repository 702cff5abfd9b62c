#!/usr/bin/env bash
# The load bench (benches/src/load): the release worker against throwaway PostgreSQL and
# MariaDB servers with a large estate, side by side with Debian's Prometheus exporters.
# About 10 minutes with the defaults; the report is printed and written to
# target/load-bench/results.md. Options go to the bench, e.g. a long memory run:
#   scripts/load-bench.sh --phases churn --churn 30m
# (`--help` lists them all). Run as root on Debian, like scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the bench needs besides cargo: the servers (as for the tests) and the two
# exporters. Only what is missing is installed.
scripts/setup.sh prometheus-postgres-exporter prometheus-mysqld-exporter

cargo build --release -p dbcollector-worker --bin dbcollector-worker
cargo run --release -p dbcollector-benches --bin load -- "$@"
