"""The idle policy by tables: which engines stop, which sleep, which an operator may unload.

Records over stand-in processes (a state and whether the engine can sleep): no processes, no
sleeps, the time passed in.
"""
from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from lkn.config import ModelConfig, build_config
from lkn.engines.process import State
from lkn.fleet import idle
from lkn.fleet.failures import FailureHistory
from lkn.fleet.records import EngineRecord

BASE = build_config({"models": [{"name": "m", "binary": "/bin/x", "model_file": "/x.gguf",
                                 "variants": [{"ctx_size": 512, "vram_mb": 100}]}]}).models[0]
REMOTE = build_config({"models": [{"name": "r", "upstream": {"url": "http://r/v1"}}]}).models[0]


def record(model: ModelConfig = BASE, *, state: State = State.READY, in_flight: int = 0,
           last_used: float = 0.0, ready_at: float | None = None, sleeps: bool = False,
           rid: int = 1, **flags: Any) -> EngineRecord:
    process: Any = SimpleNamespace(state=state, client=SimpleNamespace(supports_sleep=sleeps))
    r = EngineRecord(rid, model, model.variants[0], process, 100 * rid, "identity")
    r.in_flight, r.last_used = in_flight, last_used
    r.history = FailureHistory(ready_at=ready_at)
    for name, value in flags.items():
        setattr(r, name, value)
    return r


UNLOAD = replace(BASE, idle_unload_s=60.0)
SLEEP = replace(BASE, sleep_when_idle_s=30.0)

# (record, now, unload_after, sleep_due)
TABLE = [
    (record(UNLOAD, last_used=100), 159, None, False),            # not idle long enough
    (record(UNLOAD, last_used=100), 160, 60.0, False),            # exactly long enough
    (record(UNLOAD, last_used=100, ready_at=150), 200, None, False),  # counted from ready
    (record(UNLOAD, last_used=0, ready_at=100), 160, 60.0, False),    # loaded, never used
    (record(UNLOAD, last_used=0, in_flight=1), 500, None, False),     # busy
    (record(replace(UNLOAD, pinned=True)), 500, None, False),         # pinned
    (record(UNLOAD, state=State.STARTING), 500, None, False),         # not ready
    (record(UNLOAD, state=State.ASLEEP), 500, None, False),           # already asleep
    (record(UNLOAD, stopping=True), 500, None, False),                # being stopped
    (record(UNLOAD, sleeps=True), 500, None, False),                  # sleeps instead (no key)
    (record(replace(REMOTE, idle_unload_s=60.0)), 500, None, False),  # a remote server
    (record(BASE), 10_000, None, False),                              # no idle setting at all
    (record(SLEEP, sleeps=True, last_used=100), 129, None, False),
    (record(SLEEP, sleeps=True, last_used=100), 130, None, True),
    (record(SLEEP, sleeps=False, last_used=100), 500, None, False),   # cannot sleep
    (record(SLEEP, sleeps=True, in_flight=2), 500, None, False),
    (record(SLEEP, sleeps=True, releasing=True), 500, None, False),   # already releasing
    (record(replace(SLEEP, pinned=True), sleeps=True), 500, None, False),
    (record(replace(SLEEP, idle_unload_s=60.0), sleeps=True), 500, None, True),  # sleep wins
    # a client's keep_alive (Ollama's) overrides the model's idle_unload_s
    (record(BASE, keep_alive_s=0.0, last_used=100), 100, 0.0, False),      # 0: once idle
    (record(BASE, keep_alive_s=0.0, in_flight=1), 500, None, False),       # ... not before
    (record(UNLOAD, keep_alive_s=math.inf, last_used=0), 10_000, None, False),  # -1: never
    (record(UNLOAD, keep_alive_s=600.0, last_used=100), 660, None, False),  # its own limit
    (record(UNLOAD, keep_alive_s=600.0, last_used=100), 700, 600.0, False),
]


@pytest.mark.parametrize("rec,now,unload,sleep", TABLE)
def test_idle_policy_by_table(rec: EngineRecord, now: float, unload: float | None,
                              sleep: bool) -> None:
    assert idle.unload_after(rec, now) == unload
    assert idle.sleep_due(rec, now) is sleep


def test_unload_candidates_longest_idle_first() -> None:
    records = [record(rid=1, last_used=900), record(rid=2, last_used=100),
               record(rid=3, last_used=500), record(rid=4, last_used=0, in_flight=1),
               record(replace(BASE, pinned=True), rid=5, last_used=0),
               record(rid=6, last_used=0, state=State.ASLEEP)]
    got = idle.unload_candidates(records, 1000.0, 60.0)
    assert [(c.engine, c.idle_s, c.vram_mb) for c in got] == [
        ("m@512#2", 900.0, 200), ("m@512#3", 500.0, 300), ("m@512#1", 100.0, 100)]
    assert [c.engine for c in idle.unload_candidates(records, 1000.0, 200.0)] == \
        ["m@512#2", "m@512#3"]
    assert got[0].as_dict() == {"engine": "m@512#2", "key": "m@512", "idle_s": 900.0,
                                "vram_mb": 200}


async def test_give_back_stops_the_unloadable_and_sleeps_the_sleepers() -> None:
    slept: list[str] = []

    async def fake_sleep() -> bool:
        slept.append("s")
        return True

    sleeper = record(SLEEP, rid=1, sleeps=True)
    setattr(sleeper.process, "sleep", fake_sleep)  # the stand-in process learns to sleep
    stopper, busy = record(UNLOAD, rid=2), record(UNLOAD, rid=3, in_flight=1)
    stopped: list[tuple[str, str]] = []
    kicks: list[None] = []
    await idle.give_back([sleeper, stopper, busy], 1000.0,
                         lambda r, why: stopped.append((r.slot_id, why)),
                         lambda: kicks.append(None))
    assert stopped == [("m@512#2", "idle for 60s")]
    assert slept == ["s"] and kicks == [None] and not sleeper.releasing
