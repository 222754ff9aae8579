"""Which API's error shape a path speaks: lkn's own errors (a bad key, a full queue, an unknown
route, a refused body) reach every client in the shape its SDK parses. OpenAI's (and the
Responses API's, the same envelope) is the default."""
from __future__ import annotations

from typing import Any, Callable

from lkn.request.inbound import anthropic, ollama_stream

ErrorShape = Callable[[int, dict[str, Any]], dict[str, Any]]


def error_shape(path: str) -> ErrorShape | None:
    """How an OpenAI-shaped error body is reshaped on ``path``; None: it is not."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic.error_body
    if path.startswith("/api/"):
        return lambda status, body: ollama_stream.error_body(body)
    return None
