#!/usr/bin/env bash
# Set up (first run only), check lkn's layers (import-linter) and types (mypy), then run the
# whole test suite, real llama-server tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-test
.venv/bin/lint-imports --no-cache
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
