#!/usr/bin/env bash
# Set up (first run only) and run lkn's whole test suite, real llama-server tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-test
exec .venv/bin/python -m pytest "$@"
