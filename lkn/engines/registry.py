"""The engine processes this lkn runs, on disk, so that none outlives lkn.

Three layers keep engines from outliving the lkn that started them:

1. the leader gets the kernel's parent-death signal (``process.die_with_parent``), so it is
   SIGKILLed when lkn dies, even by SIGKILL or the OOM killer;
2. every engine's environment carries ``LKN_ENGINE_TAG=<tag>``; children inherit it, also those
   that leave the process group (SGLang's scheduler and detokenizer, a ``setsid`` grandchild), so
   after a leader exits every process of its tree can be found and killed;
3. a state file per lkn (``<state_dir>/engines-<pid>.json``: the boot id, lkn's and each
   engine's pid with its start time in clock ticks since boot, the engines' tags) that the
   next lkn reads before it starts anything. What it does with each file is ``staleness.decide``:
   by boot id and start ticks, never by wall-clock times, so a clock step never makes a live lkn
   look dead, and a recycled pid is never signalled. Files of a live lkn are left alone, so two
   instances on one box never kill each other's engines.

State files are written 0600 (``mkstemp`` in the directory, then ``os.replace``) in a directory
created 0700. A file owned by another user, writable by group or others, or in a directory that
others may write without the sticky bit is refused: reported, never read, never acted on.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

import psutil

from lkn.engines.identity import Ident, boot_id, handle_of, live_facts, my_ident, start_ticks
from lkn.engines.staleness import (Action, Facts, Verdict, decide, dir_problem, file_problem,
                                   parse_record)

log = logging.getLogger("lkn.registry")

TAG_ENV = "LKN_ENGINE_TAG"
STATE_FILE_MAX_BYTES = 1 << 20  # a state file lists a few engines; more is not one of ours
STATE_DIR_MODE = 0o700


def default_state_dir() -> str:
    """systemd's ``StateDirectory=`` when run as a service, else the XDG state directory."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".local", "state")
    return os.path.join(base, "lkn")


class EngineRegistry:
    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        me = my_ident()
        self.owner_pid, self.owner_ticks, self.boot_id = me.pid, me.ticks, boot_id()
        self.path = os.path.join(state_dir, f"engines-{self.owner_pid}.json")
        self._entries: dict[str, dict[str, Any]] = {}
        self._seq = itertools.count(1)

    def new_tag(self) -> str:
        return f"{self.owner_pid}-{self.owner_ticks}-{next(self._seq)}"

    def add(self, tag: str, pid: int, key: str) -> None:
        # No wall-clock start time and no command line (it may hold the engine's key): an
        # older lkn, which needs both, reads this file as unreadable and leaves it alone.
        self._entries[tag] = {"tag": tag, "pid": pid, "pgid": pid, "key": key,
                              "ticks": start_ticks(pid)}
        self._write()

    def remove(self, tag: str) -> None:
        if self._entries.pop(tag, None) is not None:
            self._write()

    def close(self) -> None:
        self._entries.clear()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _write(self) -> None:
        record = {"boot_id": self.boot_id, "owner_pid": self.owner_pid,
                  "owner_ticks": self.owner_ticks, "engines": list(self._entries.values())}
        try:
            write_private(self.dir, self.path, json.dumps(record))
        except OSError as exc:  # lkn still runs; only the sweep after a crash of lkn is lost
            log.warning("cannot write the engine state file %s: %s", self.path, exc)


