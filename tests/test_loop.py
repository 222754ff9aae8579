from __future__ import annotations

import asyncio

import pytest

from lkn.gateway.loop import loop_factory, run


def test_lkn_serves_on_uvloop_when_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory() is uvloop.new_event_loop

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(which()).startswith("uvloop")
