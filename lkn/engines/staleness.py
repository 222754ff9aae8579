"""Whether an engine state file may be trusted, and what the sweep does with it: pure deciders.

``decide(record, facts)`` is a function of the file's record and of facts read from the process
table (the boot id, the live processes named in the record, those carrying its tags), never of
the wall clock: a clock step changes no verdict. Its rules, in order:

- a file of another boot: its processes are gone with that boot; the file is forgotten;
- a file whose lkn is alive (its pid, with the same start ticks): left alone, so two lkns that
  share a state directory never kill each other's engines;
- else its engines are swept: a recorded pid is killed only when it still has the recorded start
  ticks (a different start means a recycled pid: another process, left alone), and every process
  that carries one of its tags.

A file of the old format (no boot id, wall-clock start times) is swept by the old rule only when
its lkn's pid runs no process at all; when the pid runs anything, nothing can tell whether it
is that lkn (a clock step) or another process (a reused pid), and the file is left alone and
reported: never a kill on doubt.
"""
from __future__ import annotations

import enum
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping

from lkn.engines.identity import Ident, Live

OLD_CREATE_TOLERANCE_S = 0.01  # the old format's start-time match (wall-clock seconds)


def file_problem(*, st_uid: int, st_mode: int, uid: int) -> str | None:
    """Why a state file must not be read or acted on (None: it may)."""
    if not stat.S_ISREG(st_mode):
        return "not a regular file"
    if st_uid != uid:
        return f"owned by uid {st_uid}, not by lkn's uid {uid}"
    if st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st_mode):04o})"
    return None


def dir_problem(*, st_mode: int) -> str | None:
    """Why no file of a state directory may be trusted (anyone can replace them)."""
    if not stat.S_ISDIR(st_mode):
        return "not a directory"
    if st_mode & stat.S_IWOTH and not st_mode & stat.S_ISVTX:
        return (f"writable by others without the sticky bit "
                f"(mode {stat.S_IMODE(st_mode):04o})")
    return None


@dataclass(frozen=True)
class EngineEntry:
    tag: str | None
    pid: int | None
    ticks: int | None = None
    cmdline: tuple[str, ...] | None = None
    create_time: float | None = None


@dataclass(frozen=True)
class StateRecord:
    owner_pid: int
    boot_id: str | None  # None: the old format
    owner_ticks: int | None = None
    owner_created: float | None = None
    engines: tuple[EngineEntry, ...] = ()

    @property
    def tags(self) -> frozenset[str]:
        return frozenset(e.tag for e in self.engines if e.tag)

    @property
    def pids(self) -> frozenset[int]:
        return frozenset([self.owner_pid, *(e.pid for e in self.engines if e.pid is not None)])


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


def parse_record(data: Any) -> StateRecord:
    """The record of a state file's JSON; ValueError (with the reason) when it is not one."""
    try:
        engines = tuple(EngineEntry(
            tag=_opt(e.get("tag"), str), pid=_opt(e.get("pid"), int),
            ticks=_opt(e.get("ticks"), int),
            cmdline=None if e.get("cmdline") is None else tuple(map(str, e["cmdline"])),
            create_time=_opt(e.get("create_time"), float)) for e in data.get("engines", []))
        record = StateRecord(owner_pid=int(data["owner_pid"]),
                             boot_id=_opt(data.get("boot_id"), str),
                             owner_ticks=_opt(data.get("owner_ticks"), int),
                             owner_created=_opt(data.get("owner_created"), float),
                             engines=engines)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an engine state record ({exc!r})") from None
    if record.boot_id is not None and record.owner_ticks is None:
        raise ValueError("a boot id without its lkn's start ticks")
    if record.boot_id is None and record.owner_created is None:
        raise ValueError("neither a boot id nor its lkn's start time")
    return record


@dataclass(frozen=True)
class Facts:
    """The process table as the sweep found it."""
    boot_id: str | None
    live: Mapping[int, Live] = field(default_factory=dict)  # the record's pids that are live
    tagged: tuple[Ident, ...] = ()  # live processes carrying one of the record's tags


class Action(enum.Enum):
    KEEP = "keep"      # leave the file and every process alone
    FORGET = "forget"  # delete the file; nothing to kill
    SWEEP = "sweep"    # kill ``Verdict.kill``, then delete the file


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    kill: tuple[Ident, ...] = ()
    doubt: bool = False  # kept because identity could not be verified: reported


def decide(record: StateRecord, facts: Facts) -> Verdict:
    owner = facts.live.get(record.owner_pid)
    owner_live = owner is not None and not owner.zombie
    if record.boot_id is None:
        return _decide_old(record, facts, owner if owner_live else None)
    if facts.boot_id is None:
        return Verdict(Action.KEEP, "this system has no boot id: identity cannot be verified",
                       doubt=True)
    if record.boot_id != facts.boot_id:
        return Verdict(Action.FORGET, "written in an earlier boot: its processes are gone")
    if owner_live and owner is not None and owner.ticks == record.owner_ticks:
        return Verdict(Action.KEEP, f"its lkn (pid {record.owner_pid}) is alive")
    kill = list(facts.tagged)
    recycled = []
    for e in record.engines:
        live = facts.live.get(e.pid) if e.pid is not None else None
        if e.pid is None or live is None or live.zombie:
            continue
        if e.ticks is not None and live.ticks == e.ticks:
            kill.append(Ident(e.pid, e.ticks))
        else:
            recycled.append(e.pid)
    return Verdict(Action.SWEEP, f"its lkn (pid {record.owner_pid}) is gone" + (
        f"; pids {recycled} now belong to other processes: left alone" if recycled else ""),
        kill=tuple(dict.fromkeys(kill)))


def _decide_old(record: StateRecord, facts: Facts, owner: Live | None) -> Verdict:
    if owner is not None:
        if record.owner_created is not None and \
                abs(owner.create_time - record.owner_created) < OLD_CREATE_TOLERANCE_S:
            return Verdict(Action.KEEP, f"its lkn (pid {record.owner_pid}) is alive")
        return Verdict(Action.KEEP, f"an old-format file whose lkn's pid {record.owner_pid} "
                       "runs a process that cannot be told apart from it (a clock step or a "
                       "reused pid): left alone", doubt=True)
    kill = list(facts.tagged)
    for e in record.engines:
        live = facts.live.get(e.pid) if e.pid is not None else None
        if (e.pid is None or live is None or live.zombie or e.create_time is None
                or e.cmdline != live.cmdline):
            continue
        if abs(live.create_time - e.create_time) < OLD_CREATE_TOLERANCE_S:
            kill.append(Ident(e.pid, live.ticks))
    return Verdict(Action.SWEEP, f"its lkn (pid {record.owner_pid}) is gone (old format)",
                   kill=tuple(dict.fromkeys(kill)))
