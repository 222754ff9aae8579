"""Loading feedback: a streaming request that waits for an engine start or a swap gets its SSE
headers at once and a comment every few seconds (``: loading smollm2@2048, 12 s``), so proxies
(nginx, Cloudflare) and clients see progress instead of a silent connection they cut.

A model with ``loading_events = true`` sends the progress as ``reasoning_content`` deltas of the
chat stream instead (llama-swap's ``sendLoadingState``): clients that show reasoning show it.
Off by default: it changes the answer's reasoning. A client of another API (Anthropic, Responses)
gets the comments only; an NDJSON one (Ollama) gets no early headers.

Only waits longer than ``GRACE_S`` do this: a request served by a ready engine answers exactly as
it would without lkn. Once the headers are out, an error is an error event (``OpenStream``).

Every progress write has the request's write deadline (``ClientWriter``): a client that stops
reading while it waits is dropped (``ClientStalled``), its wait abandoned and a lease granted
meanwhile given back, so a stalled client holds no engine slot.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, Awaitable, Callable

from aiohttp import web

from lkn.config import ModelConfig, ServerConfig
from lkn.sse import frame_json, sse_headers
from lkn.fleet.manager import EngineManager
from lkn.fleet.records import Lease
from lkn.relay.client_write import ClientWriter, WriteDeadline

GRACE_S = 0.05      # a ready engine grants within this; only longer waits send headers early
INTERVAL_S = 3.0    # between two progress messages
DEFAULT_DEADLINE = WriteDeadline(ServerConfig.stream_idle_timeout_s)  # the config's default


class LoadingFeedback:
    def __init__(self, request: web.Request, route: str, model: ModelConfig,
                 manager: EngineManager, headers: Callable[[], dict[str, str]],
                 deadline: WriteDeadline = DEFAULT_DEADLINE, *, openai: bool = True) -> None:
        self._request = request
        self._route = route
        self._openai = openai  # another API's client gets the comments only
        self.model = model  # the model being waited for (a fallback replaces it)
        self._manager = manager
        self._headers = headers  # the request's headers as they are when they go out
        self._deadline = deadline  # of each progress write (the request's, as the answer's)
        self._writer: ClientWriter | None = None
        self._id = f"chatcmpl-lkn-loading-{uuid.uuid4().hex[:12]}"
        self.response: web.StreamResponse | None = None  # prepared once the wait got long

    async def wait(self, acquiring: Awaitable[Lease]) -> Lease:
        """Await ``acquiring`` (the engine lease), sending progress while it takes long. If
        the client goes away (or stops reading: ``ClientStalled``) or this task is cancelled,
        the lease request is cancelled, and a lease granted meanwhile is given back."""
        task = asyncio.ensure_future(acquiring)
        started = time.monotonic()
        try:
            done, _ = await asyncio.wait({task}, timeout=GRACE_S)
            while not done:
                await self._progress(time.monotonic() - started)
                done, _ = await asyncio.wait({task}, timeout=INTERVAL_S)
            return task.result()
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                (await task).release()
            raise

    async def _progress(self, waited: float) -> None:
        what = f"{self._manager.waiting_on(self.model.name)}, {waited:.0f} s"
        if self._writer is None:
            self.response = web.StreamResponse(status=200, headers=sse_headers(self._headers()))
            await self.response.prepare(self._request)
            self._writer = ClientWriter(self.response, self._request.transport, self._deadline)
        if self.model.loading_events and self._route == "chat" and self._openai:
            await self._writer.write(frame_json(self._chunk(what + "\n")))
        else:
            await self._writer.write(f": {what}\n\n".encode())

    def _chunk(self, text: str) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model.name,
                "choices": [{"index": 0, "delta": {"role": "assistant",
                                                   "reasoning_content": text},
                             "finish_reason": None}]}
