"""Who a process is, in terms a clock step cannot move: the boot it runs in and its start time.

A pid alone names a process only until it is reaped: the number is then handed out again. The
pair (pid, start time) names one process for good, as long as the start time is read in clock
ticks since boot (field 22 of ``/proc/<pid>/stat``). psutil's ``create_time()`` is that count
*plus the boot time in wall-clock seconds*, and the boot time moves with every step of the wall
clock (NTP, a suspended VM, an admin's ``date -s``): compared across a step, the same process
looks like another one. Across boots, the ticks start again from zero, so every identity
carries the boot id (``/proc/sys/kernel/random/boot_id``) of the boot it was read in.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import psutil

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
START_TICKS_FIELD = 22  # of /proc/<pid>/stat, counted from 1 (proc(5))


@dataclass(frozen=True)
class Ident:
    """One process for good: its pid and its start time in clock ticks since boot."""
    pid: int
    ticks: int


@dataclass(frozen=True)
class Live:
    """What the process table says about a live pid now."""
    ticks: int
    create_time: float  # wall-clock derived (psutil): only old state files are judged by it
    cmdline: tuple[str, ...]
    zombie: bool


def boot_id() -> str | None:
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the third (state) on: the command name before
    them is in parentheses and may itself hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 1:].split()


def start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (None: no such process)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[START_TICKS_FIELD - 3]) if fields else None
    except (IndexError, ValueError):
        return None


def ident_of(pid: int) -> Ident | None:
    ticks = start_ticks(pid)
    return None if ticks is None else Ident(pid, ticks)


def my_ident() -> Ident:
    me = ident_of(os.getpid())
    return me if me is not None else Ident(os.getpid(), -1)


def live_facts(pid: int) -> Live | None:
    fields = _stat_fields(pid)
    ticks = start_ticks(pid)
    if not fields or ticks is None:
        return None
    cmdline: tuple[str, ...] = ()
    create_time = 0.0
    with contextlib.suppress(psutil.Error):
        p = psutil.Process(pid)
        create_time = p.create_time()
        cmdline = tuple(p.cmdline())
    return Live(ticks=ticks, create_time=create_time, cmdline=cmdline, zombie=fields[0] == "Z")


def handle_of(ident: Ident) -> psutil.Process | None:
    """A psutil handle on exactly this process, or None when its pid is gone or reused. The
    handle is made first and the ticks are checked after: the handle then names the process
    that had those ticks, and psutil refuses to signal it once its pid names another."""
    try:
        p = psutil.Process(ident.pid)
    except psutil.Error:
        return None
    return p if start_ticks(ident.pid) == ident.ticks else None
