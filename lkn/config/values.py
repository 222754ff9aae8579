"""Value checks for the Lua config: each takes a key path and a value and returns the value
converted, or raises ConfigError naming the path and the bad value
(``models[2].ctx_size: must be a positive integer, got "big"``)."""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from lkn.errors import ConfigError

# While a whole file is checked, errors of single values are collected here (the value falls
# back to its default and the check goes on), so that one run reports every error at once.
_COLLECTED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "lkn_config_errors", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[str]]:
    errors: list[str] = []
    token = _COLLECTED.set(errors)
    try:
        yield errors
    finally:
        _COLLECTED.reset(token)


def report(exc: ConfigError) -> None:
    """Collect ``exc`` when a whole file is being checked, else raise it."""
    errors = _COLLECTED.get()
    if errors is None:
        raise exc
    errors.append(str(exc))


def show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


class Table:
    """A Lua table under validation: knows its key path and which keys were read."""

    def __init__(self, path: str, value: Any) -> None:
        if value is None:
            value = {}
        if isinstance(value, list) and not value:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a table, got {show(value)}")
        self.path = path
        self.value = value
        self.seen: set[Any] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.value.get(name)

    def get(self, name: str, check: Callable[[str, Any], Any], default: Any) -> Any:
        """The checked value, or ``default`` when absent (or invalid, with the error
        collected: see ``collecting``)."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            return check(self.key(name), value)
        except ConfigError as exc:
            report(exc)
            return default

    def required(self, name: str, check: Callable[[str, Any], Any], default: Any,
                 what: str) -> Any:
        """Like ``get``, but a value that is absent (with no default) or invalid raises: the
        table it belongs to cannot be built without it."""
        value = self.raw(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.key(name)}: must be {what}, got nil")
            return default
        return check(self.key(name), value)

    def finish(self) -> None:
        for k in self.value:
            if k not in self.seen:
                report(ConfigError(f"{self.key(str(k))}: unknown key"))


def integer(minimum: int) -> Callable[[str, Any], int]:
    def check(path: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ConfigError(f"{path}: must be {what}, got {show(value)}")
        return int(value)
    return check


def number(minimum: float, maximum: float | None = None) -> Callable[[str, Any], float]:
    def check(path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (
                maximum is not None and value > maximum):
            rng = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{path}: must be a number {rng}, got {show(value)}")
        return float(value)
    return check


def string(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: must be a non-empty string, got {show(value)}")
    return value


def boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, got {show(value)}")
    return value


def choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(path: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(f"{path}: must be one of {', '.join(options)}, got {show(value)}")
        return value
    return check


def strings(path: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, dict) and not value:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list of strings, got {show(value)}")
    out = []
    for i, item in enumerate(value, 1):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)  # engine args such as { "--threads", 2 } are natural in Lua
        out.append(string(f"{path}[{i}]", item))
    return tuple(out)


def secrets(path: str, value: Any) -> tuple[str, ...]:
    """A list of keys: an error never quotes a value (it lands in logs and in /status)."""
    if isinstance(value, dict) and not value:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list of strings, got a {type(value).__name__} "
                          f"(value not shown)")
    for i, item in enumerate(value, 1):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{path}[{i}]: must be a non-empty string (value not shown)")
    return tuple(value)


def origins(path: str, value: Any) -> tuple[str, ...]:
    """Browser origins for CORS: ``"*"`` or ``scheme://host[:port]``."""
    out = strings(path, value)
    for i, origin in enumerate(out, 1):
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and (not sep or scheme not in ("http", "https") or not rest
                              or "/" in rest):
            raise ConfigError(f"{path}[{i}]: must be \"*\" or an origin like "
                              f"\"https://app.example:8443\" (no path), got {show(origin)}")
    return out


