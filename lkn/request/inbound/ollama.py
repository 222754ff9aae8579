"""Ollama's native API at lkn's edge: ``/api/chat``, ``/api/generate``, ``/api/embed`` and the
legacy ``/api/embeddings``, each as the canonical OpenAI request (the answers go back through
``ollama_stream``). Where Ollama and lkn differ:

- ``stream`` defaults to true in Ollama: the canonical request streams unless it is false.
- ``options`` (``map_options``), ``think`` (``map_think``), ``format`` (``map_format``),
  ``keep_alive`` (``parse_keep_alive``), images (``image_url``) and the history's tool calls
  (``map_messages``) are mapped as their functions say. ``keep_alive`` and ``num_ctx`` are not
  sent: they are kept as ``self.keep_alive_s`` and ``self.min_ctx`` (``num_ctx``) for lkn.
- An empty ``/api/generate`` prompt, or empty ``/api/chat`` messages, is Ollama's "load the
  model" call (answered ``done_reason: load``, or ``unload`` with ``keep_alive`` 0):
  ``self.load_only`` is set and the canonical body is a valid one-token, unstreamed request.
- ``/api/generate``: ``raw`` -> canonical *completions* with the prompt as it is (``system``,
  ``think`` and the template do not apply; images are a 400), so ``route`` is only final
  after ``canonical``; otherwise canonical chat (``system`` + a user message). ``suffix`` and
  ``template`` are 400s (lkn serves neither fill-in-the-middle nor per-request templates);
  the deprecated ``context`` is ignored.
- Not carried: ``logprobs``/``top_logprobs`` and ``truncate``/``shift`` on chat and generate.
"""
from __future__ import annotations

import time
from typing import Any

from lkn.errors import BadRequest
from lkn.request.inbound.base import Inbound, StreamTranscoder
from lkn.request.inbound.ollama_fields import (as_int, map_format, map_messages, map_options,
                                               map_think, parse_keep_alive, user_content)
from lkn.request.inbound.ollama_stream import (Clock, OllamaStream, embed_answer, embeddings,
                                               error_body, load_answer, whole_answer)


