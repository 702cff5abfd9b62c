#!/usr/bin/env bash
# The load bench (benches/src/load): the release worker against throwaway PostgreSQL and
# MariaDB servers with a large estate, side by side with Debian's Prometheus exporters.
# About 13 minutes with the defaults; the report is printed and written to
# target/load-bench/results.md. Options go to the bench, e.g. a long memory run:
#   scripts/load-bench.sh --phases churn --churn 30m
# (`--help` lists them all). Run as root on Debian, like scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the bench needs besides cargo: the servers (as scripts/setup.sh installs them for
# the tests) and the two exporters. Only what is missing is installed.
missing=()
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
    ! compgen -G '/usr/lib/postgresql/*/lib/pg_stat_statements.so' >/dev/null; then
    missing+=(postgresql postgresql-contrib)
fi
if ! test -x /usr/sbin/mariadbd || ! command -v mariadb-install-db >/dev/null; then
    missing+=(mariadb-server)
fi
command -v prometheus-postgres-exporter >/dev/null || missing+=(prometheus-postgres-exporter)
command -v prometheus-mysqld-exporter >/dev/null || missing+=(prometheus-mysqld-exporter)
if ((${#missing[@]} > 0)); then
    if ((EUID != 0)); then
        echo "load-bench.sh: missing packages: ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    echo "load-bench.sh: installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting their services.
    policy=/usr/sbin/policy-rc.d
    if ! test -e "$policy"; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --release -p dbcollector-worker --bin dbcollector-worker
# Not exec'd: the EXIT trap above must still remove a policy file it created.
cargo run --release -p dbcollector-benches --bin load -- "$@"
