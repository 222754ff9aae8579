"""Faults that must stay local: engine failures per variant with backoff and FAILED, unexpected
errors in background tasks, engines closing keep-alive connections, malformed probe answers,
client disconnects, multi-line SSE, and reloads that overlap or change an engine's command."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import urllib.request
import time
from pathlib import Path
from typing import Any

import pytest

import lkn.engines.process
import lkn.gateway.reload
from lkn.config import build_config, load_config
from lkn.engines.base import EngineClient
from lkn.engines.gpu import GpuMonitor
from lkn.engines.logs import LogRing
from lkn.fleet.manager import EngineManager
from lkn.engines.process import State, StateCallback
from lkn.fleet.records import Demand
from lkn.errors import EngineUnavailable
from lkn.gateway.keys import RELOADER
from lkn.gateway.reload import reload_config
from tests.conftest import Gateway, free_port, http, lua_str, write_config

MSG = [{"role": "user", "content": "hello there"}]


def chat(gw: Gateway, model: str, **extra: Any) -> Any:
    return http("POST", gw.base_url + "/v1/chat/completions",
                json.dumps({"model": model, "messages": MSG, **extra}))


def two_variants(binary: str, big_args: str, *, server: str = "", tmp: Path) -> str:
    return f"""
server = {{ stop_grace_s = 1, log_dir = {lua_str(str(tmp / 'logs'))}, restart_backoff_s = 0.2,
           restart_backoff_max_s = 0.4, max_start_failures = 3, failed_start_cooldown_s = 30,
           {server} }}
models = {{
  {{ name = "m", binary = {lua_str(binary)}, model_file = "/x.gguf", default_max_tokens = 16,
    variants = {{ {{ ctx_size = 512, vram_mb = 100 }},
                  {{ ctx_size = 2048, vram_mb = 100, args = {{ {big_args} }} }} }} }},
}}
"""


def test_a_failing_variant_never_blocks_a_healthy_one_and_becomes_failed(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    path = tmp_path / "lkn.cfg.lua"
    path.write_text(two_variants(fake_binary, '"--fake-exit-before-ready", 3', tmp=tmp_path))
    gw: Gateway = gateway_factory(load_config(str(path)))
    assert chat(gw, "m").status_code == 200                      # m@512 runs
    first = chat(gw, "m", max_tokens=1500)                       # needs m@2048: it cannot start
    assert first.status_code == 503
    # why, in lkn's words; the engine's own (its log tail) only in /status, for admins
    assert "exited with code 3 before it was ready" in first.json()["error"]["message"]
    assert "out of memory" not in first.json()["error"]["message"]
    assert chat(gw, "m").status_code == 200                      # the 512 variant: unaffected
    for _ in range(2):                                           # restarts on demand, backoff
        assert chat(gw, "m", max_tokens=1500).status_code == 503
    t0 = time.monotonic()
    failed = chat(gw, "m", max_tokens=1500)                      # FAILED: fast, with Retry-After
    assert time.monotonic() - t0 < 1.0
    assert failed.status_code == 503 and 1 <= int(failed.headers["retry-after"]) <= 30
    assert "FAILED" in failed.json()["error"]["message"]
    assert "exited with code 3" in failed.json()["error"]["message"]
    assert "out of memory" not in failed.json()["error"]["message"]
    engines = {e["key"]: e for e in http("GET", gw.base_url + "/status").json()["engines"]}
    assert engines["m@2048"]["failures"]["failed"] is True
    assert engines["m@2048"]["failures"]["consecutive"] == 3
    assert engines["m@512"]["state"] == "ready"
    assert 'lkn_engine_failed{engine="m@2048"} 1' in http("GET", gw.base_url + "/metrics").text
    # A reload that changes the variant clears it.
    path.write_text(two_variants(fake_binary, '"--fake-tokens", 4', tmp=tmp_path))
    assert gw.call(reload_config, gw.app) is True
    r = chat(gw, "m", max_tokens=1500)
    assert r.status_code == 200 and r.headers["x-lkn-variant"] == "2048"


def test_a_crashed_engine_restarts_on_demand(tmp_path: Path, fake_binary: str,
                                             gateway_factory: Any) -> None:
    path = tmp_path / "lkn.cfg.lua"
    path.write_text(two_variants(fake_binary, "", tmp=tmp_path).replace(
        'default_max_tokens = 16,', 'default_max_tokens = 16, args = { "--fake-crash-after-s", 2 },'))
    gw: Gateway = gateway_factory(load_config(str(path)))
    assert chat(gw, "m").status_code == 200
    deadline = time.monotonic() + 10
    while gw.call(gw.manager.ready_process, "m") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    [engine] = [e for e in http("GET", gw.base_url + "/status").json()["engines"]
                if e["key"] == "m@512"]
    assert engine["state"] == "failed" and engine["crashes"] == 1
    assert "exited unexpectedly with code 77" in engine["last_error"]
    assert chat(gw, "m").status_code == 200  # started again (after the backoff)


class _Boom(EngineClient):
    """A client whose process the test replaces; never spoken to."""

    def argv(self, port: int) -> list[str]:
        return ["/bin/true"]

    async def check_ready(self, session: Any, base_url: str) -> Any:
        raise AssertionError

    async def count_tokens(self, *a: Any) -> int:
        raise AssertionError

    async def probe(self, *a: Any) -> Any:
        raise AssertionError


class _BuggyProcess:
    """A process whose start fails with an error nobody planned for."""

    def __init__(self, client: EngineClient, on_change: StateCallback) -> None:
        self.client, self.key, self.state = client, client.key, State.STOPPED
        self.logs, self.last_error, self.starts = LogRing(client.key), "", 0

    async def ensure_ready(self) -> None:
        self.starts += 1
        raise TypeError("an engine doing something new")

    async def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "state": self.state.value}


async def test_an_unexpected_error_in_a_start_fails_the_waiters_and_never_loops() -> None:
    cfg = build_config({"server": {"restart_backoff_s": 5}, "models": [
        {"name": "x", "model_file": "/x.gguf", "ctx_size": 512, "vram_mb": 10}]})
    procs: list[_BuggyProcess] = []

    def factory(client: EngineClient, cb: StateCallback) -> Any:
        procs.append(_BuggyProcess(client, cb))
        return procs[-1]

    manager = EngineManager(cfg, None,  # type: ignore[arg-type]
                            client_factory=lambda m, v: _Boom(m, v), process_factory=factory,
                            gpu=GpuMonitor(smi=""))
    model = cfg.models[0]
    with pytest.raises(EngineUnavailable, match="start failed: TypeError"):
        await asyncio.wait_for(manager.acquire(model, Demand(10, 10)), 5)
    await asyncio.sleep(0.3)
    [record] = manager.records()
    assert procs[0].starts == 1                 # no tight loop of starts
    assert not record.starting and not record.stopping
    assert record.history.consecutive == 1
    assert "an engine doing something new" in manager.unexpected[0]
    await manager.shutdown(0)


def _lua(binary: str, *, tmp: Path, model_extra: str = "", args: str = "",
         homeostasis: str = "") -> str:
    port = free_port()  # an ephemeral engine port range: other test runs use the default one
    return f"""
