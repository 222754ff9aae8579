"""The operator's CLI (lkn ps / load / unload / logs / reload, check-config, usage, activity)
against a running lkn daemon with the fake engine, as an operator would run it."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from lkn import cli
from lkn.cli import CommandFailed, activity_table, ps_table, since_epoch, usage_table
from tests.conftest import ROOT, Gateway, free_port, http, lkn_daemon, lua_str, write_config

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
    for args in (["ps"], ["load", "a"], ["unload", "a"], ["logs", "a"], ["reload"], ["usage"],
                 ["activity"]):
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


# ------------------------------------------------------------------ usage and activity

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", NOW - 1800), ("1h", NOW - 3600), ("7d", NOW - 7 * 86400), ("1.5h", NOW - 5400),
    ("45s", NOW - 45), ("2w", NOW - 14 * 86400), (" 1H ", NOW - 3600), ("0m", NOW),
    ("1699990000", 1699990000.0), ("1699990000.5", 1699990000.5),
])
def test_since_takes_a_duration_back_from_now_or_epoch_seconds(text: str,
                                                               expected: float) -> None:
    assert since_epoch(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "h", "yesterday", "-1h", "1y", "nan", "inf", "-5", "1hm"])
def test_since_refuses_what_is_neither(text: str) -> None:
    with pytest.raises(CommandFailed, match="duration .* or epoch seconds"):
        since_epoch(text, NOW)


def test_usage_table_aligns_the_sums_and_adds_a_total() -> None:
    payload = {"object": "list", "group_by": "key", "data": [
        {"key": "alice", "requests": 12, "errors": 1, "prompt_tokens": 300,
         "completion_tokens": 700, "reasoning_tokens": None, "total_tokens": 1000,
         "avg_latency_ms": 812.4, "avg_ttft_ms": 95.0},
        {"key": None, "requests": 3, "errors": 3, "prompt_tokens": None,
         "completion_tokens": None, "reasoning_tokens": None, "total_tokens": None,
         "avg_latency_ms": 2.0, "avg_ttft_ms": None}]}
    lines = usage_table(payload).splitlines()
    assert lines[0].split() == ["KEY", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "REASONING",
                                "TOTAL", "TOKENS", "AVG", "LATENCY", "AVG", "TTFT"]
    assert lines[1].split() == ["alice", "12", "1", "300", "700", "-", "1000", "812ms", "95ms"]
    assert lines[2].split() == ["-", "3", "3", "-", "-", "-", "-", "2ms", "-"]
    assert lines[3].split() == ["total", "15", "4", "300", "700", "0", "1000"]
    # columns line up: every row's second column starts where the header's does
    assert {line.index(line.split()[1], len(line.split()[0])) for line in lines} == {
        lines[0].index("REQUESTS")}
    one_day = usage_table({"group_by": "day", "data": [{"day": "2024-05-01", "requests": 1}]})
    assert one_day.splitlines()[0].startswith("DAY (UTC)") and len(one_day.splitlines()) == 2
    assert usage_table({"group_by": "model", "data": []}) == "no requests in this window"


def test_activity_table_shows_each_row_with_local_times_and_notes() -> None:
    rows = [{"id": 2, "ts": NOW, "request_id": "req-2", "key_id": "bob", "user": "Ann",
             "api": "openai", "route": "/v1/chat/completions", "model": "fast",
             "backend": None, "variant": 4096, "status": 200, "prompt_tokens": 5,
             "completion_tokens": 8, "reasoning_tokens": 0, "latency_ms": 41.6, "ttft_ms": 9.2,
             "mode": "FLUID", "intervention": None, "cache": "hit", "error": None, "body": None},
            {"id": 1, "ts": NOW - 60, "request_id": "req-1", "key_id": "alice", "user": None,
             "api": "openai", "route": "/v1/chat/completions", "model": "other",
             "backend": None, "variant": None, "status": 403, "prompt_tokens": None,
             "completion_tokens": None, "reasoning_tokens": None, "latency_ms": 1.0,
             "ttft_ms": None, "mode": None, "intervention": None, "cache": None,
             "error": "The key alice may not\nuse 'other'", "body": None}]
    lines = activity_table({"object": "list", "data": rows}).splitlines()
    assert lines[0].split()[:6] == ["TIME", "REQUEST", "KEY", "API", "MODEL", "STATUS"]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW))
    assert lines[1].startswith(when)
    assert lines[1].split()[2:10] == ["req-2", "bob", "openai", "fast@4096", "200", "5",
                                      "8", "42ms"]
    assert lines[1].endswith("9ms   user Ann; FLUID; cache hit")
    assert lines[2].split()[2:7] == ["req-1", "alice", "openai", "other", "403"]
    assert lines[2].endswith("The key alice may not use 'other'")  # one line per row
    assert activity_table({"data": []}) == "no requests match"


def run_cli(*argv: str) -> int:
    """One of the operator's commands in this process (stdout and stderr for capsys)."""
    parser = argparse.ArgumentParser(prog="lkn")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


