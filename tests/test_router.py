"""Beyond one box: two lkn nodes behind SGLang's real router (PyPI sglang-router), the openai
SDK as the client. One node is SIGKILLed mid-load: the router's retries and circuit breaker
carry the load to the other, and no request fails."""
from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ROOT, free_port, lkn_daemon, lua_str, wait_http

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sglang_router") is None,
                                reason="sglang-router is not installed (the test extra has it)")
MSG = [{"role": "user", "content": "hi"}]


def node(tmp_path: Path, binary: str, name: str, ports: str) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / f"{name}.cfg.lua"
    path.write_text(f"""
server = {{ listen = {{ "127.0.0.1:{port}" }}, stop_grace_s = 1, engine_port_range = {{ {ports} }},
           log_dir = {lua_str(str(tmp_path / name))} }}
models = {{ {{ name = "m", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 2048,
              vram_mb = 10, args = {{ "--fake-tokens", 4 }} }} }}
""")
    return path, port


def test_two_lkn_nodes_behind_sgl_router_survive_one_killed(tmp_path: Path,
                                                             fake_binary: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (c1, p1), (c2, p2) = (node(tmp_path, fake_binary, "a", "20600, 20649"),
                          node(tmp_path, fake_binary, "b", "20650, 20699"))
    router_port = free_port()
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    log = (tmp_path / "b.log").open("w")
    with log, lkn_daemon(c1, p1, env=env, **quiet) as (one, _), \
            lkn_daemon(c2, p2, env=env, stdout=log, stderr=log):
        router = subprocess.Popen(
            [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
             "--port", str(router_port), "--policy", "round_robin",
             "--health-check-endpoint", "/ready", "--health-check-interval-secs", "1",
             "--worker-urls", f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"], **quiet)
        try:
            wait_http(f"http://127.0.0.1:{router_port}/health", 60, "the router", status=200)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{router_port}/v1",
                                   api_key="x", max_retries=0, timeout=60)
            client.chat.completions.create(model="m", messages=MSG)  # engines warm
            client.chat.completions.create(model="m", messages=MSG)

            killed_at: list[float] = []

            def ask(i: int) -> tuple[float, str | None]:
                if i == 15:
                    killed_at.append(time.monotonic())
                    one.send_signal(signal.SIGKILL)
                started = time.monotonic()
                stream = i % 2 == 0
                try:
                    answer = client.chat.completions.create(model="m", messages=MSG,
                                                            stream=stream)
                    if stream:
                        return started, "".join(c.choices[0].delta.content or ""
                                                for c in answer if c.choices)
                    return started, answer.choices[0].message.content or ""
                except openai.APIError:  # the SDK's connection errors included
                    return started, None

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(ask, range(40)))
            # Only an answer the killed node was giving at that moment may break (a stream
            # whose bytes went out cannot move); every request sent after is answered whole.
            assert all(text == " w0 w1 w2 w3" or (text is None and started < killed_at[0])
                       for started, text in answers), answers
            assert sum(text is None for _, text in answers) <= 8
            # the router's HTTP/2 probe of each connection is not logged as an lkn error
            assert "Traceback" not in (tmp_path / "b.log").read_text()
        finally:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(20)
            except subprocess.TimeoutExpired:
                router.kill()
                router.wait()
