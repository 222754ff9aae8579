"""Process identity (#20, item 8): the startup sweep and every signal after a reap name a process
by boot id and start ticks, or by a handle held since the spawn, never by a bare pid or a
wall-clock start time; state files are private and checked before they are trusted."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import psutil
import pytest

from lkn.config import ModelConfig, VariantConfig
from lkn.engines import registry
from lkn.engines.identity import Ident, Live, boot_id, start_ticks
from lkn.engines.llamacpp import LlamaCppEngine
from lkn.engines.proctree import track, tree_of
from lkn.engines.process import EngineProcess, PortPool, State
from lkn.engines.registry import TAG_ENV, EngineRegistry, sweep, write_private
from lkn.engines.staleness import (Action, EngineEntry, Facts, StateRecord, decide, dir_problem,
                                   file_problem, parse_record)
from tests.conftest import fake_process

BOOT = "boot-a"
SLEEP = ("sleep", "60")


# ------------------------------------------------------------------ helpers
def _spawn(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(argv, env=env, start_new_session=True)
    deadline = time.monotonic() + 5
    while start_ticks(p.pid) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return p


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _alive(p: subprocess.Popen[bytes]) -> bool:
    return p.poll() is None


def _state_file(directory: Path, owner_pid: int, record: dict[str, Any]) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"engines-{owner_pid}.json"
    write_private(str(directory), str(path), json.dumps(record))
    return path


def _entry(p: subprocess.Popen[bytes], *, ticks: int | None = None,
           tag: str = "") -> dict[str, Any]:
    h = psutil.Process(p.pid)
    real = start_ticks(p.pid)
    assert real is not None
    return {"tag": tag or None, "pid": p.pid, "pgid": p.pid, "key": "m",
            "ticks": real if ticks is None else ticks,
            "cmdline": h.cmdline(), "create_time": h.create_time()}


# ------------------------------------------------------------------ the sweep, for real
def test_a_live_pid_with_other_start_ticks_is_never_killed(tmp_path: Path, procs: list) -> None:
    """The recorded engine's pid now runs a process that started at another tick: a recycled
    pid (even if its command line and wall-clock start time look right). Left alone."""
    victim = _spawn(*SLEEP)
    procs.append(victim)
    owner = _dead_pid()
    entry = _entry(victim)
    entry["ticks"] += 12345
    path = _state_file(tmp_path / "state", owner, {
        "boot_id": boot_id(), "owner_pid": owner, "owner_ticks": 1, "owner_created": 1.0,
        "engines": [entry]})
    report = sweep(str(path.parent))
    time.sleep(0.2)
    assert _alive(victim)
    assert report.killed == ()


def test_the_engines_of_a_live_other_lkn_survive_the_sweep(tmp_path: Path, procs: list) -> None:
    """Another lkn shares the state directory and is alive (its pid, with its start ticks);
    the wall clock stepped since it wrote its file, so its wall-clock start no longer matches.
    Its engine (found by tag and by pid) is not touched."""
    other_lkn = _spawn(sys.executable, "-c", "import time; time.sleep(60)")
    procs.append(other_lkn)
    tag = f"{other_lkn.pid}-{start_ticks(other_lkn.pid)}-1"
    engine = _spawn(*SLEEP, env={**os.environ, TAG_ENV: tag})
    procs.append(engine)
    stepped = psutil.Process(other_lkn.pid).create_time() + 5.0
    path = _state_file(tmp_path / "state", other_lkn.pid, {
        "boot_id": boot_id(), "owner_pid": other_lkn.pid,
        "owner_ticks": start_ticks(other_lkn.pid), "owner_created": stepped,
        "engines": [_entry(engine, tag=tag)]})
    report = sweep(str(path.parent))
    time.sleep(0.2)
    assert _alive(engine) and report.killed == () and path.exists()


def test_the_engines_of_a_dead_lkn_are_swept_by_ticks_and_tag(tmp_path: Path,
                                                               procs: list) -> None:
    owner = _dead_pid()
    leader = _spawn(*SLEEP)
    child = _spawn(*SLEEP, env={**os.environ, TAG_ENV: "t-1"})
    procs += [leader, child]
    path = _state_file(tmp_path / "state", owner, {
        "boot_id": boot_id(), "owner_pid": owner, "owner_ticks": 1,
        "engines": [_entry(leader, tag="t-1")]})
    report = sweep(str(path.parent))
    assert sorted(report.killed) == sorted([leader.pid, child.pid])
    assert leader.wait(5) is not None and child.wait(5) is not None
    assert not path.exists()


def test_an_old_format_file_whose_owner_pid_runs_something_is_left_alone_and_reported(
        tmp_path: Path, procs: list) -> None:
    someone = _spawn(*SLEEP)  # the old owner's pid, or the same lkn after a clock step
    engine = _spawn(*SLEEP, env={**os.environ, TAG_ENV: "old-1"})
    procs += [someone, engine]
    path = _state_file(tmp_path / "state", someone.pid, {
        "owner_pid": someone.pid, "owner_created": 12.5,
        "engines": [{"tag": "old-1", "pid": engine.pid, "pgid": engine.pid}]})
    report = sweep(str(path.parent))
    time.sleep(0.2)
    assert _alive(engine) and path.exists()
    assert [p for p, _ in report.kept] == [str(path)]


# ------------------------------------------------------------------ the decider, by table
def _live(ticks: int, created: float = 1000.0, cmd: tuple[str, ...] = SLEEP,
          zombie: bool = False) -> Live:
    return Live(ticks=ticks, create_time=created, cmdline=cmd, zombie=zombie)


NEW = StateRecord(owner_pid=10, boot_id=BOOT, owner_ticks=100, owner_created=1000.0,
                  engines=(EngineEntry(tag="10-100-1", pid=20, ticks=200, cmdline=SLEEP,
                                       create_time=1001.0),))
OLD = StateRecord(owner_pid=10, boot_id=None, owner_created=1000.0,
                  engines=(EngineEntry(tag="10-1000000-1", pid=20, cmdline=SLEEP,
                                       create_time=1001.0),))
TAGGED = (Ident(30, 300),)

# (name, record, boot id now, live pids, tagged, action, kill)
TABLE: list[tuple[str, StateRecord, str | None, dict[int, Live], tuple[Ident, ...], Action,
                  tuple[Ident, ...]]] = [
    ("owner alive", NEW, BOOT, {10: _live(100), 20: _live(200)}, TAGGED, Action.KEEP, ()),
    ("owner pid recycled", NEW, BOOT, {10: _live(999), 20: _live(200)}, TAGGED, Action.SWEEP,
     (Ident(30, 300), Ident(20, 200))),
    ("owner a zombie", NEW, BOOT, {10: _live(100, zombie=True)}, (), Action.SWEEP, ()),
    ("owner gone, engine pid recycled", NEW, BOOT, {20: _live(201)}, (), Action.SWEEP, ()),
    ("owner gone, engine alive", NEW, BOOT, {20: _live(200)}, (), Action.SWEEP,
     (Ident(20, 200),)),
    ("another boot", NEW, "boot-b", {10: _live(100), 20: _live(200)}, TAGGED, Action.FORGET,
     ()),
    ("no boot id here", NEW, None, {20: _live(200)}, (), Action.KEEP, ()),
    ("old: owner pid runs something", OLD, BOOT, {10: _live(5, created=4000.0),
                                                  20: _live(200, created=1001.0)},
     TAGGED, Action.KEEP, ()),
    ("old: owner alive", OLD, BOOT, {10: _live(5, created=1000.0)}, TAGGED, Action.KEEP, ()),
    ("old: owner gone, leader verified", OLD, BOOT, {20: _live(200, created=1001.0)}, TAGGED,
     Action.SWEEP, (Ident(30, 300), Ident(20, 200))),
    ("old: owner gone, leader's start differs", OLD, BOOT, {20: _live(200, created=1500.0)},
     (), Action.SWEEP, ()),
    ("old: owner gone, leader's command differs", OLD, BOOT,
     {20: _live(200, created=1001.0, cmd=("bash",))}, (), Action.SWEEP, ()),
]


@pytest.mark.parametrize("name,record,here,live,tagged,action,kill", TABLE,
                         ids=[row[0] for row in TABLE])
def test_the_sweep_decides_by_boot_id_and_start_ticks(
        name: str, record: StateRecord, here: str | None, live: dict[int, Live],
        tagged: tuple[Ident, ...], action: Action, kill: tuple[Ident, ...]) -> None:
    verdict = decide(record, Facts(boot_id=here, live=live, tagged=tagged))
    assert (verdict.action, verdict.kill) == (action, kill)


@pytest.mark.parametrize("step_s", [-3600.0, -0.5, 0.5, 86400.0])
@pytest.mark.parametrize("name,record,here,live,tagged,action,kill",
                         [row for row in TABLE if row[1] is NEW],
                         ids=[row[0] for row in TABLE if row[1] is NEW])
def test_a_wall_clock_step_changes_no_verdict(
        step_s: float, name: str, record: StateRecord, here: str | None, live: dict[int, Live],
        tagged: tuple[Ident, ...], action: Action, kill: tuple[Ident, ...]) -> None:
    """psutil's create_time is boot time + ticks, and the boot time moves with the clock."""
    shifted = {pid: _live(f.ticks, f.create_time + step_s, f.cmdline, f.zombie)
               for pid, f in live.items()}
    before = decide(record, Facts(boot_id=here, live=live, tagged=tagged))
    after = decide(record, Facts(boot_id=here, live=shifted, tagged=tagged))
    assert before == after