TEAM = """
server = {{ stop_grace_s = 1, state_dir = {state_dir}, {server}
  keys = {{
    {{ id = "alice", key = "sk-alice", models = {{ "fast" }}, requests_per_minute = 60 }},
    {{ id = "bob", key = "sk-bob", tokens_per_day = 1000 }},
  }},
}}
models = {{
  {{ name = "fast", binary = {binary}, model_file = "/x.gguf", ctx_size = 4096 }},
  {{ name = "other", binary = {binary}, model_file = "/y.gguf", ctx_size = 4096 }},
}}
"""


def team(tmp_path: Path, binary: str, server: str = "") -> Any:
    return write_config(tmp_path, TEAM.format(state_dir=lua_str(str(tmp_path / "state")),
                                              binary=lua_str(binary), server=server))


def ask(gw: Gateway, key: str, model: str) -> None:
    with gw.client(api_key=key) as client:
        client.chat.completions.create(model=model, messages=MSG, max_tokens=8)


def test_usage_and_activity_read_the_log_of_a_running_lkn(
        tmp_path: Path, fake_binary: str, gateway_factory: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    gw = gateway_factory(team(tmp_path, fake_binary))
    address = ("--address", f"127.0.0.1:{gw.port}")
    for key, model in (("sk-alice", "fast"), ("sk-alice", "fast"), ("sk-bob", "other")):
        ask(gw, key, model)
    with pytest.raises(openai.PermissionDeniedError):
        ask(gw, "sk-alice", "other")
    deadline = time.monotonic() + 10  # the log is written off the request path, in batches
    while len(http("GET", gw.base_url + "/admin/activity").json()["data"]) < 4:
        assert time.monotonic() < deadline, "the activity log did not get 4 rows"
        time.sleep(0.05)
    sums = {u["key"]: u for u in
            http("GET", gw.base_url + "/admin/usage?group_by=key").json()["data"]}
    capsys.readouterr()

    assert run_cli("usage", *address) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["KEY", "REQUESTS", "ERRORS"]
    table = {line.split()[0]: line.split()[1:7] for line in lines[1:]}
    for key in ("alice", "bob"):
        s = sums[key]
        assert table[key] == [str(s["requests"]), str(s["errors"]), str(s["prompt_tokens"]),
                              str(s["completion_tokens"]), str(s["reasoning_tokens"]),
                              str(s["total_tokens"])]
    assert table["alice"][:2] == ["3", "1"] and table["total"][:2] == ["4", "1"]

    assert run_cli("usage", "--group-by", "model", "--since", "1h", "--json", *address) == 0
    by_model = json.loads(capsys.readouterr().out)
    assert by_model["group_by"] == "model"
    assert {u["model"]: u["requests"] for u in by_model["data"]} == {"fast": 2, "other": 2}
    assert run_cli("usage", "--key", "bob", "--since", str(time.time() + 3600), *address) == 0
    assert capsys.readouterr().out.strip() == "no requests in this window"  # from the future

    assert run_cli("activity", "--status", "error", *address) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[3:7] == ["alice", "openai", "other", "403"]
    assert run_cli("activity", "--key", "alice", "--limit", "2", "--since", "30m", "--json",
                   *address) == 0
    rows = json.loads(capsys.readouterr().out)["data"]
    assert [r["key_id"] for r in rows] == ["alice", "alice"] and rows[0]["id"] > rows[1]["id"]
    assert run_cli("activity", "--model", "fast", *address) == 0
    assert [line.split()[3] for line in capsys.readouterr().out.splitlines()[1:]] == [
        "alice", "alice"]

    assert run_cli("usage", "--since", "yesterday", *address) == 1
    err = capsys.readouterr().err
    assert err == ("lkn usage: --since 'yesterday': give a duration (30m, 1h, 7d) or epoch "
                   "seconds\n")


def test_usage_and_activity_say_why_lkn_refused(tmp_path: Path, fake_binary: str,
                                                gateway_factory: Any,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    gw = gateway_factory(team(tmp_path, fake_binary, server='admin_keys = { "adm" }, '
                                                           'activity = { enabled = false },'))
    address = ("--address", f"127.0.0.1:{gw.port}")
    monkeypatch.delenv("LKN_ADMIN_KEY", raising=False)
    for command in ("usage", "activity"):
        assert run_cli(command, *address) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"lkn {command}: lkn refused (401): ") and err.count("\n") == 1
    monkeypatch.setenv("LKN_ADMIN_KEY", "sk-alice")  # a client key is no admin key
    assert run_cli("usage", *address) == 1
    assert "lkn refused (401)" in capsys.readouterr().err
    monkeypatch.setenv("LKN_ADMIN_KEY", "adm")
    for command in ("usage", "activity"):
        assert run_cli(command, "--json", *address) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (f"lkn {command}: lkn refused (503): the activity log is off "
                                "(server.activity.enabled = false)\n")
    # argparse refuses a status that is none, before lkn is asked
    done = lkn("activity", "--status", "oops", *address)
    assert done.returncode == 2 and "neither an HTTP status nor 'error'" in done.stderr
