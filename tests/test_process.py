"""EngineProcess lifecycle against the fake engine run as a real child process."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from lkn.config import ModelConfig, VariantConfig
from lkn.engines.llamacpp import LlamaCppEngine
from lkn.engines.proctree import running
from lkn.engines.process import EngineProcess, EngineStartError, PortPool, State
from lkn.engines.states import REMOTE_TRANSITIONS, TRANSITIONS, is_legal
from tests.conftest import fake_process, free_port


def steal_ports(proc: EngineProcess, count: int) -> list[socket.socket]:
    """Bind ``count`` consecutive ports at the start of ``proc``'s pool, as the racing thief
    would. The pool sits in the ephemeral range, where a client connection may hold one of
    them: such a base is given up for another (no socket is left open)."""
    for _ in range(50):
        thieves: list[socket.socket] = []
        try:
            for port in range(proc._ports.first, proc._ports.first + count):
                thieves.append(socket.socket())
                thieves[-1].bind(("127.0.0.1", port))
                thieves[-1].listen()
            return thieves
        except OSError:
            for thief in thieves:
                thief.close()
            base = free_port()
            proc._ports = PortPool(base, base + 20)
    raise RuntimeError("no consecutive free ports to steal")


async def test_slow_engine_becomes_ready_after_refused_then_503(fake_binary: str,
                                                                tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-listen-delay-s", "0.4",
                            "--fake-load-s", "0.6", log_dir=str(tmp_path))
        t0 = time.monotonic()
        await proc.ensure_ready()
        assert proc.state is State.READY
        assert time.monotonic() - t0 >= 0.6  # waited through "refused" and "Loading model"
        async with session.get(proc.base_url + "/health") as resp:
            assert resp.status == 200
        assert proc.client.effective_ctx == 512  # read back from /props
        pid = proc.pid
        await proc.stop()
        assert proc.state is State.STOPPED
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        log_text = Path(proc.logs.path).read_text()
        assert "fake: listening" in log_text and "starting -> ready" in log_text
        assert not proc.illegal_transitions  # every move was in the table


async def test_exit_before_ready_fails_at_once_with_log_tail(fake_binary: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-exit-before-ready", "3",
                            start_timeout_s=60)
        with pytest.raises(EngineStartError) as info:
            await proc.ensure_ready()
        message = str(info.value)
        # the exit itself failed the start, not the 60 s start timeout
        assert "exited with code 3 before it was ready" in message
        assert "not ready after" not in message
        # the engine's last words are for admins (describe: /status), never in the error
        assert "out of memory while loading tensors" not in message
        assert "out of memory while loading tensors" in proc.describe()["log_tail"]
        assert proc.state is State.FAILED
        assert not proc.illegal_transitions  # every move was in the table


async def test_engine_ignoring_sigterm_is_killed_after_grace(fake_binary: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-ignore-sigterm", stop_grace_s=0.5)
        await proc.ensure_ready()
        pid = proc.pid
        t0 = time.monotonic()
        await proc.stop()
        assert time.monotonic() - t0 >= 0.5
        assert proc.proc is not None and proc.proc.returncode == -9
        assert "SIGKILL" in proc.logs.tail(10)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not proc.illegal_transitions  # every move was in the table


async def test_stop_sweeps_grandchild_that_left_the_group(fake_binary: str,
                                                          tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-grandchild", str(pidfile))
        await proc.ensure_ready()
        grandchild = int(pidfile.read_text())
        assert psutil.pid_exists(grandchild)
        await proc.stop()
        await asyncio.sleep(0.1)
        assert not psutil.pid_exists(grandchild) or \
            psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        assert not proc.illegal_transitions  # every move was in the table


async def test_start_timeout_kills_the_child(fake_binary: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-load-s", "100", start_timeout_s=1)
        with pytest.raises(EngineStartError, match="not ready after 1s"):
            await proc.ensure_ready()
        assert proc.proc is not None and proc.proc.returncode is not None
        assert not proc.illegal_transitions  # every move was in the table


async def test_concurrent_ensure_ready_spawns_once(fake_binary: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-load-s", "0.3")
        spawned: list[int] = []
        original = proc._spawn

        async def counting_spawn(*args, **kwargs):  # type: ignore[no-untyped-def]
            p = await original(*args, **kwargs)
            spawned.append(p.pid)
            return p
        proc._spawn = counting_spawn
        await asyncio.gather(*(proc.ensure_ready() for _ in range(5)))
        assert len(spawned) == 1 and proc.state is State.READY
        await proc.stop()
        assert not proc.illegal_transitions  # every move was in the table


async def test_ensure_ready_during_stop_waits_then_starts(fake_binary: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-ignore-sigterm", stop_grace_s=0.5)
        await proc.ensure_ready()
        first = proc.pid
        stopping = asyncio.create_task(proc.stop())
        await asyncio.sleep(0.05)
        assert proc.state is State.STOPPING
        await proc.ensure_ready()  # waits for the stop, then starts a fresh child
        await stopping
        assert proc.state is State.READY and proc.pid != first
        await proc.stop()
        assert not proc.illegal_transitions  # every move was in the table


async def test_crash_is_noticed_and_next_start_works(fake_binary: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session, "--fake-crash-after-s", "0.3")
        await proc.ensure_ready()
        for _ in range(100):
            if proc.state is State.FAILED:
                break
            await asyncio.sleep(0.05)
        assert proc.state is State.FAILED
        assert "exited unexpectedly with code 77" in proc.last_error
        await proc.ensure_ready()
        assert proc.state is State.READY
        await proc.stop()
        assert not proc.illegal_transitions  # every move was in the table


async def test_spawn_failure_is_a_start_error() -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process("/nonexistent/llama-server", session)
        with pytest.raises(EngineStartError, match="cannot spawn /nonexistent/llama-server"):
            await proc.ensure_ready()
        assert not proc.illegal_transitions  # every move was in the table


def test_port_pool_skips_ports_in_use() -> None:
    import socket
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        pool = PortPool(port, port + 5)
        got = pool.acquire()
        assert got != port
        assert pool.acquire() not in (port, got)


async def test_the_engines_own_ready_line_wakes_the_health_poll(fake_binary: str) -> None:
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session)
        await proc.ensure_ready()
        assert "listening on http://127.0.0.1" in proc.logs.tail(20)
        assert proc._ready_hint.is_set()  # the poll was woken by the line, not by its interval
        await proc.stop()
        assert not proc.illegal_transitions  # every move was in the table


async def test_a_log_that_cannot_be_written_never_breaks_the_engine(fake_binary: str) -> None:
    """A full disk (here /dev/full) must not leave a crashed engine marked ready."""
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session)
        proc.logs.path = "/dev/full"
        await proc.ensure_ready()
        assert proc.state is State.READY
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proc.state is State.READY and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert proc.state is State.FAILED and "exited unexpectedly" in proc.last_error
        assert "starting -> ready" in proc.logs.tail(50)  # the ring kept what the file could not
        await proc.stop()
        assert proc.state is State.STOPPED
        assert not proc.illegal_transitions  # every move was in the table


# ---------------------------------------------------------------- the transition table

MOVES = [(a, b) for a in State for b in State if a is not b]


@pytest.mark.parametrize("old, new", [m for m in MOVES if is_legal(*m)])
def test_every_legal_transition_is_accepted_silently(old: State, new: State,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    proc = _bare_process(old)
    proc._set_state(new)
    assert proc.state is new and not proc.illegal_transitions
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("old, new", [
    (State.STOPPED, State.READY),      # ready without a start
    (State.STOPPED, State.STOPPING),
    (State.STOPPED, State.ASLEEP),
    (State.STOPPED, State.FAILED),
    (State.STARTING, State.STOPPED),   # a start always ends READY or FAILED
    (State.STARTING, State.ASLEEP),
    (State.READY, State.STARTING),
    (State.READY, State.STOPPED),      # a stop always goes through STOPPING
    (State.ASLEEP, State.STOPPED),
    (State.STOPPING, State.READY),
    (State.STOPPING, State.STARTING),
    (State.FAILED, State.READY),
])
def test_an_illegal_transition_is_logged_and_kept_not_raised(
        old: State, new: State, caplog: pytest.LogCaptureFixture) -> None:
    proc = _bare_process(old)
    proc._set_state(new, "test")
    assert proc.state is new  # the new state stands: it is the truth about the child
    assert list(proc.illegal_transitions) == [(old, new)]
    assert any("illegal state transition" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)


def test_the_table_names_every_state_and_only_moves() -> None:
    assert set(TRANSITIONS) == set(State)
    assert all(old not in targets for old, targets in TRANSITIONS.items())
    assert sum(map(len, TRANSITIONS.values())) == len([m for m in MOVES if is_legal(*m)]) == 13


def test_the_remote_table_has_no_stopping_and_no_sleep() -> None:
    used = set(REMOTE_TRANSITIONS) | {s for t in REMOTE_TRANSITIONS.values() for s in t}
    assert used == {State.STOPPED, State.STARTING, State.READY, State.FAILED}
    assert is_legal(State.READY, State.STOPPED, REMOTE_TRANSITIONS)
    assert not is_legal(State.STOPPED, State.READY, REMOTE_TRANSITIONS)


def _bare_process(state: State) -> EngineProcess:
    """An EngineProcess in ``state`` that never spawns (the table is all that is tested)."""
    model = ModelConfig(name="fake", engine="llamacpp",
                        variants=(VariantConfig(512, "/nonexistent.gguf", 0),))
    proc = EngineProcess(LlamaCppEngine(model, model.variants[0]), ports=PortPool(1, 2),
                         session=None,  # type: ignore[arg-type]  # never used: nothing starts
                         start_timeout_s=1, stop_grace_s=1)
    proc.state = state
    return proc


async def test_confirm_alive_finds_a_dead_engine_at_once_and_handles_the_crash(
        fake_binary: str) -> None:
    """The exit watcher polls; asked after a failed request, the process looks now: a live
    engine is READY, a killed one is FAILED by the time the answer comes back."""
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session)
        await proc.ensure_ready()
        assert await proc.confirm_alive() is True and proc.state is State.READY
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)  # blocking: the loop (and its exit watcher) sees none of this
        assert proc.state is State.READY  # dead, and not noticed yet
        assert await proc.confirm_alive() is False
        assert proc.state is State.FAILED and "exited unexpectedly" in proc.last_error
        assert await proc.confirm_alive() is False  # and stays so until restarted
        await proc.stop()
        assert not proc.illegal_transitions


async def test_an_engine_stopped_on_purpose_did_not_die(fake_binary: str) -> None:
    """An unload or a swap cuts a request's connection: that is no crash, and the request is
    not tried again on the engine (which would start it again behind the operator's back)."""
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session)
        await proc.ensure_ready()
        stopping = asyncio.create_task(proc.stop())
        while proc.state is State.READY:
            await asyncio.sleep(0.001)
        assert await proc.confirm_alive() is True  # STOPPING
        await stopping
        assert proc.state is State.STOPPED and await proc.confirm_alive() is True


