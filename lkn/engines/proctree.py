"""The operating-system side of engine processes: loopback ports, the parent-death signal, and
waiting for and killing process trees (held by identity from the spawn on: ``ProcTree``).
``EngineProcess`` decides when."""
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
import weakref
from typing import Any, Callable

import psutil

EXIT_POLL_S = 0.25    # how soon a leader's exit is noticed (see wait_exit)
CAPTURE_S = 1.0       # how often a starting tree's members are captured (see ProcTree.capture)
WATCH_CAPTURE_S = 10.0  # ... and a running one's (each look reads every process of the host)
PR_SET_PDEATHSIG = 1
PIDFD_SIGNAL_PROCESS_GROUP = 4  # linux/pidfd.h: pidfd_send_signal to the pidfd's group


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


async def watch_exit(proc: asyncio.subprocess.Process) -> int:
    """The leader's exit code once it exited; until then its tree's members are captured every
    ``WATCH_CAPTURE_S`` (an engine's workers start with it and were captured each ``CAPTURE_S``
    while it started): after a crash (the leader reaped as it died) they are what a kernel
    without the pidfd group signal (Linux < 6.9) still reaches the group's children by."""
    tree = tree_of(proc)
    while True:
        tree.capture()
        code = await wait_exit(proc, WATCH_CAPTURE_S)
        if code is not None:
            return code


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not dying, not a zombie to be reaped). A
    look, never a signal: a bare pid is enough for it."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


class ProcTree:
    """An engine's leader and the tree under it, held by identity from the spawn on. After the
    leader is reaped its pid (and its process group's id, once the group is empty) can name
    another process: every signal here goes through a pidfd opened at the spawn or a psutil
    handle (which refuses a pid that names another process now), never a bare pid."""

    def __init__(self, pid: int, *, held: bool = True) -> None:
        self.pid = pid
        self._fd = _pidfd(pid) if held else None
        self._leader = _own_child(pid) if held else None
        if self._leader is None and self._fd is not None:  # not ours: hold nothing
            os.close(self._fd)
            self._fd = None
        if self._fd is not None:
            weakref.finalize(self, os.close, self._fd)
        self._members: dict[int, psutil.Process] = {}
        self._captured_at: float | None = None

    def capture(self, *, every_s: float = 0.0) -> ProcTree:
        """Remember the leader's descendants as they are now: handles that outlive its reap
        (a crash's children are found by them, see ``signal_group``). Only once per ``every_s``:
        each look reads every process of the host."""
        now = time.monotonic()
        if self._captured_at is not None and now - self._captured_at < every_s:
            return self
        self._captured_at = now
        # the gone ones forgotten (is_running checks the start time: a reused pid is not theirs)
        self._members = {pid: p for pid, p in self._members.items() if p.is_running()}
        if self._leader is not None:
            with contextlib.suppress(psutil.Error):
                for p in self._leader.children(recursive=True):
                    self._members.setdefault(p.pid, p)
        return self

    def members(self) -> list[psutil.Process]:
        """The leader and every descendant captured so far, as psutil handles."""
        return [p for p in (self._leader, *self._members.values()) if p is not None]

    def signal_group(self, sig: int) -> None:
        """``sig`` to the engine's process group. Through the leader's pidfd the kernel names
        the group by the leader itself, not by a number (Linux 6.9+), also after its reap.
        Else the group's id is used only while the leader is not reaped (a zombie keeps its
        pid, and so its group's id); after that, the captured handles get it one by one."""
        if self._fd is not None:
            try:
                signal.pidfd_send_signal(self._fd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
                return
            except ProcessLookupError:
                return  # no process left in the group
            except OSError:
                pass  # an older kernel: no group flag
        if self._leader_unreaped():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            return
        for p in self.members():
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    def _leader_unreaped(self) -> bool:
        if self._fd is not None:
            try:
                signal.pidfd_send_signal(self._fd, 0)
                return True
            except OSError:
                return False
        return self._leader is not None and self._leader.is_running()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # gone already, or no pidfds (Linux < 5.3)
        return None


def _own_child(pid: int) -> psutil.Process | None:
    """A handle on ``pid`` if it is lkn's own child (just spawned: so not a recycled pid)."""
    try:
        p = psutil.Process(pid)
        return p if p.ppid() == os.getpid() else None
    except psutil.Error:
        return None


_TREES: weakref.WeakKeyDictionary[Any, ProcTree] = weakref.WeakKeyDictionary()


def track(proc: Any) -> ProcTree:
    """Hold the identity of a child just spawned, for every later signal to its tree."""
    tree = _TREES[proc] = ProcTree(proc.pid)
    return tree


def tree_of(proc: Any) -> ProcTree:
    """The tree ``track`` holds for ``proc``. A child it never saw is taken by its pid only
    while it is not reaped (``returncode`` unset); a reaped one by nothing but its tag."""
    tree = _TREES.get(proc)
    if tree is None:
        tree = _TREES[proc] = ProcTree(proc.pid, held=proc.returncode is None)
    return tree


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