class _Ollama(Inbound):
    """What every Ollama route shares: the model's name as the client wrote it, ``keep_alive``,
    ``options`` (``num_ctx``), the start time for the durations, errors as ``{"error": ...}``."""
    api = "ollama"
    stream_content_type = "application/x-ndjson"

    def __init__(self, route: str, *, clock: Clock = time.monotonic_ns) -> None:
        super().__init__(route)
        self._clock = clock
        self.started_ns = clock()
        self.model = ""
        self.load_only = False  # Ollama's "load the model" call (an empty prompt)
        self.stream = False

    def _common(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model is required" if model is None else
                             f"'model' must be a non-empty string, got {model!r}",
                             param="model")
        self.model = model
        self.keep_alive_s = parse_keep_alive(body.get("keep_alive"))
        sampling, self.min_ctx = map_options(body.get("options"))
        # Ollama's clients add the default tag; lkn's names have none (an alias may, though)
        return {"model": model.removesuffix(":latest"), **sampling}

    def _streaming(self, body: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise BadRequest(f"'stream' must be a boolean, got {stream!r}", param="stream")
        self.stream = stream is not False and not self.load_only
        out["stream"] = self.stream
        if self.stream:
            out["stream_options"] = {"include_usage": True}
        if self.load_only:
            out["max_tokens"] = 1
        return out

    def _elapsed(self) -> int:
        return self._clock() - self.started_ns

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return error_body(body)


class _Generation(_Ollama):
    flavour = "chat"

    def answer(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.load_only:
            return load_answer(model=self.model, flavour=self.flavour,
                               reason="unload" if self.keep_alive_s == 0 else "load")
        return whole_answer(obj, model=self.model, flavour=self.flavour,
                            total_ns=self._elapsed())

    def transcoder(self) -> StreamTranscoder:
        return OllamaStream(model=self.model, flavour=self.flavour, started_ns=self.started_ns,
                            clock=self._clock)


def _sampling_extras(body: dict[str, Any]) -> dict[str, Any]:
    out = map_think(body.get("think"))
    fmt = map_format(body.get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    return out


class OllamaChat(_Generation):
    """``POST /api/chat``."""

    def __init__(self, *, clock: Clock = time.monotonic_ns) -> None:
        super().__init__("chat", clock=clock)

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        out = self._common(body)
        messages = body.get("messages")
        messages = [] if messages is None else messages
        out["messages"] = map_messages(messages)
        self.load_only = not out["messages"]
        if self.load_only:
            out["messages"] = [{"role": "user", "content": ""}]
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                raise BadRequest("'tools' must be an array of objects", param="tools")
            if tools:
                out["tools"] = tools
        out.update(_sampling_extras(body))
        return self._streaming(body, out)


class OllamaGenerate(_Generation):
    """``POST /api/generate``: canonical chat, or canonical completions when ``raw``."""
    flavour = "generate"

    def __init__(self, *, clock: Clock = time.monotonic_ns) -> None:
        super().__init__("chat", clock=clock)

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("prompt", "system", "suffix", "template"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise BadRequest(f"'{name}' must be a string", param=name)
        if body.get("suffix"):
            raise BadRequest("'suffix' (fill in the middle) is not supported by lkn's "
                             "/api/generate; send the text before the gap as a raw prompt",
                             param="suffix")
        if body.get("template"):
            raise BadRequest("'template' is not supported: lkn applies the model's own chat "
                             "template (or send a raw prompt with \"raw\": true)",
                             param="template")
        raw = body.get("raw")
        if raw is not None and not isinstance(raw, bool):
            raise BadRequest(f"'raw' must be a boolean, got {raw!r}", param="raw")
        out = self._common(body)
        prompt = body.get("prompt") or ""
        self.load_only = not prompt
        if raw and not self.load_only:
            if body.get("images"):
                raise BadRequest("'images' cannot be sent with a raw prompt", param="images")
            self.route = "completions"
            out["prompt"] = prompt
            fmt = map_format(body.get("format"))
            if fmt is not None:
                out["response_format"] = fmt
            return self._streaming(body, out)
        messages: list[dict[str, Any]] = []
        if body.get("system"):
            messages.append({"role": "system", "content": body["system"]})
        messages.append({"role": "user", "content": user_content(prompt, body.get("images"),
                                                                  "images")})
        out["messages"] = messages
        out.update(_sampling_extras(body))
        return self._streaming(body, out)


class OllamaEmbed(_Ollama):
    """``POST /api/embed``: ``input`` (a string or strings) -> ``{embeddings: [[...]]}``."""

    def __init__(self, *, clock: Clock = time.monotonic_ns) -> None:
        super().__init__("embeddings", clock=clock)
        self.truncate = True  # Ollama's default; the engine's own limit applies either way

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        out = self._common(body)
        out = {"model": out["model"], "encoding_format": "float"}  # no sampling for embeddings
        value = body.get("input")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value) or \
                not isinstance(value, (str, list)):
            raise BadRequest("'input' must be a string or an array of strings", param="input")
        truncate = body.get("truncate")
        if truncate is not None and not isinstance(truncate, bool):
            raise BadRequest(f"'truncate' must be a boolean, got {truncate!r}", param="truncate")
        self.truncate = truncate is not False
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if as_int(dimensions) is None or dimensions < 1:
                raise BadRequest(f"'dimensions' must be a positive integer, got {dimensions!r}",
                                 param="dimensions")
            out["dimensions"] = int(dimensions)
        self.load_only = value in ("", [])
        out["input"] = value if value != [] else ""
        return out

    def answer(self, obj: dict[str, Any]) -> dict[str, Any]:
        return embed_answer(obj, model=self.model, total_ns=self._elapsed(),
                            load_only=self.load_only)


class OllamaLegacyEmbedding(OllamaEmbed):
    """``POST /api/embeddings`` (deprecated by Ollama): ``{prompt}`` -> ``{embedding: [...]}``.
    Ollama leaves these vectors unnormalised; the engine's (normalised) vector is sent."""

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string", param="prompt")
        return super().canonical({k: v for k, v in body.items()
                                  if k not in ("input", "truncate", "dimensions")}
                                 | {"input": prompt})

    def answer(self, obj: dict[str, Any]) -> dict[str, Any]:
        vectors = [] if self.load_only else embeddings(obj)
        return {"embedding": vectors[0] if vectors else []}