async def test_a_port_taken_before_the_engine_binds_it_is_a_retry_on_another_port(
        fake_binary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process binds the port between lkn's check and the engine's bind (the race):
    the engine exits with llama-server's bind error, and lkn starts it once more on the next
    free port. Nobody sees a failure: the process goes STARTING -> READY, never FAILED."""
    import lkn.engines.proctree as proctree
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session)
        [thief] = steal_ports(proc, 1)
        taken = proc._ports.first
        real_free = proctree._port_free
        lied: list[int] = []

        def racy(port: int) -> bool:  # free when lkn looked, taken when the engine binds
            if port == taken and not lied:
                lied.append(port)
                return True
            return real_free(port)
        monkeypatch.setattr(proctree, "_port_free", racy)
        states: list[State] = []
        proc._on_change = lambda p, old: states.append(p.state)
        try:
            await proc.ensure_ready()
            assert proc.state is State.READY and proc.port != taken
            assert states == [State.STARTING, State.READY]
            assert f"port {taken} was taken" in proc.logs.tail(40)
            await proc.stop()
        finally:
            thief.close()
        assert not proc.illegal_transitions


async def test_a_second_bind_failure_fails_the_start(fake_binary: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """One retry, not a loop: when the next port is taken too, the start fails, saying so
    (the engine's own words are in its log tail, for admins)."""
    import lkn.engines.proctree as proctree
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session)
        thieves = steal_ports(proc, 2)
        monkeypatch.setattr(proctree, "_port_free", lambda port: True)
        try:
            with pytest.raises(EngineStartError) as info:
                await proc.ensure_ready()
            assert "was taken before the engine could bind it" in str(info.value)
            assert "couldn't bind HTTP server socket" in proc.describe()["log_tail"]
            assert proc.state is State.FAILED
            assert proc.logs.tail(60).count("--- lkn: start: ") == 2
        finally:
            for thief in thieves:
                thief.close()
        assert not proc.illegal_transitions
