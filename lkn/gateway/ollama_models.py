"""What Ollama's clients read about models: ``/api/tags``, ``/api/ps``, ``/api/show`` and
``/api/version``, from lkn's config and fleet (pure shapes plus a cached GGUF header read).

A model's ``details`` come from its largest variant's GGUF header (architecture, size label,
file type, context and embedding lengths); its ``digest`` is a sha256 of the file's path,
size and modification time (stable while the file is, without reading gigabytes), its
``size`` the file's. A model on another engine (SGLang's Hugging Face directories, remote
upstreams) has what lkn knows: its name and contexts.
"""
from __future__ import annotations

import datetime
import hashlib
import math
import os
import time
from typing import Any

from lkn.config import ModelConfig
from lkn.engines.gguf import GGUFError, read_metadata
from lkn.fleet.idle import idle_limit
from lkn.gateway.keys import GatewayState
from lkn.gateway.read_models import capabilities

# The Ollama API version lkn's routes follow (docs/api.md of ollama 0.13): clients that check
# for a minimum version (tools, thinking) find it.
OLLAMA_VERSION = "0.13.5"

# GGUF general.file_type -> Ollama's quantization_level
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS",
              24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 28: "IQ4_XS", 32: "BF16"}
# Ollama's names for capabilities where lkn's differ
_CAPABILITIES = {"embeddings": "embedding", "rerank": "rerank"}

_headers: dict[tuple[str, float], dict[str, Any]] = {}  # GGUF metadata by (path, mtime)


def rfc3339(epoch: float) -> str:
    """A time as Ollama writes it (RFC 3339, UTC, nanoseconds)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def _file(model: ModelConfig) -> str | None:
    if model.engine != "llamacpp" or not model.variants:
        return None
    path = max(model.variants, key=lambda v: v.ctx_size).model_file
    return path if os.path.isfile(path) else None


def _metadata(path: str) -> dict[str, Any]:
    mtime = os.path.getmtime(path)
    if (path, mtime) not in _headers:
        try:
            _headers[(path, mtime)] = read_metadata(path)
        except (GGUFError, OSError):
            _headers[(path, mtime)] = {}
    return _headers[(path, mtime)]


def tagged(name: str) -> str:
    """A name as Ollama writes it: with its tag (``smol:latest``). Clients look models up by
    it (Open WebUI adds ``:latest`` to a name without a tag before it asks); lkn takes both."""
    return name if ":" in name else f"{name}:latest"


def describe(model: ModelConfig, name: str) -> dict[str, Any]:
    """One model as ``/api/tags`` lists it."""
    path = _file(model)
    meta = _metadata(path) if path else {}
    arch = str(meta.get("general.architecture", model.engine))
    stat = os.stat(path) if path else None
    digest = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest() \
        if path and stat else hashlib.sha256(name.encode()).hexdigest()
    details = {"parent_model": "", "format": "gguf" if path else model.engine, "family": arch,
               "families": [arch], "parameter_size": str(meta.get("general.size_label", "")),
               "quantization_level": FILE_TYPES.get(meta.get("general.file_type", -1), "")}
    return {"name": tagged(name), "model": tagged(name),
            "modified_at": rfc3339(stat.st_mtime if stat else time.time()),
            "size": stat.st_size if stat else 0, "digest": digest, "details": details,
            "capabilities": [_CAPABILITIES.get(c, c) for c in capabilities(model)]}


def tags(state: GatewayState) -> dict[str, Any]:
    return {"models": [describe(m, name) for m in state.cfg.models for name in m.names]}


def running(state: GatewayState) -> dict[str, Any]:
    """``/api/ps``: the models with an engine up, each with when it would unload."""
    out = []
    now = time.monotonic()
    for record in state.manager.records():
        if record.retired or record.process.state.value not in ("ready", "asleep"):
            continue
        limit = idle_limit(record)
        idle_since = max(record.last_used, record.ready_since)
        expires = "2318-01-01T00:00:00Z" if limit is None or math.isinf(limit) else \
            rfc3339(time.time() + max(0.0, idle_since + limit - now))
        entry = describe(record.model, record.model.public)
        out.append({**entry, "expires_at": expires, "size_vram": record.vram_mb * 1024 * 1024,
                    "context_length": record.variant.ctx_size})
    return {"models": out}


def show(model: ModelConfig, name: str) -> dict[str, Any]:
    """``/api/show``: the details, the GGUF header's scalar values as ``model_info``, the
    chat template."""
    entry = describe(model, name)
    path = _file(model)
    meta = _metadata(path) if path else {}
    info = {k: v for k, v in meta.items() if not k.startswith("tokenizer.")}
    info.setdefault("general.architecture", entry["details"]["family"])
    return {"modelfile": "", "parameters": "", "license": "",
            "template": str(meta.get("tokenizer.chat_template", "")),
            "details": entry["details"], "model_info": info,
            "capabilities": entry["capabilities"], "modified_at": entry["modified_at"]}
