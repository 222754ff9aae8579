#!/usr/bin/env bash
# Set up (first run only) and serve SmolLM2 with example.cfg.lua on http://127.0.0.1:8080/v1.
# Try it:  .venv/bin/python scripts/demo_client.py     Stop it: Ctrl-C (engines stop with lkn).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/lkn serve --config example.cfg.lua "$@"
