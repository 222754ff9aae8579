"""The Forwarder's stream relay alone, with stand-ins for the client and the engine: what it
leaves in the request's Outcome, and what it writes."""
from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from lkn.config import build_config
from lkn.ops.metrics import Metrics
from lkn.request.forward import Forwarder
from lkn.request.open_stream import OpenStream
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState


class _Client:
    """The client's response: ``gone_after`` writes succeed, then the client is gone."""
    def __init__(self, gone_after: int | None) -> None:
        self.gone_after = gone_after
        self.writes: list[bytes] = []
        self.headers: dict[str, str] = {}
        self.ended = False

    async def prepare(self, request: Any) -> None:
        pass

    async def write(self, data: bytes) -> None:
        if self.gone_after is not None and len(self.writes) >= self.gone_after:
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        self.writes.append(data)

    async def write_eof(self) -> None:
        self.ended = True


class _Upstream:
    def __init__(self, events: list[bytes]) -> None:
        self.closed = False
        events_ = events

        class content:  # noqa: N801 - mimics aiohttp's attribute
            @staticmethod
            async def iter_any() -> Any:
                for e in events_:
                    yield e
        self.content = content

    def close(self) -> None:
        self.closed = True


class _Lease:
    class process:  # noqa: N801
        key = "a@512"
        confirmed = 0

        @classmethod
        async def confirm_alive(cls) -> bool:  # asked after a broken stream
            cls.confirmed += 1
            return True

    class client:  # noqa: N801
        openai_wire = True

        @staticmethod
        def normalize_stream_data(data: str) -> str:
            return data


def _relay(monkeypatch: pytest.MonkeyPatch, client: _Client,
           events: list[bytes]) -> tuple[Outcome, _Upstream, Any]:
    monkeypatch.setattr("aiohttp.web.StreamResponse", lambda **kw: client)
    cfg = build_config({"models": [{"name": "a", "model_file": "/x", "ctx_size": 8}]})
    state = GatewayState(cfg=cfg, manager=None, session=None,  # type: ignore[arg-type]
                         metrics=Metrics(), started=time.monotonic())
    outcome = Outcome("r1", model="a")
    upstream = _Upstream(events)
    stream = OpenStream(None, outcome.headers)  # type: ignore[arg-type]
    forwarder = Forwarder(state, cfg.server, outcome, stream)
    return outcome, upstream, forwarder.relay_stream(upstream, _Lease(),  # type: ignore[arg-type]
                                                     time.monotonic())


CHUNK = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'


async def test_a_whole_stream_sets_the_time_to_first_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = _Client(gone_after=None)
    outcome, upstream, relaying = _relay(monkeypatch, client, [CHUNK, b"data: [DONE]\n\n"])
    await relaying
    assert outcome.ttft_s is not None and not outcome.client_gone and client.ended
    assert b"error" not in b"".join(client.writes)


async def test_a_stream_cut_by_the_engine_ends_with_an_error_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = _Client(gone_after=None)
    confirmed = _Lease.process.confirmed
    outcome, _, relaying = _relay(monkeypatch, client, [CHUNK])
    await relaying
    assert b"without [DONE]" in client.writes[-1] and client.ended
    assert not outcome.client_gone
    assert _Lease.process.confirmed == confirmed + 1  # the engine was looked at once


async def test_a_client_gone_mid_stream_is_no_engine_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = _Client(gone_after=1)
    outcome, upstream, relaying = _relay(monkeypatch, client, [CHUNK, CHUNK, CHUNK])
    await relaying
    assert outcome.client_gone and upstream.closed  # counted as 499; the engine stops
    assert len(client.writes) == 1  # no error event written after the client left