server = {{ stop_grace_s = 1, log_dir = {lua_str(str(tmp / 'logs'))},
           engine_port_range = {{ {port}, {port + 20} }} }}
models = {{
  {{ name = "a", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 512,
    default_max_tokens = 16, vram_mb = 100, args = {{ {args} }}, {model_extra} {homeostasis} }},
}}
"""


def test_a_probe_with_malformed_logprobs_passes_the_request_through(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(write_config(tmp_path, _lua(
        fake_binary, tmp=tmp_path, args='"--fake-malformed-logprobs"',
        homeostasis='homeostasis = { mode = "homeostatic" },')))
    r = chat(gw, "a")
    assert r.status_code == 200, r.text
    assert r.headers["x-lkn-mode"] == "PASSTHROUGH"


def test_an_engine_closing_a_reused_connection_is_retried_on_a_fresh_one(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(write_config(tmp_path, _lua(
        fake_binary, tmp=tmp_path, args='"--fake-drop-reused"')))
    for _ in range(3):
        r = chat(gw, "a")
        assert r.status_code == 200, r.text
    proc = gw.call(gw.manager.ready_process, "a")
    assert "dropping a reused connection" in proc.logs.tail(100)  # the fault really happened


def test_a_reload_that_changes_health_settings_restarts_the_engine(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    path = tmp_path / "lkn.cfg.lua"
    path.write_text(_lua(fake_binary, tmp=tmp_path, model_extra="health_timeout_s = 20,"))
    gw: Gateway = gateway_factory(load_config(str(path)))
    assert chat(gw, "a").status_code == 200
    pid = gw.call(gw.manager.ready_process, "a").pid
    path.write_text(_lua(fake_binary, tmp=tmp_path, model_extra="health_timeout_s = 30,"))
    assert gw.call(reload_config, gw.app) is True
    assert chat(gw, "a").status_code == 200
    assert gw.call(gw.manager.ready_process, "a").pid != pid
    health = http("GET", gw.base_url + "/status").json()
    assert health["config"]["generation"] == 2 and health["config"]["last_reload_error"] is None


def test_overlapping_reloads_apply_in_order_and_coalesce(
        tmp_path: Path, fake_binary: str, gateway_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lkn.cfg.lua"
    path.write_text(_lua(fake_binary, tmp=tmp_path))
    gw: Gateway = gateway_factory(load_config(str(path)))
    loads: list[float] = []
    lock = threading.Lock()

    def slow_first_load(p: str) -> Any:
        cfg = load_config(p)
        with lock:
            loads.append(time.monotonic())
            first = len(loads) == 1
        if first:
            time.sleep(0.5)  # the first reload reads the file, then takes its time
        return cfg

    monkeypatch.setattr(lkn.gateway.reload, "load_config", slow_first_load)

    async def two_reloads() -> None:
        first = asyncio.ensure_future(reload_config(gw.app))
        await asyncio.sleep(0.1)
        path.write_text(_lua(fake_binary, tmp=tmp_path).replace('name = "a"', 'name = "b"'))
        second = asyncio.ensure_future(reload_config(gw.app))
        assert await first and await second

    gw.call(two_reloads)
    assert [m.id for m in gw.client().models.list().data] == ["b"]  # the newest file won

    async def storm() -> None:  # SIGHUPs during a reload: one more reload, not one each
        reloader = gw.app[RELOADER]
        for _ in range(4):
            reloader.request()
            await asyncio.sleep(0.01)
        while reloader._task is not None and not reloader._task.done():
            await asyncio.sleep(0.02)

    loads.clear()
    gw.call(storm)
    assert len(loads) == 2


def _noticed_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit watcher notices an engine's death a second late (its poll, on a busy box):
    the window in which lkn still believes a dead engine ready."""
    real = lkn.engines.process.wait_exit

    async def late(proc: Any, timeout: float | None = None) -> int | None:
        code = await real(proc, timeout)
        if timeout is None and code is not None:
            await asyncio.sleep(1.0)
        return code
    monkeypatch.setattr(lkn.engines.process, "wait_exit", late)


