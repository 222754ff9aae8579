"""The operating-system side of engine processes: loopback ports, the parent-death signal, and
waiting for and killing process trees. Plain functions; ``EngineProcess`` decides when."""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

import psutil

EXIT_POLL_S = 0.25    # how soon a leader's exit is noticed (see wait_exit)
PR_SET_PDEATHSIG = 1


class PortError(Exception):
    """No free port in the configured range."""


class PortPool:
    """Hands out free loopback ports from the configured range, never one of ours twice."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self._held: set[int] = set()
        self._next = first

    def acquire(self) -> int:
        span = self.last - self.first + 1
        for i in range(span):
            port = self.first + (self._next - self.first + i) % span
            if port in self._held or not _port_free(port):
                continue
            self._held.add(port)
            self._next = port + 1 if port < self.last else self.first
            return port
        raise PortError(f"no free port in {self.first}-{self.last}")

    def release(self, port: int) -> None:
        self._held.discard(port)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _find_prctl() -> Any:
    # Looked up here, in lkn: a dlopen in the forked child of a threaded process can deadlock.
    try:
        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def _die_with_parent(parent_pid: int) -> None:  # pragma: no cover - runs in the forked child
    """In the child, before exec: the kernel SIGKILLs it when lkn dies, however lkn dies."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # lkn died between fork and prctl
        os._exit(1)


def die_with_parent() -> Callable[[], None] | None:
    return functools.partial(_die_with_parent, os.getpid()) if _PRCTL is not None else None


async def wait_exit(proc: asyncio.subprocess.Process,
                     timeout: float | None = None) -> int | None:
    """The leader's exit code once it exited (None after ``timeout``). ``proc.wait()`` alone is
    not enough: it can also wait for the output pipe to close, which children that still hold
    it delay forever, so the return code is polled as well."""
    waiter = asyncio.ensure_future(proc.wait())
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while proc.returncode is None:
            step = EXIT_POLL_S if deadline is None else min(EXIT_POLL_S,
                                                            deadline - time.monotonic())
            if step <= 0:
                return None
            await asyncio.wait({waiter}, timeout=step)
        return proc.returncode
    finally:
        if not waiter.done():
            waiter.cancel()


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not dying, not a zombie to be reaped)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # pragma: no cover - would mean the group is not ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_survivors(tree: list[psutil.Process]) -> None:
    alive = []
    for p in tree:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                alive.append(p)
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
