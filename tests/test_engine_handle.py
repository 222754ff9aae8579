"""EngineHandle: both kinds of process satisfy it, and RemoteProcess keeps to its table."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from lkn.config import ModelConfig, UpstreamConfig, VariantConfig
from lkn.engines.base import Readiness
from lkn.engines.handle import EngineHandle
from lkn.engines.process import EngineProcess, EngineStartError, PortPool, State
from lkn.engines.remote import RemoteEngine, RemoteProcess

MODEL = ModelConfig(name="far", engine="remote", upstream=UpstreamConfig(url="http://far/v1"),
                    variants=(VariantConfig(4096, "", 0, vram_mb=0),))


def held(handle: EngineHandle) -> str:
    """What the fleet does with a handle; mypy checks both classes against the Protocol here."""
    return f"{handle.key} {handle.state.value} {handle.base_url}"


def both_are_handles(local: EngineProcess, remote: RemoteProcess) -> list[str]:
    return [held(local), held(remote)]


class Answers(RemoteEngine):
    """A remote engine whose health checks answer from a list (a gate holds each answer)."""

    def __init__(self, answers: list[bool]) -> None:
        super().__init__(MODEL, MODEL.variants[0])
        self.answers = answers
        self.gate = asyncio.Event()
        self.gate.set()

    async def check_ready(self, session: aiohttp.ClientSession, base_url: str) -> Readiness:
        await self.gate.wait()
        return Readiness(self.answers.pop(0), "down")


def remote(answers: list[bool]) -> tuple[RemoteProcess, list[tuple[State, State]]]:
    moves: list[tuple[State, State]] = []
    proc = RemoteProcess(Answers(answers), session=None,  # type: ignore[arg-type]  # unused
                         on_change=lambda p, old: moves.append((old, p.state)))
    return proc, moves


async def test_a_remote_lifecycle_keeps_to_its_table() -> None:
    proc, moves = remote([False, True])
    with pytest.raises(EngineStartError, match="is not answering: down"):
        await proc.ensure_ready()
    await proc.ensure_ready()
    await proc.stop()
    assert moves == [(State.STOPPED, State.STARTING), (State.STARTING, State.FAILED),
                     (State.FAILED, State.STARTING), (State.STARTING, State.READY),
                     (State.READY, State.STOPPED)]
    assert not proc.illegal_transitions
    assert proc.start_report == [] and proc.describe()["upstream"] == "http://far/v1"


async def test_a_check_that_ends_after_a_stop_is_flagged() -> None:
    """RemoteProcess has no lock: a stop during its health check is overtaken by the check's
    answer. Behaviour is unchanged; the table makes the move visible."""
    proc, _ = remote([True])
    client: Any = proc.client
    client.gate.clear()
    checking = asyncio.create_task(proc.ensure_ready())
    await asyncio.sleep(0)
    await proc.stop()
    client.gate.set()
    await checking
    assert proc.state is State.READY
    assert list(proc.illegal_transitions) == [(State.STOPPED, State.READY)]


def test_both_classes_are_handles_at_run_time_too() -> None:
    local = EngineProcess(RemoteEngine(MODEL, MODEL.variants[0]), ports=PortPool(1, 2),
                          session=None,  # type: ignore[arg-type]  # nothing starts
                          start_timeout_s=1, stop_grace_s=1)
    proc, _ = remote([])
    assert both_are_handles(local, proc) == ["far@4096 stopped http://127.0.0.1:None",
                                             "far@4096 stopped http://far/v1"]
