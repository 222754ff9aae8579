"""Counting a request's prompt tokens: through the live engine, else locally, else an estimate.

1. **Live**: a ready engine of the model counts exactly what it will see (llama-server:
   ``/apply-template`` + ``/tokenize``; SGLang: ``/tokenize`` with ``messages``).
2. **Local**: the model's own tokenizer and chat template, loaded without the weights:
   llama-cpp-python ``vocab_only=True`` for a GGUF file; the ``tokenizers`` files of a Hugging
   Face directory for SGLang. Loaded once per file, run in a worker thread.
3. **Estimate**, only when neither is possible: UTF-8 bytes / 2, plus 16 tokens per message and
   64 for the template (chat templates add role markers and often a default system prompt).
   Real tokenizers average 3-4 bytes per token on English, so this over-counts on purpose: a
   too-large count picks a larger context, a too-small one would cut the answer.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import io
import json
import logging
import os
import threading
from datetime import datetime
from typing import Any, Awaitable, Callable

from lkn.config import ModelConfig

log = logging.getLogger("lkn.engines.tokens")
_LOAD_LOCK = threading.Lock()


def _render_template(template: str, messages: list[Any], *, bos: str, eos: str,
                     extra: dict[str, Any]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, indent=indent,
                                                                   ensure_ascii=False)
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=True, **extra)


class GGUFTokenizer:
    """A GGUF file's tokenizer and chat template via llama-cpp-python (vocab only, ~0.1 s)."""

    def __init__(self, path: str) -> None:
        import llama_cpp
        from llama_cpp._logger import set_verbose

        # verbose=False would make llama-cpp-python point the process's fds 1 and 2 at
        # /dev/null while it loads: lkn's own log lines from other threads would vanish, and
        # two loads at once can leave them there for good. Instead its log goes through Python
        # (verbose=True) into a buffer, one load at a time (the redirect is process-wide).
        with _LOAD_LOCK, contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            self._llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=True)
            set_verbose(False)
        self._lock = threading.Lock()  # one llama context is not safe across threads
        meta = self._llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        self.bos = self._token_text(self._llm.token_bos())
        self.eos = self._token_text(self._llm.token_eos())

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    def count_text(self, text: str) -> int:
        with self._lock:
            return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def count_chat(self, body: dict[str, Any]) -> int:
        if not self.template:
            raise ValueError("the GGUF file has no chat template")
        extra = {k: body[k] for k in ("tools",) if k in body}
        extra.update(body.get("chat_template_kwargs") or {})
        return self.count_text(_render_template(self.template, body["messages"], bos=self.bos,
                                                eos=self.eos, extra=extra))


class HFTokenizer:
    """A Hugging Face model directory's ``tokenizer.json`` + ``tokenizer_config.json``."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        cfg_path = os.path.join(path, "tokenizer_config.json")
        cfg: dict[str, Any] = {}
        if os.path.exists(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
        self.template = cfg.get("chat_template")
        self.bos = _token_str(cfg.get("bos_token"))
        self.eos = _token_str(cfg.get("eos_token"))

    def count_text(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=True).ids)

    def count_chat(self, body: dict[str, Any]) -> int:
        if not self.template:
            raise ValueError("tokenizer_config.json has no chat_template")
        extra = dict(body.get("chat_template_kwargs") or {})
        text = _render_template(self.template, body["messages"], bos=self.bos, eos=self.eos,
                                extra=extra)
        # The template already wrote the special tokens; SGLang encodes it without adding more.
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def _token_str(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")


@functools.lru_cache(maxsize=16)
def local_tokenizer(path: str, kind: str) -> GGUFTokenizer | HFTokenizer:
    return GGUFTokenizer(path) if kind == "gguf" else HFTokenizer(path)


# Freed while the interpreter is still whole: llama-cpp-python's finalizer fails at shutdown.
atexit.register(local_tokenizer.cache_clear)


def local_source(model: ModelConfig) -> tuple[str, str]:
    """Where a model's tokenizer is read from without its engine: (path, "gguf" | "hf")."""
    path = model.tokenizer_path or model.variants[0].model_file
    if not model.engine_tokenizes:  # whatever tokenizer the operator pointed at
        return path, "gguf" if path.endswith(".gguf") else "hf"
    return path, "hf" if model.engine == "sglang" else "gguf"


def estimate_tokens(route: str, body: dict[str, Any]) -> int:
    if route == "chat":
        messages = body.get("messages") or []
        text = json.dumps([m.get("content") for m in messages if isinstance(m, dict)],
                          ensure_ascii=False)
        return len(text.encode("utf-8")) // 2 + 16 * len(messages) + 64
    prompt = body.get("prompt", body.get("input", ""))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return len(json.dumps(prompt, ensure_ascii=False).encode("utf-8")) // 2 + 8


def count_locally(path: str, kind: str, route: str, body: dict[str, Any]) -> int:
    """Blocking: call from a worker thread."""
    tok = local_tokenizer(path, kind)
    if route == "chat":
        return tok.count_chat(body)
    prompt = body.get("prompt", body.get("input", ""))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list):
        return max((tok.count_text(p) for p in prompt if isinstance(p, str)), default=0)
    return tok.count_text(str(prompt))


def generation_prompt(path: str, kind: str, kwargs: dict[str, Any]) -> str:
    """What the local chat template writes for a one-message conversation (blocking)."""
    tok = local_tokenizer(path, kind)
    if not tok.template:
        raise ValueError(f"{path} has no chat template")
    return _render_template(tok.template, [{"role": "user", "content": "Hi"}], bos=tok.bos,
                            eos=tok.eos, extra=kwargs)


LiveCounter = Callable[[], Awaitable[int]]


async def count_prompt(*, route: str, body: dict[str, Any], live: LiveCounter | None,
                       local_path: str | None, local_kind: str) -> tuple[int, str]:
    """(prompt tokens, method) where method is ``engine``, ``local`` or ``estimate``."""
    if live is not None:
        try:
            return await live(), "engine"
        except Exception as exc:  # the engine may be stopping; counting must not fail the request
            log.info("live token count failed (%s); counting locally", exc)
    if local_path and os.path.exists(local_path):
        try:
            return await asyncio.to_thread(count_locally, local_path, local_kind, route,
                                           body), "local"
        except Exception as exc:
            log.warning("local token count with %s failed (%s); estimating", local_path, exc)
    return estimate_tokens(route, body), "estimate"