@pytest.mark.parametrize("data", [[], {"engines": []}, {"owner_pid": "x"},
                                  {"owner_pid": 1, "engines": [3]},
                                  {"owner_pid": 1, "boot_id": BOOT},
                                  {"owner_pid": 1}])
def test_a_malformed_record_is_a_clear_error(data: Any) -> None:
    with pytest.raises(ValueError, match="record|boot id|start time"):
        parse_record(data)


@pytest.mark.parametrize("text", ["{", "[]", '{"owner_pid": 1}', "[" * 100000 + "]" * 100000,
                                  '{"owner_pid": 1, "boot_id": "b", "owner_ticks": 1, '
                                  '"engines": [{"pid": "x"}]}'])
def test_a_garbled_state_file_is_reported_and_left_alone(tmp_path: Path, text: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / "engines-1.json"
    write_private(str(state), str(path), text)
    report = sweep(str(state))
    assert path.exists() and report.killed == ()
    assert [p for p, _ in report.kept] == [str(path)]
    assert report.kept[0][1].startswith("unreadable")


# ------------------------------------------------------------------ trust in state files
UID = 1000


@pytest.mark.parametrize("uid,mode,refused", [
    (UID, stat.S_IFREG | 0o600, None),
    (UID, stat.S_IFREG | 0o644, None),
    (UID, stat.S_IFREG | 0o666, "writable by group or others"),
    (UID, stat.S_IFREG | 0o620, "writable by group or others"),
    (UID + 1, stat.S_IFREG | 0o600, "owned by uid 1001"),
    (0, stat.S_IFREG | 0o600, "owned by uid 0"),
    (UID, stat.S_IFIFO | 0o600, "not a regular file"),
])
def test_state_files_of_others_or_writable_by_others_are_refused(
        uid: int, mode: int, refused: str | None) -> None:
    problem = file_problem(st_uid=uid, st_mode=mode, uid=UID)
    assert problem is None if refused is None else refused in (problem or "")


@pytest.mark.parametrize("mode,refused", [
    (stat.S_IFDIR | 0o700, False), (stat.S_IFDIR | 0o1777, False),
    (stat.S_IFDIR | 0o777, True), (stat.S_IFDIR | 0o757, True), (stat.S_IFREG | 0o700, True)])
def test_a_state_dir_others_may_write_without_the_sticky_bit_is_refused(
        mode: int, refused: bool) -> None:
    assert (dir_problem(st_mode=mode) is not None) is refused


def _dead_owner_file(directory: Path, victim: subprocess.Popen[bytes]) -> Path:
    owner = _dead_pid()
    return _state_file(directory, owner, {
        "boot_id": boot_id(), "owner_pid": owner, "owner_ticks": 1, "owner_created": 1.0,
        "engines": [_entry(victim, tag="planted-1")]})


def test_a_world_writable_state_file_is_refused_and_reported(tmp_path: Path,
                                                             procs: list) -> None:
    victim = _spawn(*SLEEP)
    procs.append(victim)
    path = _dead_owner_file(tmp_path / "state", victim)
    os.chmod(path, 0o666)
    report = sweep(str(path.parent))
    time.sleep(0.2)
    assert _alive(victim) and path.exists() and report.killed == ()
    assert report.refused == ((str(path), "writable by group or others (mode 0666)"),)


def test_a_state_file_of_another_user_is_refused_and_reported(
        tmp_path: Path, procs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = _spawn(*SLEEP)
    procs.append(victim)
    path = _dead_owner_file(tmp_path / "state", victim)
    monkeypatch.setattr(registry.os, "geteuid", lambda: os.stat(path).st_uid + 1)
    report = sweep(str(path.parent))
    time.sleep(0.2)
    assert _alive(victim) and path.exists() and report.killed == ()
    assert [p for p, _ in report.refused] == [str(path)]
    assert "owned by uid" in report.refused[0][1]


def test_a_symlinked_state_file_is_refused(tmp_path: Path, procs: list) -> None:
    victim = _spawn(*SLEEP)
    procs.append(victim)
    real = _dead_owner_file(tmp_path / "elsewhere", victim)
    (tmp_path / "state").mkdir(mode=0o700)
    link = tmp_path / "state" / "engines-1.json"
    link.symlink_to(real)
    report = sweep(str(link.parent))
    assert _alive(victim) and report.refused == ((str(link), "a symbolic link"),)


def test_a_state_dir_writable_by_others_is_not_swept(tmp_path: Path, procs: list) -> None:
    victim = _spawn(*SLEEP)
    procs.append(victim)
    path = _dead_owner_file(tmp_path / "state", victim)
    os.chmod(path.parent, 0o777)
    report = sweep(str(path.parent))
    time.sleep(0.2)
    assert _alive(victim) and path.exists()
    assert [p for p, _ in report.refused] == [str(path.parent)]


def test_state_files_are_0600_in_a_0700_dir_written_through_mkstemp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str | None] = []
    real_mkstemp = tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        made.append(kwargs.get("dir"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(registry.tempfile, "mkstemp", spy)
    old_umask = os.umask(0)  # a careless service manager: nothing masked
    try:
        reg = EngineRegistry(str(tmp_path / "state" / "lkn"))
        reg.add(reg.new_tag(), os.getpid(), "m")
        reg.add(reg.new_tag(), os.getpid(), "m")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(reg.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(reg.dir).st_mode) == 0o700
    assert made == [reg.dir, reg.dir]
    assert sorted(os.listdir(reg.dir)) == [os.path.basename(reg.path)]  # no temp file left
    data = json.loads(Path(reg.path).read_text())
    assert data["boot_id"] == boot_id() and data["owner_ticks"] == start_ticks(os.getpid())
    assert data["engines"][0]["ticks"] == start_ticks(os.getpid())
    assert "cmdline" not in data["engines"][0]  # argv may carry the engine's key


# ------------------------------------------------------------------ signals after a reap
def _bare_process() -> EngineProcess:
    model = ModelConfig(name="fake", engine="llamacpp",
                        variants=(VariantConfig(512, "/nonexistent.gguf", 0),))
    return EngineProcess(LlamaCppEngine(model, model.variants[0]), ports=PortPool(1, 2),
                         session=None,  # type: ignore[arg-type]  # never used: nothing starts
                         start_timeout_s=1, stop_grace_s=1)


async def test_a_stop_after_the_leader_was_reaped_spares_the_pid_s_new_owner(
        procs: list) -> None:
    """The leader exited and was reaped; the kernel handed its pid to another process (a group
    leader of its own). The stop path signals the process lkn spawned, never that one."""
    engine = _bare_process()
    first = await asyncio.create_subprocess_exec("sleep", "0.2", start_new_session=True)
    assert track(first).members()  # what _launch does right after its spawn
    await first.wait()
    newcomer = _spawn(*SLEEP)
    procs.append(newcomer)
    first.pid = newcomer.pid  # the pid, reused
    first._transport._pid = newcomer.pid  # type: ignore[attr-defined]
    assert first.pid == newcomer.pid
    engine.proc, engine.state = first, State.STOPPING
    await engine._terminate()
    await asyncio.sleep(0.2)
    assert _alive(newcomer)


async def test_the_group_of_a_reaped_leader_is_still_killed(procs: list) -> None:
    """The crash path: the leader is gone and reaped, a child in its group lives on (holding
    VRAM). The group is reached through the leader's pidfd, not its reusable number."""
    leader = await asyncio.create_subprocess_exec(
        "sh", "-c", "sleep 60 >/dev/null & echo $!; exec sleep 0.3",
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    assert track(leader).members()  # held: lkn's own child, not reaped yet
    assert leader.stdout is not None
    child = int((await leader.stdout.readline()).decode())
    await leader.wait()
    assert psutil.pid_exists(child)
    tree_of(leader).signal_group(signal.SIGKILL)
    assert await _dies(child)


async def test_without_the_group_flag_a_reaped_leader_s_group_gets_captured_handles(
        procs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel before 6.9 has no pidfd group signal; once the leader is reaped its group's id
    is no longer used: the children captured before the reap are signalled one by one."""
    monkeypatch.setattr("lkn.engines.proctree.PIDFD_SIGNAL_PROCESS_GROUP", 1 << 30)  # EINVAL
    killpg_calls: list[int] = []
    monkeypatch.setattr("lkn.engines.proctree.os.killpg",
                        lambda pgid, sig: killpg_calls.append(pgid))
    leader = await asyncio.create_subprocess_exec(
        "sh", "-c", "sleep 60 >/dev/null & echo $!; exec sleep 0.3",
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    assert leader.stdout is not None
    child = int((await leader.stdout.readline()).decode())
    tree = track(leader).capture()
    assert child in [p.pid for p in tree.members()]
    await leader.wait()
    tree.signal_group(signal.SIGKILL)
    assert killpg_calls == []
    assert await _dies(child)


async def test_without_the_group_flag_a_crashed_engine_s_children_die(
        tmp_path: Path, fake_binary: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash path on a kernel before 6.9: the leader is killed from outside and reaped by
    the child watcher, and nobody stopped it to capture its tree then. Its children (SGLang's
    scheduler and detokenizer, holding VRAM) die all the same: captured while it ran."""
    monkeypatch.setattr("lkn.engines.proctree.PIDFD_SIGNAL_PROCESS_GROUP", 1 << 30)  # EINVAL
    killpg_calls: list[int] = []
    monkeypatch.setattr("lkn.engines.proctree.os.killpg",
                        lambda pgid, sig: killpg_calls.append(pgid))
    monkeypatch.chdir(tmp_path)  # where the fake writes its children's pids (fake.children)
    async with aiohttp.ClientSession() as session:
        engine = fake_process(fake_binary, session, "--fake-children", "2")
        await engine.ensure_ready()
        kids = [int(pid) for pid in (tmp_path / "fake.children").read_text().split()]
        try:
            await asyncio.sleep(0.2)  # it runs a moment before it crashes
            assert engine.pid is not None
            os.kill(engine.pid, signal.SIGKILL)  # lkn's own child, not reaped: a crash
            deadline = time.monotonic() + 10
            while engine.state is not State.FAILED and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert engine.state is State.FAILED, engine.state
            assert killpg_calls == []  # not by the group's id: the leader was reaped
            assert all([await _dies(kid) for kid in kids])
        finally:
            await engine.stop()


async def _dies(pid: int, timeout_s: float = 5.0) -> bool:
    """Whether ``pid`` dies (gone, or a zombie) within ``timeout_s``; killed if it did not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.02)
    os.kill(pid, signal.SIGKILL)  # the test's own child, alive right now: not a reused pid
    return False
