"""A model's chat template and its BOS/EOS texts, read from its files without loading a
tokenizer: the GGUF header (two token strings out of the vocabulary), or a Hugging Face
directory's ``tokenizer_config.json``. The prompt bound needs only these; llama-cpp-python (and
numpy with it, ~40 MB) stays out of lkn until a request must be counted locally."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from lkn.engines.gguf import read_array_items, read_metadata


@dataclass(frozen=True)
class TemplateInfo:
    template: str | None
    bos: str
    eos: str


def read_template_info(path: str, kind: str) -> TemplateInfo:
    """Raises OSError / ValueError (``GGUFError`` included) when the files cannot be read."""
    if kind == "gguf":
        return _from_gguf(path)
    with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    return TemplateInfo(cfg.get("chat_template"), _token_str(cfg.get("bos_token")),
                        _token_str(cfg.get("eos_token")))


def _from_gguf(path: str) -> TemplateInfo:
    meta = read_metadata(path)
    ids = {name: meta.get(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos")}
    wanted = {i for i in ids.values() if isinstance(i, int) and i >= 0}
    texts = read_array_items(path, "tokenizer.ggml.tokens", wanted) if wanted else {}
    template = meta.get("tokenizer.chat_template")
    def text(token_id: Any) -> str:  # "" for a missing or invalid id
        return str(texts.get(token_id, "")) if isinstance(token_id, int) else ""
    return TemplateInfo(template if isinstance(template, str) else None,
                        text(ids["bos"]), text(ids["eos"]))


def _token_str(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")
