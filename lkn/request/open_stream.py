"""The client's event stream once its SSE headers went out: while the request waited for an
engine (``LoadingFeedback``) or once the answer began. From then on the status line is sent, so
an error is an error event on this stream and then its end, never a new response. Every write
goes through a ``ClientWriter``: a client that stops reading is dropped after the deadline."""
from __future__ import annotations

import contextlib
from typing import Callable

from aiohttp import web

from lkn.errors import LknError
from lkn.relay.client_write import ClientWriter, WriteDeadline
from lkn.request.inbound.base import StreamTranscoder, TranscodingWriter
from lkn.request.loading import DEFAULT_DEADLINE, LoadingFeedback
from lkn.sse import frame_bytes, frame_json, sse_headers

Writer = ClientWriter | TranscodingWriter


class OpenStream:
    """``transcoder``: the client's API, when it is not OpenAI's, turns each OpenAI event
    written here into its own (``lkn.request.inbound``); ``content_type`` is its stream's."""

    def __init__(self, request: web.Request, headers: Callable[[], dict[str, str]],
                 deadline: WriteDeadline = DEFAULT_DEADLINE) -> None:
        self._request = request
        self._headers = headers  # read when the headers go out, not before
        self._deadline = deadline
        self._writer: Writer | None = None
        self.transcoder: StreamTranscoder | None = None
        self.content_type = "text/event-stream"
        self.loading: LoadingFeedback | None = None  # a stream that may wait for an engine
        self._answer: web.StreamResponse | None = None  # the relayed answer, once prepared

    @property
    def response(self) -> web.StreamResponse | None:
        """The stream whose headers went out; None while a new response can still be sent."""
        if self._answer is not None:
            return self._answer
        return self.loading.response if self.loading is not None else None

    async def open(self) -> Writer:
        """The stream to relay an answer on: the one already open, or a new one, prepared."""
        resp = self.response
        if resp is None:
            headers = sse_headers(self._headers())
            headers["Content-Type"] = self.content_type
            resp = web.StreamResponse(status=200, headers=headers)
            await resp.prepare(self._request)
        self._answer = resp
        return self._writer_of(resp)

    def _writer_of(self, resp: web.StreamResponse) -> Writer:
        if self._writer is None or self._writer.response is not resp:
            writer = ClientWriter(resp, getattr(self._request, "transport", None),
                                  self._deadline)
            self._writer = writer if self.transcoder is None else \
                TranscodingWriter(writer, self.transcoder)
        return self._writer

    async def error_event(self, error: LknError, request_id: str) -> web.StreamResponse:
        """lkn's error after the headers went out: an error event, then the end."""
        return await self._close_with(frame_json(error.body(request_id)))

    async def engine_error(self, answer: web.StreamResponse) -> web.StreamResponse:
        """The engine's error answer (an error status) after the headers went out: its JSON body
        as an event, then the end."""
        raw = answer.body if isinstance(answer, web.Response) else None
        return await self._close_with(frame_bytes(raw if isinstance(raw, bytes) else b"{}"))

    async def _close_with(self, event: bytes) -> web.StreamResponse:
        resp = self.response
        assert resp is not None, "only an open stream gets error events"
        writer = self._writer_of(resp)
        with contextlib.suppress(ConnectionResetError):
            await writer.write(event)
            await writer.write_eof()
        return resp