def env_table(path: str, value: Any) -> tuple[tuple[str, str], ...]:
    table = Table(path, value)
    out = []
    for k in list(table.value):
        v = table.raw(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        out.append((str(k), string(table.key(str(k)), v)))
    return tuple(sorted(out))


def listen_list(path: str, value: Any) -> tuple[str, ...]:
    addresses = (value,) if isinstance(value, str) else strings(path, value)
    if not addresses:
        raise ConfigError(f"{path}: must list at least one HOST:PORT, got {{}}")
    for i, address in enumerate(addresses, 1):
        try:
            parse_listen(address)
        except ValueError as exc:
            raise ConfigError(f"{path}[{i}]: {exc}, got {show(address)}") from None
    return addresses


def parse_listen(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` / ``"localhost:8080"`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError("must be HOST:PORT with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError("an IPv6 address must be written in brackets, like [::1]:8080")
    return host, int(port)


def port_range(path: str, value: Any) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{path}: must be {{FIRST, LAST}}, got {show(value)}")
    first = integer(1)(f"{path}[1]", value[0])
    last = integer(1)(f"{path}[2]", value[1])
    if not first <= last <= 65535:
        raise ConfigError(f"{path}: must satisfy FIRST <= LAST <= 65535, got {{{first}, {last}}}")
    return first, last


def resolve_model_file(value: str) -> str:
    """``pkg:PACKAGE/FILE`` names a file shipped inside an installed package (found without
    importing it); anything else is a filesystem path."""
    if not value.startswith("pkg:"):
        return os.path.expanduser(value)
    package, _, rel = value[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], rel)


def model_file(path: str, value: Any) -> str:
    text = string(path, value)
    try:
        return resolve_model_file(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}, got {show(text)}") from None


def gpu_layers(path: str, value: Any) -> int:
    if value == "all":
        return 999
    return integer(0)(path, value)


# SGLang refuses to start with a --context-length above the model's own maximum unless this
# environment variable is true (srt/configs/model_config.py ``_derive_context_length``; the
# accepted spellings are srt/environ.py ``EnvBool``'s).
ALLOW_LONGER_CONTEXT = "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"
_TRUE = ("true", "1", "yes", "y")
# srt/utils/hf_transformers/common.py CONTEXT_LENGTH_KEYS, in SGLang's order of preference
_CONTEXT_KEYS = ("max_sequence_length", "seq_length", "max_seq_len", "model_max_length",
                 "max_position_embeddings")


def hf_context_limit(model_dir: str) -> int | None:
    """The longest context SGLang derives from a Hugging Face model directory's config.json
    (srt/utils/hf_transformers/common.py ``get_context_length``: the first of its keys in the
    text config, times the rope scaling factor, else 2048). None when there is no readable
    config.json (a hub id, say): SGLang then decides on its own."""
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text = config.get("text_config")
    config = text if isinstance(text, dict) else config
    rope = config.get("rope_scaling")
    factor = 1.0
    if isinstance(rope, dict) and rope:
        factor = rope.get("factor", 1)
        if "original_max_position_embeddings" in rope or rope.get("rope_type") == "llama3":
            factor = 1
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(factor * value)
    return 2048


def allows_longer_context(env: tuple[tuple[str, str], ...]) -> bool:
    """The model's ``env`` (else lkn's own environment, which the engine inherits) opts in."""
    value = dict(env).get(ALLOW_LONGER_CONTEXT, os.environ.get(ALLOW_LONGER_CONTEXT, ""))
    return value.lower() in _TRUE


# Who separates thinking from the answer (see lkn.relay.thinking): the engine, lkn, or nobody.
REASONING_MODES = ("engine", "lkn", "none")
TOOL_CALL_MODES = ("auto", "engine", "lkn")


def reasoning_mode(t: Table, engine: str) -> tuple[str, str | None]:
    """The default lets whoever can split do it: llama-server always can (its reasoning format
    is chosen by the chat template), SGLang only with a named ``reasoning_parser``."""
    parser = t.get("reasoning_parser", string, None)
    if parser is not None and engine != "sglang":
        raise ConfigError(f"{t.key('reasoning_parser')}: only SGLang takes a reasoning parser "
                          f"(llama-server picks its own from the chat template)")
    default = "lkn" if engine == "sglang" and parser is None else "engine"
    mode = t.get("reasoning", choice(REASONING_MODES), default)
    if mode == "engine" and engine == "sglang" and parser is None:
        raise ConfigError(f"{t.key('reasoning')}: SGLang separates thinking only with a "
                          f"reasoning_parser (e.g. \"qwen3\", \"deepseek-r1\", \"gpt-oss\"); "
                          f"set one, or use reasoning = \"lkn\"")
    return mode, parser
