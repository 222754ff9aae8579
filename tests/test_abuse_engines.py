"""Abuse tests of the engines' side of the trust boundary (issue #20, items 4 and 5): no prompt in
any log, private log files, no engine output in client errors, engines only lkn can call, an
allow-listed engine environment, a refused health check as "not my engine", a hung nvidia-smi.
Each test fails without its fix; those about llama-server run the real one where they can."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil
import pytest

from lkn.config import ModelConfig, UpstreamConfig, VariantConfig
from lkn.engines.base import EngineRequestError
from lkn.engines.child_env import engine_env, upstream_key_names
from lkn.engines.command import CommandEngine
from lkn.engines.footprint import parse_footprint
from lkn.engines.gpu import GpuMonitor
from lkn.engines.llamacpp import LlamaCppEngine, kept_after_ready
from lkn.engines.logs import LogRing, redact_argv
from lkn.engines.process import EngineProcess, PortPool, State
from lkn.fleet.processes import ProcessMaker
from tests.conftest import (FAKE_LLAMA, FAKE_SGLANG, fake_process, free_port, http, lua_str,
                            make_wrapper, smollm2_path, write_config)
from tests.fakes.hf_model import make_hf_model_dir
from tests.sglang_support import sg_process

MARKER = "zebra-quartz-7741-marker"
CHAT = {"model": "m", "messages": [{"role": "user", "content": f"Repeat: {MARKER}"}],
        "max_tokens": 4}


def gateway_config(tmp_path: Path, binary: str, model_file: str, *args: str,
                   extra_models: str = "", model_extra: str = "") -> Any:
    port = free_port()
    quoted = ", ".join(lua_str(a) for a in args)
    binary_entry = f"binary = {lua_str(binary)}," if binary else ""  # "": the real llama-server
    return write_config(tmp_path, f"""
server = {{ stop_grace_s = 5, log_dir = {lua_str(str(tmp_path / 'logs'))},
           state_dir = {lua_str(str(tmp_path / 'state'))}, engine_start_timeout_s = 120,
           engine_port_range = {{ {port}, {port + 20} }} }}
models = {{
  {{ name = "m", {binary_entry} model_file = {lua_str(model_file)}, gpu_layers = 0,
    ctx_size = 512, args = {{ {quoted} }}, {model_extra} }},
  {extra_models}
}}
""")


def chat(base_url: str, body: dict[str, Any] = CHAT) -> Any:
    return http("POST", base_url + "/v1/chat/completions", json.dumps(body), timeout=120)


def engine_row(base_url: str) -> dict[str, Any]:
    rows = [e for e in http("GET", base_url + "/status").json()["engines"] if e["model"] == "m"]
    assert len(rows) == 1, rows
    return rows[0]


def assert_marker_nowhere(log_dir: Path, base_url: str, engine: str) -> None:
    files = [p for p in log_dir.rglob("*") if p.is_file()]
    assert files, "the engine wrote no log"
    for path in files:
        assert MARKER not in path.read_text(errors="replace"), path
    api = http("GET", f"{base_url}/admin/engines/{quote(engine, safe='')}/logs?lines=10000")
    assert api.status_code == 200, api.text
    assert api.json()["lines"] and MARKER not in api.text


# ---------------------------------------------------------------- 4: no prompt in any log

def test_a_debug_level_engine_logs_no_prompt(tmp_path: Path, fake_binary: str,
                                             gateway_factory: Any) -> None:
    """The footprint run (``-lv 4``, the first start of a variant) of a build whose debug
    log carries request bodies: the prompt reaches no file under log_dir, nor the log API."""
    gw = gateway_factory(gateway_config(tmp_path, fake_binary, "/nonexistent.gguf",
                                        "--fake-debug-bodies"))
    assert chat(gw.base_url).status_code == 200
    row = engine_row(gw.base_url)
    log_text = Path(row["log"]).read_text()
    assert " -lv 4 " in log_text  # it was the debug-level start
    assert "only I/W/E lines kept" in log_text
    assert_marker_nowhere(tmp_path / "logs", gw.base_url, row["engine"])


@pytest.mark.engine
def test_real_footprint_run_logs_no_prompt(tmp_path: Path, gateway_factory: Any) -> None:
    """The real llama-server's footprint run: measured, and the prompt is in no log."""
    gw = gateway_factory(gateway_config(tmp_path, "", smollm2_path(), "--threads", "1"))
    assert chat(gw.base_url).status_code == 200
    row = engine_row(gw.base_url)
    assert row["vram_measured_mb"]  # the footprint was learned from this very start
    assert " -lv 4 " in Path(row["log"]).read_text()
    assert_marker_nowhere(tmp_path / "logs", gw.base_url, row["engine"])


