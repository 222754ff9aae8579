"""Config reload (SIGHUP): unchanged engines keep running, changed ones drain then restart."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lkn.gateway.reload import reload_config
from tests.conftest import ROOT, Gateway, free_port, lkn_daemon, lua_str, write_config

MSG = [{"role": "user", "content": "hi"}]


def lua(binary: str, b_args: str, extra_model: str = "", server: str = "",
        log_dir: str = "") -> str:
    logs = f"log_dir = {lua_str(log_dir)}," if log_dir else ""
    return f"""
server = {{ stop_grace_s = 1, {logs} {server} }}
models = {{
  {{ name = "a", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 512, default_max_tokens = 16,
    vram_mb = 100 }},
  {{ name = "b", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 512, default_max_tokens = 16,
    vram_mb = 100, args = {{ {b_args} }} }},
  {extra_model}
}}
"""


def test_reload_keeps_unchanged_engines_and_drains_changed_ones(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    cfg = write_config(tmp_path, lua(fake_binary, '"--fake-tokens", 40, '
                                                  '"--fake-token-delay-s", 0.05'))
    gw: Gateway = gateway_factory(cfg)
    client = gw.client()
    client.chat.completions.create(model="a", messages=MSG)
    client.chat.completions.create(model="b", messages=MSG)
    pid_a = gw.call(gw.manager.ready_process, "a").pid
    pid_b = gw.call(gw.manager.ready_process, "b").pid

    def stream_b() -> str:
        s = client.chat.completions.create(model="b", messages=MSG, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in s if c.choices)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        inflight = pool.submit(stream_b)
        time.sleep(0.5)
        (tmp_path / "lkn.cfg.lua").write_text(lua(
            fake_binary, '"--fake-tokens", 3',
            f'{{ name = "c", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", '
            f'ctx_size = 256, vram_mb = 100, default_max_tokens = 16 }},'))
        assert gw.call(reload_config, gw.app) is True
        assert inflight.result(30) == "".join(f" w{i}" for i in range(40))  # not cut
    assert gw.call(gw.manager.ready_process, "a").pid == pid_a  # unchanged: kept
    r = client.chat.completions.create(model="b", messages=MSG)
    assert r.choices[0].message.content == " w0 w1 w2"  # restarted with the new args
    assert gw.call(gw.manager.ready_process, "b").pid != pid_b
    assert client.chat.completions.create(model="c", messages=MSG).choices
    deadline = time.monotonic() + 10
    while any(e["retired"] for e in gw.call(gw.manager.describe)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(e["retired"] for e in gw.call(gw.manager.describe))


def test_bad_config_on_reload_keeps_the_running_one(tmp_path: Path, fake_binary: str,
                                                    gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(write_config(tmp_path, lua(fake_binary, "")))
    (tmp_path / "lkn.cfg.lua").write_text('models = { { name = "a", ctx_size = "big" } }')
    assert gw.call(reload_config, gw.app) is False
    assert [m.id for m in gw.client().models.list().data] == ["a", "b"]


def test_sighup_reloads_a_running_daemon(tmp_path: Path, fake_binary: str) -> None:
    port = free_port()
    path = tmp_path / "lkn.cfg.lua"
    server = f'listen = {{ "127.0.0.1:{port}" }}'
    path.write_text(lua(fake_binary, "", server=server))
    with lkn_daemon(path, port, cwd=tmp_path, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)}
                    ) as (proc, client):
        assert [m.id for m in client.models.list().data] == ["a", "b"]
        path.write_text(lua(fake_binary, "", server=server, extra_model=(
            f'{{ name = "c", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", '
            f'ctx_size = 256, default_max_tokens = 16 }},')))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while [m.id for m in client.models.list().data] != ["a", "b", "c"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.chat.completions.create(model="c", messages=MSG).choices
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_listens_on_ipv4_and_ipv6_at_once(tmp_path: Path, fake_binary: str) -> None:
    import socket

    import openai
    port = free_port()
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))  # the loopback has IPv6 here; the test needs it
    path = tmp_path / "lkn.cfg.lua"
    path.write_text(lua(fake_binary, "",
                        server=f'listen = {{ "127.0.0.1:{port}", "[::1]:{port}" }}'))
    with lkn_daemon(path, port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as (proc,
                                                                                        _):
        v6 = openai.OpenAI(base_url=f"http://[::1]:{port}/v1", api_key="x", max_retries=0)
        assert [m.id for m in v6.models.list().data] == ["a", "b"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_sigterm_drains_inflight_stream_then_stops_engines(tmp_path: Path,
                                                           fake_binary: str) -> None:
    import psutil
    port = free_port()
    path = tmp_path / "lkn.cfg.lua"
    path.write_text(lua(fake_binary, '"--fake-tokens", 30, "--fake-token-delay-s", 0.05',
                        server=f'listen = {{ "127.0.0.1:{port}" }}, shutdown_drain_s = 20'))
    with lkn_daemon(path, port, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as (proc,
                                                                                        client):
        stream = client.chat.completions.create(model="b", messages=MSG, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        engines = psutil.Process(proc.pid).children(recursive=True)
        assert engines
        proc.send_signal(signal.SIGTERM)
        rest = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        text = (first.choices[0].delta.content or "") + "".join(rest)
        assert text == "".join(f" w{i}" for i in range(30))  # finished intact
        assert proc.wait(30) == 0
        _, alive = psutil.wait_procs(engines, timeout=5)
        assert not alive
