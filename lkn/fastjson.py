"""JSON on the hot path: orjson, with the standard library as the fallback for what orjson
refuses and ``json`` accepts (NaN, integers beyond 64 bits, lone surrogates), so lkn accepts and
sends exactly what it did before, only faster."""
from __future__ import annotations

import json
from typing import Any

import orjson


def loads(raw: bytes | str) -> Any:
    """Like ``json.loads``; raises ``ValueError`` (``json``'s own error) on invalid JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON bytes (non-ASCII characters as they are, not escaped)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (an engine's broken text): keep it escaped
        return json.dumps(obj, separators=(",", ":")).encode("ascii")
