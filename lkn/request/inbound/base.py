"""The edge between a client's API and lkn's one canonical request.

Inside, every request is an OpenAI request (``chat``, ``completions`` or ``embeddings``): what
the engines speak and what every feature (sizing, the scheduler, the homeostat, reasoning
separation, fallbacks, the cache, metrics) is built on. An ``Inbound`` adapter translates one
client API to it and back:

- ``canonical(body)``: the client's body as the canonical one (a ``BadRequest`` for what that
  API's own server would refuse);
- ``answer(obj)``: the canonical whole answer (a chat or text completion) in the API's shape;
- ``transcoder()``: a ``StreamTranscoder`` that turns the canonical SSE stream, chunk by chunk,
  into the API's stream (named SSE events, NDJSON lines);
- ``error(status, body)``: an OpenAI-shaped error body (lkn's own or the engine's) in the API's
  shape, for whole answers and, through the transcoder, mid-stream.

``Inbound`` itself is the OpenAI API: the identity.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from lkn import fastjson
from lkn.relay.client_write import ClientWriter
from lkn.sse import DONE, SSEParser, frame_json

PING = b": ping\n\n"


class StreamTranscoder:
    """The canonical OpenAI stream in, the client API's stream out. ``feed`` takes the bytes
    lkn would send an OpenAI client (whole events, or parts of them) and returns the bytes to
    send instead; subclasses say what each event becomes (``chunk``, ``error``, ``done``,
    ``comment``) and what an end without ``[DONE]`` adds (``close``)."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.ended = False  # [DONE] or an error went out: nothing more is sent

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._parser.feed(data):
            if self.ended:
                continue
            if event.comment or event.data is None:
                out.append(self.comment())
                continue
            if event.data == DONE:
                self.ended = True
                out.append(self.done())
                continue
            try:
                obj = fastjson.loads(event.data)
            except (ValueError, RecursionError):
                continue  # not JSON (or nested past any answer): nothing the API could carry
            if not isinstance(obj, dict):
                continue
            if "error" in obj and "choices" not in obj:
                self.ended = True
                out.append(self.error(obj))
                continue
            out.append(self.chunk(obj))
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the stream: what is still owed (an event left open, a missing end)."""
        out = self.feed(b"\n\n") if not self.ended else b""
        if not self.ended:
            self.ended = True
            out += self.close()
        return out

    # what each canonical event becomes
    def chunk(self, obj: dict[str, Any]) -> bytes:
        return frame_json(obj)

    def error(self, body: dict[str, Any]) -> bytes:
        return frame_json(body)

    def done(self) -> bytes:
        return b"data: [DONE]\n\n"

    def comment(self) -> bytes:
        return PING

    def close(self) -> bytes:
        """The stream ended without [DONE] and without an error (lkn adds its own error event
        in that case, so this is rare): whatever makes the API's stream well formed."""
        return b""


class TranscodingWriter:
    """A ``ClientWriter`` whose writes go through a transcoder first."""
    __slots__ = ("_writer", "_transcoder", "response")

    def __init__(self, writer: ClientWriter, transcoder: StreamTranscoder) -> None:
        self._writer = writer
        self._transcoder = transcoder
        self.response = writer.response

    async def write(self, data: bytes) -> None:
        out = self._transcoder.feed(data)
        if out:
            await self._writer.write(out)

    async def write_eof(self) -> None:
        out = self._transcoder.finish()
        if out:
            await self._writer.write(out)
        await self._writer.write_eof()


class Inbound:
    """One client API at lkn's edge (see the module's docstring). This one is OpenAI's."""
    api = "openai"
    stream_content_type = "text/event-stream"
    # What some APIs say about residency and context (Ollama's keep_alive and num_ctx): how
    # long the engine that answers may stay idle before it stops (math.inf: never; 0: once
    # idle), and the least context its variant must have.
    keep_alive_s: float | None = None
    min_ctx: int | None = None
    # Whether the canonical max_tokens is what the client needs (a context too small for it
    # is a 400, OpenAI's way) or a ceiling (Anthropic's clients ask 32000 of any model: the
    # context is sized by the prompt, and the answer stops at its end, with max_tokens).
    answer_budget_binding = True
    # The request only asks for its model's residency (Ollama's empty prompt): loaded and kept
    # keep_alive_s, or unloaded when that is 0; ``answer({})`` is the answer.
    load_only = False

    def __init__(self, route: str) -> None:
        self.route = route  # the canonical route: chat, completions or embeddings

    @property
    def identity(self) -> bool:
        return type(self) is Inbound

    @property
    def sse(self) -> bool:
        """The API streams server-sent events (lkn's loading comments may go in them)."""
        return self.stream_content_type == "text/event-stream"

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def answer(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj

    def transcoder(self) -> StreamTranscoder | None:
        return None

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def finished(self, response: web.StreamResponse) -> None:
        """Called once the answer is known (for an API that keeps what it answered)."""

    # ------------------------------------------------------------------ whole responses
    def whole(self, response: web.StreamResponse) -> web.StreamResponse:
        """A response not yet sent (a whole answer, an engine's error answer, a cached stream
        replayed in one body) in the API's shape. The identity returns it as it is."""
        if self.identity or response.prepared or not isinstance(response, web.Response):
            return response
        raw = response.body
        if not isinstance(raw, bytes):
            return response
        if response.content_type == "text/event-stream":
            transcoder = self.transcoder()
            if transcoder is None:
                return response
            body = transcoder.feed(raw) + transcoder.finish()
            return _rebuilt(response, body, self.stream_content_type)
        try:
            obj = fastjson.loads(raw)
        except (ValueError, RecursionError):
            return response
        if not isinstance(obj, dict):
            return response
        if response.status >= 400:
            out = self.error(response.status, obj if "error" in obj else
                             {"error": {"message": raw.decode("utf-8", "replace")[:500],
                                        "type": "upstream_error"}})
        else:
            out = self.answer(obj)
        return _rebuilt(response, fastjson.dumps(out), "application/json")

    def error_response(self, status: int, body: dict[str, Any],
                       headers: dict[str, str]) -> web.Response:
        """lkn's own error (``LknError.body``) as this API's error answer."""
        return web.Response(status=status, body=fastjson.dumps(self.error(status, body)),
                             content_type="application/json", headers=headers)


def _rebuilt(response: web.Response, body: bytes, content_type: str) -> web.Response:
    """The same response (a ``BoundedResponse`` keeps its write deadline) with a new body."""
    response.body = body
    response.content_type = content_type
    return response
