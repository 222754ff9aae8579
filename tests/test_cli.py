"""The operator's CLI (lkn ps / load / unload / logs / reload, check-config) against a running
lkn daemon with the fake engine, as an operator would run it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lkn.cli import ps_table
from tests.conftest import ROOT, free_port, lkn_daemon, lua_str

MSG = [{"role": "user", "content": "hi"}]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def lkn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lkn", *args], capture_output=True, text=True,
                          timeout=120, env=env or ENV)


def write(tmp_path: Path, binary: str, port: int, server: str = "") -> Path:
    path = tmp_path / "lkn.cfg.lua"
    path.write_text(f"""
server = {{ listen = {{ "127.0.0.1:{port}" }}, stop_grace_s = 1, log_dir = "logs", {server} }}
models = {{
  {{ name = "a", binary = {lua_str(binary)}, model_file = "/x.gguf", vram_mb = 100,
    variants = {{ {{ ctx_size = 512 }}, {{ ctx_size = 1024 }} }} }},
}}
""")
    return path


def test_ps_load_unload_logs_reload_against_a_running_lkn(tmp_path: Path,
                                                          fake_binary: str) -> None:
    port = free_port()
    address = ["--address", f"127.0.0.1:{port}"]
    with tempfile.TemporaryFile("w+") as log, \
            lkn_daemon(write(tmp_path, fake_binary, port), port, stdout=log, stderr=log,
                       env=ENV) as (proc, client):
        # an http_proxy in the environment is not used: lkn is reached directly
        done = lkn("load", "a", *address, env={**ENV, "http_proxy": "http://127.0.0.1:9"})
        assert done.returncode == 0 and done.stdout.strip() == "a@512: ready", done.stderr
        client.chat.completions.create(model="a", messages=MSG, max_tokens=16,
                                       extra_headers={"x-request-id": "trace-42"})
        ps = lkn("ps", *address)
        assert ps.returncode == 0, ps.stderr
        header, first, second, total = ps.stdout.splitlines()[:4]
        assert header.split()[:3] == ["ENGINE", "STATE", "CONTEXT"]
        assert first.split()[:3] == ["a@512", "ready", "512"] and "~100 MiB" in first
        assert second.split()[:2] == ["a@1024", "stopped"]
        assert total.startswith("VRAM ~100 of 8192 MiB")
        logs = lkn("logs", "a@512", "-n", "3", *address)
        assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 3
        assert lkn("reload", *address).stdout.startswith("reloaded: config generation 2")
        done = lkn("unload", "a", *address)
        assert done.returncode == 0 and done.stdout.strip() == "a: stopped a@512"
        assert lkn("ps", *address).stdout.splitlines()[1].split()[:2] == ["a@512", "stopped"]
        refused = lkn("load", "nope", *address)
        assert refused.returncode == 1
        assert refused.stderr.strip().startswith("lkn load: lkn refused (404): The model 'nope'")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.seek(0)
        lines = [x for x in log.read().splitlines() if "[trace-42]" in x]
    # every line lkn wrote while serving that request carries its id
    assert any("lkn.request.handler [trace-42]: POST /v1/chat/completions model=a status=200" in x
               for x in lines), lines


def test_commands_fail_with_one_line_when_lkn_is_not_running() -> None:
    port = free_port()
    for args in (["ps"], ["load", "a"], ["unload", "a"], ["logs", "a"], ["reload"]):
        done = lkn(*args, "--address", f"127.0.0.1:{port}")
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1 and "lkn is not running on" in done.stderr, args


def test_the_admin_key_comes_from_the_environment(tmp_path: Path, fake_binary: str) -> None:
    port = free_port()
    address = ["--address", f"127.0.0.1:{port}"]
    with lkn_daemon(write(tmp_path, fake_binary, port, 'admin_keys = { "adm" }'), port,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV):
        refused = lkn("ps", *address)
        assert refused.returncode == 1 and "(401)" in refused.stderr
        ok = lkn("ps", *address, env={**ENV, "LKN_ADMIN_KEY": "adm"})
        assert ok.returncode == 0 and ok.stdout.startswith("ENGINE")


def test_check_config_reports_every_error_and_strict_fails_on_missing_files(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.lua"
    bad.write_text("""
server = { vram_budget_mb = -1, bogus = 1 }
models = { { name = "a", ctx_size = "big", model_file = "/x.gguf", parallel = 0 },
           { name = "b", model_file = "/x.gguf", ctx_size = 10, homeostasis = { top_k = 0 } } }
""")
    done = lkn("check-config", str(bad))
    assert done.returncode == 1
    errors = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert [e.split(":")[1].strip() for e in errors] == [
        "server.vram_budget_mb", "server.bogus", "models[1].ctx_size", "models[1].parallel",
        "models[2].homeostasis.top_k"]
    assert done.stderr.splitlines()[-1] == f"{bad}: 5 errors"
    good = tmp_path / "good.lua"
    good.write_text('models = { { name = "a", model_file = "/missing.gguf", ctx_size = 512 } }')
    loose = lkn("check-config", str(good))
    assert loose.returncode == 0 and "missing: a@512: /missing.gguf" in loose.stderr
    strict = lkn("check-config", "--strict", str(good))
    assert strict.returncode == 1 and "missing: a@512: /missing.gguf" in strict.stderr


def test_ps_table_shows_traffic_and_notes() -> None:
    status: dict[str, Any] = {
        "engines": [{"key": "m@512", "model": "m", "state": "ready", "ctx_size": 512,
                     "vram_mb": 300, "in_flight": 1, "idle_s": None, "pinned": True,
                     "failures": {"failed": False}},
                    {"key": "m@2048", "model": "m", "state": "stopped", "ctx_size": 2048,
                     "vram_mb": 900, "in_flight": 0, "idle_s": None,
                     "failures": {"failed": True}}],
        "models": {"m": {"traffic": {"300s": {"per_minute": 2.4, "p95_latency_s": 0.25}}}},
        "vram": {"estimated_mb": 300, "budget_mb": 8192}, "in_flight": 1, "queued": 0,
        "unload_candidates": [{"key": "x@1"}]}
    lines = ps_table(status).splitlines()
    assert lines[1].split() == ["m@512", "ready", "512", "~300", "MiB", "1", "-", "2.4",
                                "250ms", "pinned"]
    assert lines[2].split()[-1] == "FAILED"
    assert lines[-1] == "idle, could be unloaded: x@1"


def test_ps_table_names_backends_and_open_circuits() -> None:
    status: dict[str, Any] = {
        "engines": [{"key": "chat/a@8192", "model": "chat", "backend": "chat/a",
                     "state": "ready", "ctx_size": 8192, "vram_mb": 0, "in_flight": 0,
                     "idle_s": 3.0}],
        "models": {"chat": {"traffic": {}, "backends": [
            {"backend": "chat/a", "breaker": {"state": "open"}}]}}}
    assert ps_table(status).splitlines()[1].endswith("backend chat/a, circuit open")