# The pinned llama-server at -lv 4 --log-prefix (SmolLM2-135M Q4_1, CPU), lines as it printed them
PREFIXED_REPORT = [
    "0.00.259.458 I load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
    "0.00.261.764 I llama_context:        CPU  output buffer size =     0.75 MiB",
    "0.00.261.901 I llama_kv_cache:        CPU KV buffer size =    11.25 MiB",
    "0.00.276.029 I sched_reserve:        CPU compute buffer size =    15.14 MiB",
]


@pytest.mark.parametrize("line, kept", [
    ("0.00.333.816 I srv  llama_server: listening on http://127.0.0.1:18931\n", True),
    ("0.00.007.270 W srv  llama_server: security: no API key is set\n", True),
    ("0.12.004.101 E srv    send_error: task id = 0, error: CUDA error: out of memory\n", True),
    (PREFIXED_REPORT[0], True),
    ("0.05.013.570 D srv  log_server_r: request: {\"messages\": ...}\n", False),
    ("\trepeat_last_n = 64, repeat_penalty = 1.000\n", False),  # a continuation line
    ("<|im_start|>user\n", False),
    ("I need help with my taxes\n", False),  # a prompt's line: no time, no level
    ("E = mc2\n", False),
    ("0.05.013.570 X srv  something\n", False),
    ("warning: no usable GPU found\n", False),
    ("", False),
])
def test_after_ready_a_debug_start_keeps_only_normal_level_lines(line: str, kept: bool) -> None:
    assert kept_after_ready(line) is kept


def test_the_footprint_is_read_from_prefixed_lines() -> None:
    footprint = parse_footprint(PREFIXED_REPORT)
    assert footprint is not None
    assert footprint.buffers == {"CPU_Mapped": {"model": 92.1},
                                 "CPU": {"output": 0.75, "KV": 11.25, "compute": 15.14}}


async def test_a_debug_start_keeps_its_errors_after_ready_not_its_debug_lines(
        fake_binary: str) -> None:
    """After ready, a footprint start's debug lines (a request body, a prompt on continuation
    lines) are dropped; its errors and warnings stay, for the crash or OOM that follows."""
    model = ModelConfig(name="m", engine="llamacpp", binary=fake_binary, variants=(
        VariantConfig(512, "/nonexistent.gguf", 0, args=("--fake-debug-bodies",)),))
    client = LlamaCppEngine(model, model.variants[0])
    client.learn_footprint = True
    port = free_port()
    async with aiohttp.ClientSession() as session:
        proc = EngineProcess(client, ports=PortPool(port, port + 20), session=session,
                             start_timeout_s=20, stop_grace_s=2)
        await proc.ensure_ready()
        try:
            for body in (CHAT, {**CHAT, "fake_error_status": 500}):
                async with session.post(proc.base_url + "/v1/chat/completions", json=body,
                                        headers=client.headers()) as resp:
                    await resp.read()
        finally:
            await proc.stop()
    log = proc.logs.tail(400)
    assert "--log-prefix" in log and " -lv 4 " in log
    assert MARKER not in log and "log_server_r" not in log and "formatted prompt" not in log
    assert "a debug-level start: only I/W/E lines kept after it" in log
    assert "injected engine error 500" in log and "fake: SIGTERM, exiting" in log