def test_a_request_to_an_engine_that_just_died_restarts_it_and_is_answered(
        tmp_path: Path, fake_binary: str, gateway_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the engine, send the next request at once: lkn still believes it ready, the
    connect fails, lkn looks at the process, finds it dead, restarts it and answers (never a
    502 for a request that reached no engine). Three times in a row."""
    _noticed_late(monkeypatch)
    gw: Gateway = gateway_factory(write_config(tmp_path, _lua(fake_binary, tmp=tmp_path)))
    for _ in range(3):
        assert chat(gw, "a").status_code == 200
        pid = gw.call(gw.manager.ready_process, "a").pid
        os.kill(pid, signal.SIGKILL)
        r = chat(gw, "a")
        assert r.status_code == 200, r.text
        assert gw.call(gw.manager.ready_process, "a").pid != pid  # restarted for it


def test_a_stream_broken_by_a_dead_engine_leaves_no_corpse_for_the_next_request(
        tmp_path: Path, fake_binary: str, gateway_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine dies mid-stream: that stream ends with an error event; lkn confirms the death
    before the relay returns, so the next request starts a fresh engine."""
    _noticed_late(monkeypatch)
    gw: Gateway = gateway_factory(write_config(tmp_path, _lua(
        fake_binary, tmp=tmp_path, args='"--fake-token-delay-s", "0.2"')))
    assert chat(gw, "a").status_code == 200
    pid = gw.call(gw.manager.ready_process, "a").pid
    request = urllib.request.Request(
        gw.base_url + "/v1/chat/completions", method="POST",
        data=json.dumps({"model": "a", "messages": MSG, "stream": True}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        while not resp.readline().startswith(b"data: "):  # comments first (": ping")
            pass
        os.kill(pid, signal.SIGKILL)
        rest = resp.read().decode()
    assert "error" in rest and "[DONE]" not in rest
    # the relay confirmed the death before it returned: no request is needed to find it
    assert gw.call(lambda: gw.manager.ready_process("a")) is None
    r = chat(gw, "a")
    assert r.status_code == 200, r.text
