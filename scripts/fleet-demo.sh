#!/usr/bin/env bash
# The whole system on this machine: throwaway PostgreSQL and MariaDB servers with some
# load, a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager v1.20)
# with the CRD and the operator's RBAC installed from the repository, the operator binary
# acting with its own ServiceAccount, and a worker process per worker pod. A collector of
# 22 targets is applied and scaled 3 -> 5 -> 2; after each step the demo prints
# `kubectl get dbc`, the shard assignment and what the OTLP receiver got from which
# worker (gaps and double collection per target). Everything stops and is removed at
# the end.
#
# Usage: scripts/fleet-demo.sh [--interval SECONDS] [--hold INTERVALS]
#   --interval  collection interval of the targets (default 2)
#   --hold      intervals watched after each step settled (default 5)
# On a fresh Debian bookworm machine, run it as root the first time: it installs what it
# needs (scripts/setup.sh, which also runs scripts/kube-test-assets.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
assets=$(scripts/kube-test-assets.sh | tail -n 1)

cargo build --quiet -p dbcollector-operator -p dbcollector-worker -p dbcollector-tests \
  --bin dbcollector-operator --bin dbcollector-worker --bin dbcollector-fleet-demo
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug"
DBCOLLECTOR_KUBE_ASSETS="$assets" \
  DBCOLLECTOR_OPERATOR_BIN="$target/dbcollector-operator" \
  DBCOLLECTOR_WORKER_BIN="$target/dbcollector-worker" \
  exec "$target/dbcollector-fleet-demo" "$@"