def test_engine_logs_are_private(tmp_path: Path) -> None:
    """0640 files in a 0750 directory, whatever the umask; an older, wider file is tightened."""
    old_umask = os.umask(0o002)
    try:
        ring = LogRing("m@512", log_dir=str(tmp_path / "logs"))
        ring.append("hello")
        ring.close()
        older = tmp_path / "logs" / "old@512.log"
        older.write_text("before\n")
        older.chmod(0o666)
        old = LogRing("old@512", log_dir=str(tmp_path / "logs"))
        old.append("after")
        old.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "logs" / "m@512.log").stat().st_mode) == 0o640
    assert stat.S_IMODE(older.stat().st_mode) == 0o640


@pytest.mark.parametrize("argv, shown", [
    (["srv", "--api-key", "K1", "--port", "1"], ["srv", "--api-key", "***", "--port", "1"]),
    (["srv", "--api-key=K1"], ["srv", "--api-key=***"]),
    (["srv", "--hf-token", "T", "--hf_token=T"], ["srv", "--hf-token", "***", "--hf_token=***"]),
    (["srv", "--admin-api-key", "A", "--client-secret", "S", "--password", "P"],
     ["srv", "--admin-api-key", "***", "--client-secret", "***", "--password", "***"]),
    # paths are no secrets; a flag without a value hides nothing after it
    (["srv", "--api-key-file", "/k", "--ssl-key-file", "/s"],
     ["srv", "--api-key-file", "/k", "--ssl-key-file", "/s"]),
    (["srv", "--skip-tokenizer-init", "--max-total-tokens", "4096", "--tokenizer-path", "/t"],
     ["srv", "--skip-tokenizer-init", "--max-total-tokens", "4096", "--tokenizer-path", "/t"]),
    (["srv", "--api-key", "--port", "1"], ["srv", "--api-key", "--port", "1"]),
    (["srv", "-c", "512", "--cache-type-k", "q8_0", "--keep", "8"],
     ["srv", "-c", "512", "--cache-type-k", "q8_0", "--keep", "8"]),
])
def test_start_line_redacts_secret_looking_args(argv: list[str], shown: list[str]) -> None:
    assert redact_argv(argv) == shown


