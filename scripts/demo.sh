#!/usr/bin/env bash
# The main job on this machine: throwaway PostgreSQL and MariaDB servers with some load
# (or the local ones with --use-local), the worker collecting them, and an independent
# OTLP receiver (the OpenTelemetry project's Python protobuf bindings) showing what
# arrived. Options: --seconds N (default 25), --use-local.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

venv="${XDG_CACHE_HOME:-$HOME/.cache}/dbcollector/venv"
if ! "$venv/bin/python" -c 'import opentelemetry.proto' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet opentelemetry-proto
fi

cargo build --quiet -p dbcollector-worker -p dbcollector-tests \
  --bin dbcollector-worker --bin dbcollector-demo
target="${CARGO_TARGET_DIR:-target}"
exec "$target/debug/dbcollector-demo" --worker "$target/debug/dbcollector-worker" \
  --python "$venv/bin/python" --receiver scripts/otlp_receiver.py "$@"