def write_private(directory: str, path: str, text: str) -> None:
    """Write ``path`` whole or not at all, 0600 from its first byte, in a 0700 directory."""
    os.makedirs(directory, mode=STATE_DIR_MODE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".engines-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class SweepReport:
    killed: tuple[int, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()  # (path, why): never read, never acted on
    kept: tuple[tuple[str, str], ...] = ()     # (path, why): left alone in doubt, or unreadable


class _Refused(Exception):
    """A state file that must not be trusted (the message says why)."""


def sweep_stale(state_dir: str) -> list[int]:
    """Kill the engines of every lkn that died without stopping them; returns the killed pids.
    Runs before this lkn starts anything (blocking: call it from a thread)."""
    return list(sweep(state_dir).killed)


def sweep(state_dir: str) -> SweepReport:
    """``sweep_stale`` with everything it did not do: refused and doubtful files, and why."""
    killed: list[int] = []
    refused: list[tuple[str, str]] = []
    kept: list[tuple[str, str]] = []
    try:
        problem = dir_problem(st_mode=os.stat(state_dir).st_mode)
    except FileNotFoundError:
        return SweepReport()
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    if problem is not None:
        log.warning("not sweeping the engine state directory %s: %s", state_dir, problem)
        return SweepReport(refused=((state_dir, problem),))
    paths = sorted(glob.glob(os.path.join(state_dir, "engines-*.json")))
    here, index = boot_id(), _tag_index() if paths else {}
    for path in paths:
        try:
            record = parse_record(_read_trusted(path))
        except _Refused as exc:
            log.warning("refusing the engine state file %s: %s", path, exc)
            refused.append((path, str(exc)))
            continue
        except (OSError, ValueError, RecursionError) as exc:  # deep nesting: RecursionError
            log.warning("ignoring an unreadable engine state file %s: %s", path, exc)
            kept.append((path, f"unreadable: {exc!r}"[:300]))
            continue
        live = {pid: facts for pid in record.pids if (facts := live_facts(pid)) is not None}
        tagged = tuple(i for tag in sorted(record.tags) for i in index.get(tag, ()))
        verdict = decide(record, Facts(boot_id=here, live=live, tagged=tagged))
        if verdict.doubt:
            log.warning("leaving the engine state file %s alone: %s", path, verdict.reason)
            kept.append((path, verdict.reason))
        killed += _act(path, verdict)
    return SweepReport(killed=tuple(killed), refused=tuple(refused), kept=tuple(kept))


def _act(path: str, verdict: Verdict) -> list[int]:
    if verdict.action is Action.KEEP:
        return []
    handles = [h for i in verdict.kill if (h := handle_of(i)) is not None]
    for p in handles:
        with contextlib.suppress(psutil.Error):
            log.warning("sweeping engine process %d (%s): %s", p.pid,
                        " ".join(p.cmdline())[:120], verdict.reason)
    killed = kill_all(handles)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return killed


def _read_trusted(path: str) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused("a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        problem = file_problem(st_uid=st.st_uid, st_mode=st.st_mode, uid=os.geteuid())
        if problem is not None:
            raise _Refused(problem)
        raw = f.read(STATE_FILE_MAX_BYTES + 1)
    if len(raw) > STATE_FILE_MAX_BYTES:
        raise ValueError(f"larger than {STATE_FILE_MAX_BYTES} bytes")
    return json.loads(raw)


def _tag_index() -> dict[str, list[Ident]]:
    """Every live process of this user that carries an engine tag, by tag."""
    index: dict[str, list[Ident]] = {}
    for p in psutil.process_iter(["pid"]):
        try:
            tag = p.environ().get(TAG_ENV)
            ticks = start_ticks(p.pid)
            if tag and ticks is not None and p.status() != psutil.STATUS_ZOMBIE:
                index.setdefault(tag, []).append(Ident(p.pid, ticks))
        except psutil.Error:
            pass
    return index


def tagged(tags: Iterable[str]) -> list[psutil.Process]:
    """Live processes whose environment carries one of ``tags``. psutil handles: a signal to
    one of them is refused once its pid names another process."""
    wanted = set(tags)
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(TAG_ENV) in wanted and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def kill_tree_of(tag: str) -> list[int]:
    """SIGKILL every process that carries an engine's tag (its group is the caller's)."""
    return kill_all(tagged([tag]))


def kill_all(procs: list[psutil.Process]) -> list[int]:
    """SIGKILL each handle (psutil checks its identity first: never a recycled pid)."""
    killed = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
            killed.append(p.pid)
    psutil.wait_procs([p for p in procs if p.pid in killed], timeout=5)
    return killed
