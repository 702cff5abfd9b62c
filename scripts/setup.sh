#!/usr/bin/env bash
# Installs what the test suite needs on Debian bookworm, as root: PostgreSQL (with
# pg_stat_statements), MariaDB and python3; checks for cargo. Idempotent, and quick when
# everything is there: apt is only used for what is missing. The system database services
# are not started: the tests start throwaway servers of their own.
#
# Usage: scripts/setup.sh [PACKAGE...]   extra Debian packages installed the same way
# when missing (scripts/load-bench.sh passes the Prometheus exporters).
set -euo pipefail

missing=()
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
        missing+=("$package")
done

# PostgreSQL: the server binaries and the pg_stat_statements module (in postgresql-15 on
# bookworm; postgresql-contrib is the metapackage that guarantees it elsewhere).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
    ! compgen -G '/usr/lib/postgresql/*/lib/pg_stat_statements.so' >/dev/null; then
    missing+=(postgresql postgresql-contrib)
fi

if ! test -x /usr/sbin/mariadbd || ! command -v mariadb-install-db >/dev/null; then
    missing+=(mariadb-server)
fi

# The demo's independent OTLP receiver runs in a Python virtual environment.
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3 python3-venv)
fi

if ((${#missing[@]} > 0)); then
    if ((EUID != 0)); then
        echo "setup.sh: missing packages: ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    echo "setup.sh: installing ${missing[*]}"

    # Keep the packages' maintainer scripts from starting the services, unless a policy
    # is already in place.
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

# The harness runs the servers as these accounts when the tests run as root.
for user in postgres mysql; do
    if ! id "$user" >/dev/null 2>&1; then
        echo "setup.sh: system user $user is missing; reinstall its server package" >&2
        exit 1
    fi
done

if ! command -v cargo >/dev/null; then
    echo "setup.sh: cargo not found; install Rust >= 1.85 (https://rustup.rs)" >&2
    exit 1
fi

# The Kubernetes control plane of the operator tests (etcd, kube-apiserver,
# kube-controller-manager): unpacked from ../shared when present, else rebuilt.
"$(dirname "$0")/kube-test-assets.sh" >/dev/null

echo "setup.sh: ready ($(cargo --version))"
