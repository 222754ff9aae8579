"""Run a Lua config file through python-lua-helper and rebuild its tables as Python values.

python-lua-helper runs the system Lua on the file and exports the named globals flattened
(``models.1.name``) with a type tag per key. This module turns that back into nested dicts and
lists so that ``lkn.config.build`` can validate it with precise key paths.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any

from lkn.errors import ConfigError


def load_lua_tables(path: str, names: list[str]) -> dict[str, Any]:
    """Execute ``path`` and return ``{name: value}`` for each exported global that is set."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        from python_lua_helper import PyLuaHelper
    except ImportError as exc:  # pragma: no cover - install problem, reported plainly
        raise ConfigError(f"python-lua-helper is not installed: {exc}") from exc
    captured = io.StringIO()
    try:
        # The helper prints the Lua interpreter's stdout/stderr; keep it for the error message.
        with contextlib.redirect_stdout(captured):
            helper = PyLuaHelper(lua_config_script=path, export_vars=names)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        raise ConfigError(_lua_failure_message(path, captured.getvalue(), exc)) from None
    return {name: _rebuild(helper, name) for name in names if name in helper}


def _lua_failure_message(path: str, output: str, exc: Exception) -> str:
    # Lua reports "lua5.4: FILE:LINE: message"; keep the part after the interpreter name.
    for line in output.splitlines():
        m = re.search(r"(\S*\.lua:\d+:.*)$", line)
        if m:
            return f"{path}: Lua error: {m.group(1).strip()}"
    detail = output.strip().splitlines()[-1] if output.strip() else str(exc)
    return f"{path}: Lua error: {detail}"


def _scalar(helper: Any, key: str) -> Any:
    kind = helper.get_type(key)
    raw = helper.get(key)
    if kind == "number":
        try:
            return int(raw)
        except ValueError:
            return float(raw)
    if kind == "boolean":
        return raw == "true"
    return raw


def _rebuild(helper: Any, root: str) -> Any:
    if not helper.is_table(root):
        return _scalar(helper, root)
    prefix = root + "."
    children: dict[str, None] = {}
    for key in helper.keys():
        if key.startswith(prefix):
            children.setdefault(key[len(prefix):].split(".", 1)[0], None)
    seq = helper.get_table_seq(root)
    if seq and set(children) == {str(i) for i in seq}:
        return [_rebuild(helper, f"{root}.{i}") for i in seq]
    result: dict[Any, Any] = {}
    for child in children:
        result[int(child) if child.isdigit() else child] = _rebuild(helper, f"{root}.{child}")
    return result
