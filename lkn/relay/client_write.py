"""Writes to a client with a deadline: a client that stops reading cannot hold its answer's
engine slot (the lease), nor its connection, for ever.

aiohttp's ``write`` blocks (in ``drain``) only while the transport is paused: its buffer went
over the high-water mark and has not drained to the low-water mark yet. A client that stops
reading fills the kernel's socket buffers, then that one, then waits for nobody. A write that
cannot block goes out directly, so the hot path pays for no timer: the buffer is at most at the
low-water mark before it (writing is not paused; uvloop's mark is 16 bytes) and stays under the
high-water mark after it (the write does not pause it). Any other write, and the end of the
answer, waits at most ``WriteDeadline.seconds``; past it the client is dropped (a reset),
counted and logged, and ``ClientStalled`` is raised: a ``ConnectionResetError``, which the relay
already treats as a gone client (the upstream closed, the lease released by the caller's
``finally``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("lkn.relay.client_write")

# What aiohttp may add to a write on its way to the transport: chunk-size lines and, on the
# first write of a stream, the buffered response headers.
FRAMING = 8192


class ClientStalled(ConnectionResetError):
    """The client took no data for the write deadline: lkn dropped it."""


@dataclass(frozen=True)
class WriteDeadline:
    """How long one write to a client may take, and who learns of a client dropped for it."""
    seconds: float
    request_id: str = ""
    on_stall: Callable[[], None] | None = None

    def stalled(self, transport: asyncio.Transport | None) -> ClientStalled:
        """Drop the client; the exception to raise for it."""
        if transport is not None:
            _reset(transport)
        log.warning("request %s: the client took no data for %gs (it stopped reading); "
                    "dropped it", self.request_id or "-", self.seconds)
        if self.on_stall is not None:
            self.on_stall()
        return ClientStalled(f"the client took no data for {self.seconds:g}s")

    async def bounded(self, write: Awaitable[None],
                      transport: asyncio.Transport | None) -> None:
        try:
            async with asyncio.timeout(self.seconds):
                await write
        except TimeoutError:
            raise self.stalled(transport) from None


def _reset(transport: asyncio.Transport) -> None:
    """Close the connection with a reset: ``close()`` would wait for a buffer that never drains,
    and a plain close still leaves the kernel sending what it holds to a window that stays shut.
    A reset frees both at once and tells the client its answer is cut."""
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ClientWriter:
    """The writes of one prepared stream (``response``) to its client."""
    __slots__ = ("response", "_transport", "_low", "_room", "_deadline")

    def __init__(self, response: web.StreamResponse, transport: asyncio.Transport | None,
                 deadline: WriteDeadline) -> None:
        self.response = response
        self._transport = transport
        self._deadline = deadline
        self._low, self._room = _marks(transport)

    def _cannot_block(self, n: int) -> bool:
        return _cannot_block(self._transport, self._low, self._room, n)

    async def write(self, data: bytes) -> None:
        if self._cannot_block(len(data)):
            await self.response.write(data)
        else:
            await self._deadline.bounded(self.response.write(data), self._transport)

    async def write_eof(self) -> None:
        if self._cannot_block(0):  # the last chunk's framing only
            await self.response.write_eof()
        else:
            await self._deadline.bounded(self.response.write_eof(), self._transport)


def _marks(transport: asyncio.Transport | None) -> tuple[int, int]:
    """The buffer's low-water mark, and the most a write may leave in it without pausing it."""
    limits = getattr(transport, "get_write_buffer_limits", None)
    low, high = limits() if limits is not None else (-1, 0)
    return low, high - FRAMING


def _cannot_block(transport: asyncio.Transport | None, low: int, room: int, n: int) -> bool:
    """A write of ``n`` bytes goes out without waiting (see the module's docstring)."""
    return transport is not None and \
        (size := transport.get_write_buffer_size()) <= low and size + n <= room


class BoundedResponse(web.Response):
    """A whole answer (``web.Response``'s arguments) whose body goes out within the deadline.
    aiohttp writes it after the handler returned: ``write_eof`` is where the body is sent."""

    def __init__(self, *, deadline: WriteDeadline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lkn_deadline = deadline

    async def write_eof(self, data: bytes = b"") -> None:
        transport = self._req.transport if self._req is not None else None
        body = self._body
        if isinstance(body, (bytes, bytearray)) and \
                _cannot_block(transport, *_marks(transport), len(body) + len(data)):
            await super().write_eof(data)  # the headers and the body
        else:
            await self._lkn_deadline.bounded(super().write_eof(data), transport)
