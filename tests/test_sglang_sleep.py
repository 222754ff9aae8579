"""SGLang's sleep (release/resume of GPU memory) against the fake, which follows SGLang 0.5.23's
weight_updater.py: a release while anything runs kills the whole tree, released weights are
lost without a CPU backup, and without --enable-memory-saver both calls are no-ops."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from lkn.engines.base import EngineCrashed
from lkn.engines.process import EngineProcess, State
from tests.conftest import Gateway, http
from tests.sglang_support import (MSG, dead, fake_python, gw, hf_dir,  # noqa: F401
                                  sg_process)


@pytest.mark.parametrize("gw", [{"sg_extra": "sleep_when_idle_s = 0.3, mem_fraction_static = 0.5"}],
                         indirect=True)
def test_idle_engine_releases_memory_and_resumes(gw: Gateway) -> None:
    client = gw.client()
    client.chat.completions.create(model="sg", messages=MSG, max_tokens=2)
    proc = gw.call(gw.manager.ready_process, "sg")
    pid = proc.pid
    deadline = time.monotonic() + 10
    while proc.state is not State.ASLEEP and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.state is State.ASLEEP and "memory released" in proc.logs.tail(20)
    slots = gw.call(lambda: [r.slot() for r in gw.manager.records() if r.running()])
    assert [(s.model, s.ctx, s.state) for s in slots] == [("sg", 4096, "asleep")]
    health = http("GET", gw.base_url + "/status").json()
    assert health["engines"][0]["state"] == "asleep"
    r = client.chat.completions.create(model="sg", messages=MSG, max_tokens=2)
    # the same answer as before the sleep: the weights were backed up, not lost
    assert r.choices[0].message.content == " w0 w1"
    assert proc.pid == pid and "memory resumed" in proc.logs.tail(20)  # same process, woken


async def chat(session: aiohttp.ClientSession, proc: EngineProcess, max_tokens: int = 2) -> str:
    async with session.post(proc.base_url + "/v1/chat/completions", json={
            "model": "sg", "messages": MSG, "max_tokens": max_tokens},
            headers=proc.client.headers()) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["choices"][0]["message"]["content"])


async def log_line(proc: EngineProcess, text: str) -> None:
    """The engine's output reaches the log ring through a pipe: wait for it."""
    deadline = time.monotonic() + 5
    while text not in proc.logs.tail(20):
        assert time.monotonic() < deadline, f"{text!r} not in the engine log"
        await asyncio.sleep(0.05)


async def wait_busy(session: aiohttp.ClientSession, proc: EngineProcess) -> None:
    deadline = time.monotonic() + 10
    while await proc.client.engine_idle(session, proc.base_url):
        assert time.monotonic() < deadline, "the engine never reported the request"
        await asyncio.sleep(0.05)


async def test_engine_idle_counts_requests_at_the_engine(hf_dir: Path, fake_python: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, "--fake-token-delay-s", "0.2",
                                sleep_when_idle_s=1)
        await proc.ensure_ready()
        try:
            assert await proc.client.engine_idle(session, proc.base_url)
            running = asyncio.create_task(chat(session, proc, max_tokens=4))
            await wait_busy(session, proc)  # lkn knows nothing of this request
            assert await running == " w0 w1 w2 w3"
            assert await proc.client.engine_idle(session, proc.base_url)
        finally:
            await proc.stop()


async def test_release_while_busy_kills_tree_and_raises_engine_crashed(
        hf_dir: Path, fake_python: str, tmp_path: Path) -> None:
    children = tmp_path / "children"
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, "--fake-token-delay-s", "0.5",
                                "--fake-children", str(children), sleep_when_idle_s=1)
        await proc.ensure_ready()
        try:
            running = asyncio.create_task(chat(session, proc, max_tokens=20))
            await wait_busy(session, proc)
            with pytest.raises(EngineCrashed, match="release_memory_occupation failed"):
                await proc.client.release_memory(session, proc.base_url)
            with pytest.raises(aiohttp.ClientError):
                await running
            pids = [int(p) for p in children.read_text().split()]
            deadline = time.monotonic() + 5
            while not all(dead(p) for p in [proc.pid, *pids]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert all(dead(p) for p in [proc.pid, *pids]), "the fake's tree survived"
        finally:
            await proc.stop()


async def test_release_without_memory_saver_is_a_200_no_op(hf_dir: Path,
                                                          fake_python: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session)  # no sleep: no saver flags
        await proc.ensure_ready()
        try:
            await proc.client.release_memory(session, proc.base_url)
            await log_line(proc, "will not save memory")
            assert await chat(session, proc) == " w0 w1"  # nothing was released
            await proc.client.resume_memory(session, proc.base_url)
        finally:
            await proc.stop()


@pytest.mark.parametrize("args, sleep_when_idle_s, answer", [
    (("--enable-memory-saver",), None, " \ufffd\ufffd \ufffd\ufffd"),  # weights discarded
    ((), 1.0, " w0 w1"),  # lkn's own flags for a sleeping model back the weights up
])
async def test_woken_engine_answers_as_before_only_with_weight_backup(
        hf_dir: Path, fake_python: str, args: tuple[str, ...], sleep_when_idle_s: float | None,
        answer: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, *args,
                                sleep_when_idle_s=sleep_when_idle_s)
        await proc.ensure_ready()
        try:
            assert await chat(session, proc) == " w0 w1"
            await proc.client.release_memory(session, proc.base_url)
            await proc.client.resume_memory(session, proc.base_url)
            assert await chat(session, proc) == answer
        finally:
            await proc.stop()


async def test_resume_without_release_is_a_crash(hf_dir: Path, fake_python: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, fake_python, session, sleep_when_idle_s=1)
        await proc.ensure_ready()
        try:
            # weight_updater.py: offload_tags.remove() of a tag never released -> KeyError
            with pytest.raises(EngineCrashed):
                await proc.client.resume_memory(session, proc.base_url)
        finally:
            await proc.stop()
