"""The processes bench/overhead.py measures: the fast fake engine, lkn in front of it (a real
``lkn serve`` child that spawns the fake as its model's engine) and, when installed, LiteLLM."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lkn import ROOT, child, free_port  # noqa: E402

sys.path.insert(0, ROOT)
from lkn.__main__ import wait_until_up  # noqa: E402
from lkn.config import load_config  # noqa: E402
from lkn.errors import ConfigError  # noqa: E402

ENGINE = os.path.join(ROOT, "bench", "fast_engine.py")


def wrapper(tmp: str) -> str:
    """An executable that runs the fake engine with this interpreter: lkn's ``binary``."""
    path = os.path.join(tmp, "fast-engine")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" "{ENGINE}" "$@"\n')
    os.chmod(path, 0o755)
    return path


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.05)


def lkn_config(tmp: str, port: int, cache_lua: str, server_lua: str = "") -> str:
    # The fake never reads the model, but lkn reads its chat template (the prompt bound that
    # spares counting calls) and tokenizer: the real SmolLM2 GGUF, as a deployment would have.
    try:
        from _lkn import smollm2
        model_file = smollm2()
    except SystemExit:
        model_file = os.path.join(tmp, "fast.gguf")  # any file: then lkn counts every prompt
        with open(model_file, "wb") as f:
            f.write(b"not a gguf")

    # parallel = 16: as many engine slots as connections, so lkn forwards all 16 at once as
    # the engine row serves them (with 1 slot lkn would queue 15 and measure its queue).
    def write(extra: str) -> str:
        path = os.path.join(tmp, "overhead.cfg.lua")
        with open(path, "w") as f:
            f.write(f'server = {{ listen = {{ "127.0.0.1:{port}" }}, log_dir = "{tmp}", '
                    f'state_dir = "{tmp}/state", {server_lua} }}\n'
                    f'models = {{ {{ name = "fast", binary = "{wrapper(tmp)}", '
                    f'model_file = "{model_file}", ctx_size = 4096, gpu_layers = 0, parallel = 16, '
                    f'vram_mb = 100, {extra} }} }}\n')
        return path

    if cache_lua:
        try:
            return load_config(write(cache_lua)).path
        except ConfigError as exc:
            print(f"(lkn rejects the cache config, measuring without it: {exc})")
    return write("")


@contextlib.contextmanager
def running_lkn(tmp: str, cache_lua: str, python: tuple[str, ...] = (sys.executable,),
                root: str = ROOT, server_lua: str = ""
                ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``lkn serve`` from the checkout ``root`` (``-P``: never from the working directory);
    ``server_lua``: more keys of its ``server`` table."""
    port = free_port()
    cfg = lkn_config(tmp, port, cache_lua, server_lua)
    argv = [python[0], "-P", *python[1:], "-m", "lkn", "serve", "--config", cfg]
    with child(argv, os.path.join(tmp, "lkn.log"), {"PYTHONPATH": root}) as proc:
        if wait_until_up(f"127.0.0.1:{port}", 60, lambda: proc.poll() is None) is None:
            raise RuntimeError(f"lkn did not start; see {tmp}/lkn.log")
        yield f"http://127.0.0.1:{port}", proc


@contextlib.contextmanager
def running_litellm(tmp: str, engine_url: str) -> Iterator[str | None]:
    if importlib.util.find_spec("litellm") is None:
        yield None
        return
    port = free_port()
    argv = [sys.executable, "-m", "litellm", "--model", "openai/fast", "--api_base",
            f"{engine_url}/v1", "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    with child(argv, os.path.join(tmp, "litellm.log"), {"OPENAI_API_KEY": "none"}):
        try:
            wait_http(f"http://127.0.0.1:{port}/health/liveliness", 90)
        except RuntimeError:
            print(f"(LiteLLM did not start; row skipped, see {tmp}/litellm.log)")
            yield None
            return
        yield f"http://127.0.0.1:{port}"


