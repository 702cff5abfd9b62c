#!/usr/bin/env bash
# The whole test suite: unit tests and real-server tests. The tests start their own
# throwaway PostgreSQL and MariaDB servers from the installed binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets "$@"
