"""systemd's notify protocol, against a real Unix datagram socket standing in for systemd."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from lkn.ops.notify import Notifier
from tests.conftest import free_port, lkn_daemon, lua_str


@pytest.fixture
def systemd() -> Iterator[tuple[str, socket.socket]]:
    folder = tempfile.mkdtemp(prefix="lkn-sd-", dir="/tmp")  # AF_UNIX paths are short
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def receive(sock: socket.socket, *, skip_watchdog: bool = True) -> dict[str, str]:
    while True:
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        if not (skip_watchdog and fields == {"WATCHDOG": "1"}):
            return fields


def test_messages_arrive_as_systemd_reads_them(systemd: tuple[str, socket.socket]) -> None:
    path, sock = systemd
    n = Notifier(path)
    n.ready("serving 2 models")
    n.reloading()
    n.stopping()
    assert receive(sock) == {"READY": "1", "STATUS": "serving 2 models"}
    reloading = receive(sock)
    assert reloading["RELOADING"] == "1"
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now_usec - int(reloading["MONOTONIC_USEC"]) < 10_000_000
    assert receive(sock)["STOPPING"] == "1"


def test_abstract_socket_addresses_and_no_socket_at_all() -> None:
    name = f"lkn-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier("@" + name).ready()
        assert receive(sock) == {"READY": "1"}
    Notifier("").ready()  # not under systemd: nothing to do, nothing raised


def test_a_daemon_tells_systemd_ready_reloading_ready_stopping_in_order(
        systemd: tuple[str, socket.socket], tmp_path: Path, fake_binary: str) -> None:
    path, sock = systemd
    port = free_port()
    cfg = tmp_path / "lkn.cfg.lua"
    cfg.write_text(f"""
server = {{ listen = {{ "127.0.0.1:{port}" }}, log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "a", binary = {lua_str(fake_binary)}, model_file = "/x.gguf",
              ctx_size = 512, vram_mb = 10 }} }}
""")
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    with lkn_daemon(cfg, port, env=env, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL) as (lkn, _):
        assert receive(sock)["READY"] == "1"  # sent once every listener was bound
        assert receive(sock, skip_watchdog=False) == {"WATCHDOG": "1"}  # every 0.1 s
        lkn.send_signal(signal.SIGHUP)
        reloading = receive(sock)
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        after = receive(sock)
        assert after["READY"] == "1" and after["STATUS"] == "config generation 2"
        cfg.write_text("models = { { name = 'a', ctx_size = 'big' } }")
        lkn.send_signal(signal.SIGHUP)
        assert receive(sock)["RELOADING"] == "1"
        failed = receive(sock)  # READY again: the running config stays
        assert failed["READY"] == "1" and "reload failed" in failed["STATUS"]
        lkn.send_signal(signal.SIGTERM)
        assert receive(sock)["STOPPING"] == "1"
        assert lkn.wait(30) == 0
