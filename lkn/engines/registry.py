"""The engine processes this lkn runs, on disk, so that none outlives lkn.

Three layers keep engines from outliving the lkn that started them:

1. the leader gets the kernel's parent-death signal (``process.die_with_parent``), so it is
   SIGKILLed when lkn dies, even by SIGKILL or the OOM killer;
2. every engine's environment carries ``LKN_ENGINE_TAG=<tag>``; children inherit it, also those
   that leave the process group (SGLang's scheduler and detokenizer, a ``setsid`` grandchild), so
   after a leader exits every process of its tree can be found and killed;
3. a state file per lkn (``<state_dir>/engines-<pid>.json``: tag, pid, process group, command line,
   start time) that the next lkn reads before it starts anything: files whose owner is gone
   are swept (processes verified against the live process table by tag, or by pid plus start
   time plus command line) and deleted. Files of a live lkn are left alone, so two instances on
   one box never kill each other's engines.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import json
import logging
import os
from typing import Any, Iterable

import psutil

log = logging.getLogger("lkn.registry")

TAG_ENV = "LKN_ENGINE_TAG"


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
        me = psutil.Process()
        self.owner_pid = me.pid
        self.owner_created = me.create_time()
        self.path = os.path.join(state_dir, f"engines-{self.owner_pid}.json")
        self._entries: dict[str, dict[str, Any]] = {}
        self._seq = itertools.count(1)

    def new_tag(self) -> str:
        return f"{self.owner_pid}-{int(self.owner_created * 1000)}-{next(self._seq)}"

    def add(self, tag: str, pid: int, key: str) -> None:
        entry: dict[str, Any] = {"tag": tag, "pid": pid, "pgid": pid, "key": key}
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            entry.update(cmdline=p.cmdline(), create_time=p.create_time())
        self._entries[tag] = entry
        self._write()

    def remove(self, tag: str) -> None:
        if self._entries.pop(tag, None) is not None:
            self._write()

    def close(self) -> None:
        self._entries.clear()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _write(self) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"owner_pid": self.owner_pid, "owner_created": self.owner_created,
                           "engines": list(self._entries.values())}, f)
            os.replace(tmp, self.path)
        except OSError as exc:  # lkn still runs; only the sweep after a crash of lkn is lost
            log.warning("cannot write the engine state file %s: %s", self.path, exc)


def sweep_stale(state_dir: str) -> list[int]:
    """Kill the engines of every lkn that died without stopping them; returns the killed pids.
    Runs before this lkn starts anything (blocking: call it from a thread)."""
    killed: list[int] = []
    for path in sorted(glob.glob(os.path.join(state_dir, "engines-*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            owner, created = int(data["owner_pid"]), float(data["owner_created"])
            entries = list(data.get("engines", []))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable engine state file %s", path)
            continue
        if _alive(owner, created):
            continue
        found = _verified(entries)
        for p in found:
            log.warning("sweeping engine process %d (%s) left by lkn pid %d", p.pid,
                        " ".join(p.info.get("cmdline") or [])[:120], owner)
        killed += kill_all(found)
        with contextlib.suppress(OSError):
            os.unlink(path)
    return killed


def tagged(tags: Iterable[str]) -> list[psutil.Process]:
    """Live processes whose environment carries one of ``tags``."""
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
    killed = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
            killed.append(p.pid)
    psutil.wait_procs([p for p in procs if p.pid in killed], timeout=5)
    return killed


def _alive(pid: int, created: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - created) < 0.01
    except psutil.Error:
        return False


def _verified(entries: list[dict[str, Any]]) -> list[psutil.Process]:
    """The live processes that really belong to ``entries``: by tag (the whole tree), and the
    leader by pid when its start time and command line match (a reused pid is left alone)."""
    found = {p.pid: p for p in tagged(e["tag"] for e in entries if e.get("tag"))}
    for e in entries:
        try:
            p = psutil.Process(int(e["pid"]))
            if (abs(p.create_time() - float(e.get("create_time", -1))) < 0.01
                    and p.cmdline() == e.get("cmdline")):
                found.setdefault(p.pid, p)
        except (psutil.Error, KeyError, ValueError, TypeError):
            pass
    for p in found.values():
        with contextlib.suppress(psutil.Error):
            p.info = {"cmdline": p.cmdline()}
    return list(found.values())
