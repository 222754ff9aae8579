"""Read the key/value metadata of a GGUF file (header only, no tensor data).

Format (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 KV count,
then KV pairs ``(string key, u32 type, value)``. Strings are ``u64 length + UTF-8``; arrays are
``u32 item type, u64 count, items``. Large arrays (the tokenizer's vocabulary) are skipped unless
asked for, so reading the header of a model file takes milliseconds.
"""
from __future__ import annotations

import struct
from typing import IO, Any

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(Exception):
    pass


def _read(f: IO[bytes], fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _read_string(f: IO[bytes]) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("truncated GGUF string")
    return data.decode("utf-8", "replace")


def _skip_string(f: IO[bytes]) -> None:
    f.seek(_read(f, "<Q"), 1)


def _read_value(f: IO[bytes], kind: int, keep_arrays: bool) -> Any:
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _read_string(f)
    if kind == _ARRAY:
        item_kind = _read(f, "<I")
        count = _read(f, "<Q")
        if keep_arrays:
            return [_read_value(f, item_kind, True) for _ in range(count)]
        if item_kind in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item_kind]) * count, 1)
        elif item_kind == _STRING:
            for _ in range(count):
                _skip_string(f)
        else:
            for _ in range(count):
                _read_value(f, item_kind, False)
        return None
    raise GGUFError(f"unknown GGUF value type {kind}")


def read_metadata(path: str, *, keep_arrays: bool = False) -> dict[str, Any]:
    """The GGUF key/value pairs; arrays are None unless ``keep_arrays``."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is not supported")
        _read(f, "<Q")  # tensor count
        kv_count = _read(f, "<Q")
        meta: dict[str, Any] = {}
        for _ in range(kv_count):
            key = _read_string(f)
            kind = _read(f, "<I")
            meta[key] = _read_value(f, kind, keep_arrays)
        return meta


def read_array_items(path: str, key: str, indices: set[int]) -> dict[int, Any]:
    """Only the items at ``indices`` of the array ``key`` (e.g. two token strings out of a
    vocabulary of 150k), without keeping the rest in memory."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file")
        _read(f, "<I")
        _read(f, "<Q")
        for _ in range(_read(f, "<Q")):
            name = _read_string(f)
            kind = _read(f, "<I")
            if name != key or kind != _ARRAY:
                _read_value(f, kind, False)
                continue
            item_kind, count = _read(f, "<I"), _read(f, "<Q")
            found: dict[int, Any] = {}
            for i in range(count):
                if i in indices:
                    found[i] = _read_value(f, item_kind, True)
                    if len(found) == len(indices):
                        break
                elif item_kind == _STRING:
                    _skip_string(f)
                else:
                    _read_value(f, item_kind, False)
            return found
    raise GGUFError(f"{path}: no array {key}")
