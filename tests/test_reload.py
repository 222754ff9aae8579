"""Config reload (SIGHUP): unchanged engines keep running, changed ones drain then restart."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lkn.server import reload_config
from tests.conftest import ROOT, Gateway, free_port, lkn_daemon, lua_str, write_config

MSG = [{"role": "user", "content": "hi"}]


def lua(binary: str, b_args: str, extra_model: str = "", server: str = "") -> str:
    return f"""
server = {{ stop_grace_s = 1, log_dir = "logs-reload", {server} }}
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