def test_client_error_of_a_failed_start_carries_no_engine_output(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    """The 503s of a start that failed, and of the FAILED engine after it, say why in lkn's
    words: no engine line and no start line (whose argv may hold secrets). The tail is in
    /status, for admins, with the secret-looking argument redacted."""
    gw = gateway_factory(gateway_config(tmp_path, fake_binary, "/nonexistent.gguf",
                                        "--fake-exit-before-ready", "3",
                                        "--hf-token", "s3cr3t-hf-token"))
    first, second = chat(gw.base_url), chat(gw.base_url)
    for answer in (first, second):
        assert answer.status_code == 503, answer.text
        text = answer.text
        assert "out of memory while loading tensors" not in text
        assert "--- lkn:" not in text and "s3cr3t" not in text and MARKER not in text
    assert "exited with code 3" in first.json()["error"]["message"]
    row = engine_row(gw.base_url)
    assert row["state"] == "failed"
    assert "out of memory while loading tensors" in row["log_tail"]
    assert "--hf-token ***" in row["log_tail"] and "s3cr3t" not in row["log_tail"]
    assert "s3cr3t" not in Path(row["log"]).read_text()


# ---------------------------------------------------------------- 5: engines only lkn can call

@pytest.mark.engine
def test_real_engine_refuses_callers_without_the_key(tmp_path: Path,
                                                     gateway_factory: Any) -> None:
    """lkn's requests work (health, /props, template, tokenize, chat); the engine's own port
    answers 401 to anyone else; the key is on neither the argv nor in the log."""
    gw = gateway_factory(gateway_config(tmp_path, "", smollm2_path(), "--threads", "1"))
    assert chat(gw.base_url).status_code == 200
    process = gw.manager.records()[0].process
    key = process.client.engine_key
    assert key and len(key) >= 32
    # lkn's own helper calls, the exact token count included
    counted = gw.call(process.client.count_tokens, gw.state.session, process.base_url, "chat",
                      {"messages": CHAT["messages"]})
    assert counted > 5
    direct = f"http://127.0.0.1:{process.port}"
    for path, method in (("/v1/chat/completions", "POST"), ("/props", "GET"),
                         ("/tokenize", "POST"), ("/slots", "GET")):
        body = json.dumps(CHAT) if method == "POST" else None
        answer = http(method, direct + path, body)
        assert answer.status_code == 401, (path, answer.status_code)
        assert answer.json()["error"]["type"] == "authentication_error"
    assert http("POST", direct + "/v1/chat/completions", json.dumps(CHAT),
                headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert key not in " ".join(psutil.Process(process.pid).cmdline())
    assert key not in Path(process.logs.path).read_text()


async def test_command_engine_gets_its_key_in_the_named_variable(tmp_path: Path) -> None:
    """``engine_key_env`` names the variable; every call lkn makes carries the key."""
    binary = make_wrapper(tmp_path, FAKE_LLAMA, "fake-command")
    model = ModelConfig(name="cmd", engine="command", engine_key_env="LLAMA_API_KEY",
                        command=(binary, "--port", "{port}", "-c", "{ctx_size}"),
                        variants=(VariantConfig(512, "/nonexistent.gguf", 0),))
    port = free_port()
    async with aiohttp.ClientSession() as session:
        proc = EngineProcess(CommandEngine(model, model.variants[0]),
                             ports=PortPool(port, port + 20), session=session,
                             start_timeout_s=20, stop_grace_s=2)
        try:
            await proc.ensure_ready()
            assert proc.state is State.READY
            async with session.get(proc.base_url + "/props") as resp:
                assert resp.status == 401  # the key is required ...
            result = await proc.client.probe(session, proc.base_url, "chat",
                                             {"messages": CHAT["messages"]}, 3, 2)
            assert result.positions  # ... and lkn's calls carry it
        finally:
            await proc.stop()


async def test_sglang_engine_refuses_callers_without_the_key(tmp_path: Path) -> None:
    """SGLang takes the key as ``--api-key`` (its only way); neither lkn's start line nor
    SGLang's own ``server_args=`` line shows it in the log; the engine's routes answer 401
    without it while lkn's own calls (readiness, /server_info, /tokenize, the probe) work."""
    hf_dir = make_hf_model_dir(tmp_path / "tiny-hf")
    python = make_wrapper(tmp_path, FAKE_SGLANG, "fake-python")
    async with aiohttp.ClientSession() as session:
        proc = await sg_process(hf_dir, python, session)
        proc.logs = LogRing(proc.key, log_dir=str(tmp_path / "logs"))
        try:
            await proc.ensure_ready()
            key = proc.client.engine_key
            logged = proc.logs.tail(400) + Path(str(proc.logs.path)).read_text()
            assert key and "--api-key ***" in logged and "api_key='***'" in logged
            assert key not in logged
            for path in ("/v1/models", "/server_info", "/v1/loads"):
                async with session.get(proc.base_url + path) as resp:
                    assert resp.status == 401, path
            assert await proc.client.count_tokens(session, proc.base_url, "chat",
                                                  {"messages": CHAT["messages"]}) > 0
            result = await proc.client.probe(session, proc.base_url, "completions",
                                             {"prompt": "hello"}, 3, 2)
            assert result.positions
        finally:
            await proc.stop()


@pytest.mark.parametrize("name, passed", [
    ("PATH", True), ("HOME", True), ("LC_CTYPE", True), ("TMPDIR", True),
    ("CUDA_VISIBLE_DEVICES", True), ("NVIDIA_VISIBLE_DEVICES", True), ("HIP_VISIBLE_DEVICES", True),
    ("HF_HOME", True), ("HUGGINGFACE_HUB_CACHE", True), ("VIRTUAL_ENV", True),
    ("PYTHONPATH", True), ("OMP_NUM_THREADS", True), ("GGML_CUDA_NO_PINNED", True),
    ("LLAMA_ARG_THREADS", True), ("SGLANG_USE_MODELSCOPE", True), ("TORCH_HOME", True),
    ("TRITON_CACHE_DIR", True), ("XDG_CACHE_HOME", True), ("HTTPS_PROXY", True),
    ("LLAMA_API_KEY", False), ("LLAMA_ARG_API_KEY_FILE", False), ("OPENAI_API_KEY", False),
    ("ANTHROPIC_API_KEY", False), ("LKN_ADMIN_KEY", False), ("AWS_SECRET_ACCESS_KEY", False),
    ("NOTIFY_SOCKET", False), ("WATCHDOG_USEC", False), ("SSH_AUTH_SOCK", False),
    ("path", False), ("GITHUB_TOKEN", False),
])
def test_engine_env_allow_list(name: str, passed: bool) -> None:
    assert (name in engine_env({name: "v"}, ())) is passed


def test_engine_environment_is_allow_listed() -> None:
    environ = {
        "PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
        "CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "/hf", "HF_TOKEN": "hf-download",
        "VIRTUAL_ENV": "/venv", "PYTHONPATH": "/p", "GGML_CUDA_NO_PINNED": "1",
        "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1", "XDG_CACHE_HOME": "/c",
        # lkn's own secrets and unrelated ones
        "OPENAI_API_KEY": "sk-up", "HF_UPSTREAM_KEY": "hf-up", "LKN_ADMIN_KEY": "adm",
        "AWS_SECRET_ACCESS_KEY": "aws", "NOTIFY_SOCKET": "/run/n", "LLAMA_API_KEY": "old",
        "LLAMA_ARG_API_KEY_FILE": "/keys", "SSH_AUTH_SOCK": "/s",
    }
    env = engine_env(environ, (("MY_SETTING", "1"), ("OPENAI_API_KEY", "operator-chose")),
                     withheld=frozenset({"HF_UPSTREAM_KEY"}))
    assert env == {
        "PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
        "CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "/hf", "HF_TOKEN": "hf-download",
        "VIRTUAL_ENV": "/venv", "PYTHONPATH": "/p", "GGML_CUDA_NO_PINNED": "1",
        "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1", "XDG_CACHE_HOME": "/c",
        # the model's env table is the operator's, for this engine
        "MY_SETTING": "1", "OPENAI_API_KEY": "operator-chose",
    }
    variants = (VariantConfig(512, "/m.gguf", 0),)

    def remote(name: str, key: str) -> ModelConfig:
        return ModelConfig(name=name, engine="remote", variants=variants,
                           upstream=UpstreamConfig(url="http://x/v1", api_key_env=key))
    parent = ModelConfig(name="p", engine="llamacpp", variants=variants,
                         backends=(remote("b", "B_KEY"),))
    local = ModelConfig(name="local", engine="llamacpp", variants=variants)
    assert upstream_key_names([remote("up", "HF_UPSTREAM_KEY"), parent, local]) == \
        {"HF_UPSTREAM_KEY", "B_KEY"}


def test_spawned_engine_sees_no_upstream_key(tmp_path: Path, fake_binary: str,
                                             gateway_factory: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream key lkn holds (even one named like an allowed HF_* variable) and lkn's
    own LLAMA_API_KEY never reach the engine; the start's own key does."""
    monkeypatch.setenv("HF_UPSTREAM_TOKEN", "upstream-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "another-secret")
    monkeypatch.setenv("LLAMA_API_KEY", "lkns-own")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    dump = tmp_path / "env.json"
    remote = ('{ name = "remote", upstream = { url = "http://127.0.0.1:9/v1", '
              'api_key_env = "HF_UPSTREAM_TOKEN" } },')
    gw = gateway_factory(gateway_config(tmp_path, fake_binary, "/nonexistent.gguf",
                                        "--fake-env-dump", str(dump), extra_models=remote,
                                        model_extra='env = { MY_SETTING = "on" }'))
    assert chat(gw.base_url).status_code == 200
    env = json.loads(dump.read_text())
    assert "HF_UPSTREAM_TOKEN" not in env and "OPENAI_API_KEY" not in env
    assert "upstream-secret" not in env.values() and "another-secret" not in env.values()
    assert env["LLAMA_API_KEY"] == gw.manager.records()[0].process.client.engine_key
    assert env["HF_HOME"] == str(tmp_path / "hf") and env["MY_SETTING"] == "on"
    assert env["PATH"] == os.environ["PATH"]


async def test_a_restart_after_a_reload_withholds_the_upstream_keys_it_added(
        tmp_path: Path, fake_binary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process kept across a reload that adds an upstream whose key's name the allow-list
    passes (HF_*): the engine's next start does not inherit that key."""
    monkeypatch.setenv("HF_TOKEN_UPSTREAM", "added-by-the-reload")
    dump = tmp_path / "env.json"
    remote = ('{ name = "remote", upstream = { url = "http://127.0.0.1:9/v1", '
              'api_key_env = "HF_TOKEN_UPSTREAM" } },')
    configs = [gateway_config(tmp_path, fake_binary, "/nonexistent.gguf", "--fake-env-dump",
                              str(dump), extra_models=extra) for extra in ("", remote)]
    in_force = configs[0]
    model = in_force.models[0]
    port = free_port()
    async with aiohttp.ClientSession() as session:
        maker = ProcessMaker(config=lambda: in_force, session=session,
                             ports=PortPool(port, port + 20))
        proc = maker(LlamaCppEngine(model, model.variants[0]), lambda p, old: None)
        await proc.ensure_ready()
        await proc.stop()
        assert json.loads(dump.read_text())["HF_TOKEN_UPSTREAM"] == "added-by-the-reload"
        in_force = configs[1]  # the reload
        await proc.ensure_ready()
        await proc.stop()
    assert "HF_TOKEN_UPSTREAM" not in json.loads(dump.read_text())


async def test_a_refused_health_check_is_not_my_engine(fake_binary: str) -> None:
    """Another llama-server (another lkn's engine) holds the port lkn picked: its /health
    says 200, but it refuses this start's key. lkn never takes it for its own engine: a port
    conflict, started again on another port."""
    import lkn.engines.proctree as proctree
    port = free_port()
    foreign = subprocess.Popen([sys.executable, str(FAKE_LLAMA), "--port", str(port),
                                "--api-key", "someone-elses"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            proc = fake_process(fake_binary, session, "--fake-listen-delay-s", "1", port=port)
            saved = proctree._port_free
            proctree._port_free = lambda p: True  # lkn's own check missed the other server
            try:
                await proc.ensure_ready()
            finally:
                proctree._port_free = saved
            try:
                assert proc.state is State.READY and proc.port != port
                assert "refuses this start's engine key" in proc.logs.tail(400)
                async with session.get(proc.base_url + "/props",
                                       headers=proc.client.headers()) as resp:
                    assert resp.status == 200
            finally:
                await proc.stop()
    finally:
        foreign.terminate()
        foreign.wait(10)


async def test_a_request_refused_by_the_port_is_not_relayed(fake_binary: str) -> None:
    """lkn's engine died and another server took its port: that server's 401 is not the
    engine's answer, to be relayed to the client; lkn says what happened (a 503)."""
    async with aiohttp.ClientSession() as session:
        proc = fake_process(fake_binary, session)
        await proc.ensure_ready()
        try:
            proc.client.engine_key = "the-key-of-an-earlier-start"  # as another server sees it
            with pytest.raises(EngineRequestError, match="not the engine lkn started"):
                await proc.client.send(session, proc.base_url, "chat", CHAT,
                                       timeout=aiohttp.ClientTimeout(total=10))
        finally:
            await proc.stop()


# ---------------------------------------------------------------- a hung nvidia-smi

async def test_hung_nvidia_smi_is_killed_and_reaped(tmp_path: Path) -> None:
    pidfile = tmp_path / "smi.pid"
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    smi.chmod(0o755)
    gpu = GpuMonitor(smi=str(smi), smi_timeout_s=0.5)
    assert await gpu.used_mb() is None
    pid = int(pidfile.read_text())
    assert not psutil.pid_exists(pid)  # killed, and reaped: not even a zombie is left


def test_an_engine_key_never_looks_like_a_flag() -> None:
    """SGLang takes the key as ``--api-key KEY``: one starting with "-" was read as a flag
    (argparse's exit status 2), one start in 64 with urlsafe keys."""
    from lkn.engines.sglang import SGLangEngine
    model = ModelConfig(name="sg", engine="sglang",
                        variants=(VariantConfig(4096, "/models/hf", 999),))
    client = SGLangEngine(model, model.variants[0])
    for _ in range(2000):
        client.new_engine_key()
        argv = client.launch_argv(30000)
        assert argv[argv.index("--api-key") + 1][0] != "-"
