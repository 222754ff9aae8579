"""EngineProcess: one engine child's whole lifecycle, owned in one place.

Its states and the moves between them are the table in ``states``; ``_set_state`` checks every
move against it, and a move outside it is logged as a bug and kept in ``illegal_transitions``.

``ensure_ready()`` makes the start-or-wait decision under the process's own lock, so a request
that arrives while a start or a stop is under way waits for it and then acts on the real state,
never on a snapshot it read earlier.

Whenever the leader exits, by a stop or a crash, its whole tree is SIGKILLed: the process group
and every process carrying the engine's tag (see ``registry``), so SGLang's scheduler and
detokenizer never keep VRAM after their leader died.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import subprocess
import time
from typing import Any, Awaitable, Callable

import aiohttp

from lkn.engines.base import EngineClient
from lkn.engines.handle import StateCallback
from lkn.engines.logs import LogRing, redact_argv
from lkn.engines.proctree import (CAPTURE_S, PortError, PortPool, die_with_parent, kill_survivors,
                                  running, track, tree_of, wait_exit, watch_exit)
from lkn.engines.registry import TAG_ENV, EngineRegistry, kill_tree_of
from lkn.engines.states import TRANSITIONS, State, is_legal

# Imported from here by the fleet and the tests.
__all__ = ["EngineProcess", "EngineStartError", "PortPool", "Spawn", "State", "StateCallback"]

log = logging.getLogger("lkn.engine")

# What an engine that could not bind its port prints: llama-server's own line, and the error of
# Python servers (SGLang's uvicorn, most command engines).
BIND_FAILURE_MARKERS = ("couldn't bind http server socket", "address already in use")
BIND_TAIL_LINES = 30
LOG_TAIL_LINES = 15  # of a failed engine, in describe() (/status): admins only
START_MARK = "start: "  # the log's mark of each spawn, followed by its command line
CONFIRM_DEATH_S = 0.5  # how long a suspect engine is watched for a death already under way
CONFIRM_EXIT_S = 5.0  # how long a dead engine's crash bookkeeping may take when confirmed
HEALTH_POLL_S = 0.05  # a ready engine is noticed within ~50 ms ...
FAST_POLL_S = 0.01    # ... and within ~10 ms during the first second (small models load fast)
FAST_POLL_WINDOW_S = 1.0


class EngineStartError(Exception):
    """The engine did not become ready; the message carries the reason, never engine output
    (it may reach clients: the log tail is in ``describe()`` and the log API, for admins)."""


class PortTaken(EngineStartError):
    """The engine exited because its port was bound by someone else first (a race)."""


Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]
ILLEGAL_KEPT = 32  # illegal transitions a process remembers (each is also logged)


class EngineProcess:
    def __init__(self, client: EngineClient, *, ports: PortPool, session: aiohttp.ClientSession,
                 start_timeout_s: float, stop_grace_s: float, log_dir: str | None = None,
                 on_change: StateCallback | None = None,
                 spawn: Spawn = asyncio.create_subprocess_exec,
                 registry: EngineRegistry | None = None,
                 log_max_bytes: int = 0, log_keep: int = 3,
                 withheld_env: Callable[[], frozenset[str]] = frozenset,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key = client.key
        self._ports = ports
        self._session = session
        self.start_timeout_s = start_timeout_s
        # SGLang drains for up to ~20 s on SIGTERM: each engine kind may need more grace.
        self.stop_grace_s = client.stop_grace_s(stop_grace_s)
        self.logs = LogRing(self.key, log_dir=log_dir, max_bytes=log_max_bytes, keep=log_keep)
        self._on_change = on_change
        self._spawn = spawn
        self._registry = registry
        self._withheld_env = withheld_env  # the config's upstream keys, read at each spawn
        self._tag: str | None = None
        self._clock = clock
        self._lock = asyncio.Lock()
        self.state = State.STOPPED
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.last_error: str = ""
        self.started_at: float | None = None
        self.ready_seconds: float | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._ready_hint = asyncio.Event()  # the engine logged a ready marker
        self.start_report: list[str] = []  # its report lines of the last start (report_markers)
        self._watch_task: asyncio.Task[None] | None = None
        self._abort = False
        # (from, to) of every move outside TRANSITIONS: a bug in lkn, kept to be seen and tested
        self.illegal_transitions: collections.deque[tuple[State, State]] = \
            collections.deque(maxlen=ILLEGAL_KEPT)

    # ------------------------------------------------------------------ state
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _set_state(self, state: State, reason: str = "") -> None:
        if state is self.state:
            return
        if not is_legal(self.state, state, TRANSITIONS):
            log.error("engine %s: illegal state transition %s -> %s%s (a bug in lkn; "
                      "the new state stands)", self.key, self.state.value, state.value,
                      f" ({reason})" if reason else "")
            self.illegal_transitions.append((self.state, state))
        log.info("engine %s: %s -> %s%s", self.key, self.state.value, state.value,
                 f" ({reason})" if reason else "")
        self.logs.mark(f"{self.state.value} -> {state.value}{' ' + reason if reason else ''}")
        old, self.state = self.state, state
        if self._on_change is not None:
            self._on_change(self, old)

    # ------------------------------------------------------------------ start
    async def ensure_ready(self) -> None:
        """Return once the engine is READY, starting it if needed; raise EngineStartError."""
        async with self._lock:
            if self.state is State.READY:
                return
            if self.state is State.ASLEEP:
                await self._wake()
                return
            if self._abort:  # a stop() is waiting for the lock: it wins
                raise EngineStartError("start aborted: lkn is stopping this engine")
            try:
                await self._start()
            except BaseException:
                self._settle_failed()
                raise

    def _settle_failed(self) -> None:
        """Whatever went wrong, a process never stays STARTING or STOPPING with nobody
        working on it: the manager would count it as busy for good."""
        if self.state in (State.STARTING, State.STOPPING):
            self.last_error = self.last_error or "lkn lost track of this engine's start or stop"
            self._set_state(State.FAILED, "unexpected error")

    async def _start(self) -> None:
        self._ready_hint.clear()
        self.start_report = []
        self.logs.reopen()
        try:
            await self._launch()
        except PortTaken as taken:
            # Another process bound the port between lkn's check and the engine's bind: a
            # race, not a fault of the engine. Once more on another port before anyone hears.
            log.warning("engine %s: %s; starting it again on another port", self.key, taken)
            self.logs.mark(f"{taken}; starting again on another port")
            await self._launch(retry=False)

    async def _launch(self, *, retry: bool = True) -> None:
        """Spawn the engine on a free port and wait until it is ready. ``retry``: a start that
        fails because the port was taken raises PortTaken (STARTING still) instead of failing."""
        try:
            self.port = self._ports.acquire()
        except PortError as exc:
            self.last_error = str(exc)
            raise EngineStartError(self.last_error) from None
        self.client.new_engine_key()  # before argv and env, which may carry it
        self.logs.hidden = (self.client.engine_key,) if self.client.engine_key else ()
        argv = self.client.launch_argv(self.port)
        self.logs.mark(START_MARK + " ".join(redact_argv(argv)))
        self.started_at = self._clock()
        self._set_state(State.STARTING)
        env = self.client.env(self._withheld_env())
        self._tag = self._registry.new_tag() if self._registry is not None else None
        if self._tag is not None:
            env[TAG_ENV] = self._tag  # inherited by the whole tree: found and killed by it
        try:
            self.proc = await self._spawn(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env,
                start_new_session=True,  # own process group: stop() signals the whole tree
                preexec_fn=die_with_parent())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._ports.release(self.port)
            self.last_error = f"cannot spawn {argv[0]}: {exc}"
            self._set_state(State.FAILED, self.last_error)
            self.logs.close()
            raise EngineStartError(self.last_error) from None
        track(self.proc)  # held by identity from now on: no signal reaches a recycled pid
        if self._registry is not None and self._tag is not None:
            self._registry.add(self._tag, self.proc.pid, self.key)
        self._drain_task = asyncio.create_task(self._drain(self.proc, self.client.debug_start()))
        try:
            await self._wait_healthy()
            await self.client.on_ready(self._session, self.base_url)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, EngineStartError) else (
                "start cancelled" if isinstance(exc, asyncio.CancelledError) else
                f"start failed: {exc!r}")
            port, exited = self.port, self.proc.returncode is not None
            await self._terminate()
            taken = isinstance(exc, PortTaken) or (
                exited and isinstance(exc, EngineStartError) and self._bind_failed())
            if taken and not isinstance(exc, PortTaken):  # lkn's words, not the engine's
                reason = f"port {port} was taken before the engine could bind it"
            if retry and taken and not self._abort:
                raise PortTaken(reason) from None
            self.last_error = reason
            self._set_state(State.FAILED, reason)
            self.logs.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise EngineStartError(self.last_error) from None
        self.ready_seconds = self._clock() - self.started_at
        self._set_state(State.READY, f"pid {self.proc.pid}, port {self.port}, "
                                     f"{self.ready_seconds:.2f}s")
        self._watch_task = asyncio.create_task(self._watch(self.proc))

    def _bind_failed(self) -> bool:
        """Whether the engine's last words, since this start, say it could not bind its port."""
        words = "\n".join(self.logs.since(START_MARK, BIND_TAIL_LINES)).lower()
        return any(marker in words for marker in BIND_FAILURE_MARKERS)

    async def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = self._clock() + self.start_timeout_s
        exited = asyncio.ensure_future(self.proc.wait())
        hinted = asyncio.ensure_future(self._ready_hint.wait())
        try:
            await self._poll_health(exited, hinted, deadline)
        finally:
            for fut in (exited, hinted):
                if not fut.done():
                    fut.cancel()

    async def _poll_health(self, exited: asyncio.Future[int], hinted: asyncio.Future[Any],
                           deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self._abort:
                raise EngineStartError("start aborted: lkn is stopping this engine")
            if self.proc.returncode is not None:
                raise EngineStartError(f"engine exited with code {self.proc.returncode} "
                                       f"before it was ready")
            tree_of(self.proc).capture(every_s=CAPTURE_S)  # its children, should it crash
            try:
                ready = await self.client.check_ready(self._session, self.base_url)
                if ready.refused and self.client.engine_key:  # another server's port
                    raise PortTaken(f"port {self.port} answers, but refuses this start's "
                                    f"engine key ({ready.detail}): another server holds it")
                if ready.ready:
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass  # not listening yet: connection refused while weights load
            if self._clock() >= deadline:
                raise EngineStartError(f"engine not ready after {self.start_timeout_s:g}s")
            # An exit is noticed at once rather than after the next poll, and so is the
            # engine's own "ready" line (once: after it, the plain interval).
            waits: set[asyncio.Future[Any]] = {exited}
            if not hinted.done():
                waits.add(hinted)
            early = self.started_at is not None and \
                self._clock() - self.started_at < FAST_POLL_WINDOW_S
            await asyncio.wait(waits, timeout=FAST_POLL_S if early else HEALTH_POLL_S)

    async def _drain(self, proc: asyncio.subprocess.Process, debug: bool = False) -> None:
        """The child's output into the log ring. ``debug`` (a debug-level start: its output may
        carry prompts): after the start, only lines a normal level prints too (kept_after_ready)."""
        assert proc.stdout is not None
        markers, reports = self.client.ready_markers, self.client.report_markers
        after_start = False
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                # a line longer than the stream limit: read what is buffered and go on
                line = await proc.stdout.read(65536)
            if not line:
                return
            text = line.decode("utf-8", "replace")
            if debug and (self.proc is not proc or self.state is not State.STARTING):
                if not after_start:
                    after_start = True
                    self.logs.mark(f"a debug-level start: {self.client.debug_kept} after it")
                if not self.client.kept_after_ready(text):
                    continue
            self.logs.append(text)
            if self.state is not State.STARTING:
                continue
            if reports and any(m in text for m in reports):
                self.start_report.append(text.rstrip("\n"))
            if markers and any(m in text for m in markers):
                self._ready_hint.set()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        try:
            await self._watch_exit(proc)
        except Exception:  # nobody awaits this task: say so, and never stay READY for a corpse
            log.exception("engine %s: watching the process failed", self.key)
            if self.proc is proc and self.state in (State.READY, State.ASLEEP):
                self.last_error = "engine exited; lkn could not clean up after it"
                self._set_state(State.FAILED, self.last_error)

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await watch_exit(proc)  # its tree captured meanwhile, for _kill_tree
        async with self._lock:
            if self.proc is not proc or self.state not in (State.READY, State.ASLEEP):
                return  # a stop we asked for
            # The engine crashed. Its children may live on and hold VRAM (and the output pipe):
            # kill the tree. The manager restarts it on demand, with backoff.
            await self._kill_tree(proc)
            await self._reap()
            self.last_error = f"engine exited unexpectedly with code {code}"
            self._set_state(State.FAILED, f"exited unexpectedly with code {code}")
            self.logs.close()

    async def confirm_alive(self) -> bool:
        """A request could not reach the engine, or its answer broke off: look at the child now.
        The exit watcher polls (wait_exit) and would notice a death up to a poll later, long
        enough for the next request to be sent to the corpse; found dead here, the crash is
        handled before this returns (tree killed, FAILED), so the next lease restarts it.
        False only for a crash: an engine being stopped on purpose (an unload, a swap) did not
        die, and the request is not tried on it again."""
        proc, watcher = self.proc, self._watch_task
        if proc is None or self.state is not State.READY:
            return self.state is not State.FAILED
        # A killed process closes its sockets before it is a zombie: a refused connect can
        # come a moment before the death shows. Looked at for a short while, not once.
        loop = asyncio.get_running_loop()
        settle = loop.time() + CONFIRM_DEATH_S
        while proc.returncode is None and running(proc.pid):
            if loop.time() >= settle:
                return True
            await asyncio.sleep(0.01)
        if watcher is not None and not watcher.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), CONFIRM_EXIT_S)
        return self.state in (State.STOPPING, State.STOPPED)  # a stop raced the death

    # ------------------------------------------------------------------ stop
    async def stop(self) -> None:
        """Stop the engine (aborting a start in progress) and wait until its tree is gone."""
        self._abort = True
        try:
            async with self._lock:
                if self.proc is None or self.state in (State.STOPPED, State.FAILED):
                    if self.state is State.FAILED:
                        self._set_state(State.STOPPED, "reset")
                        self.logs.close()
                    return
                self._set_state(State.STOPPING)
                try:
                    await self._terminate()
                except BaseException:
                    self._settle_failed()
                    raise
                self._set_state(State.STOPPED)
                self.logs.close()
        finally:
            self._abort = False

    async def _terminate(self) -> None:
        """SIGTERM to the process group, grace, SIGKILL, wait; then kill the rest of the tree."""
        proc = self.proc
        if proc is None:
            return
        tree = tree_of(proc).capture()  # handles on the children, taken before the reap
        if proc.returncode is None:
            tree.signal_group(signal.SIGTERM)
            if await wait_exit(proc, self.stop_grace_s) is None:
                self.logs.mark(f"no exit {self.stop_grace_s:g}s after SIGTERM: SIGKILL")
                tree.signal_group(signal.SIGKILL)
                await wait_exit(proc)
        # Children that left the group (setsid) or outlived the leader: kill them by handle.
        await asyncio.get_running_loop().run_in_executor(None, kill_survivors,
                                                         tree.capture().members())
        await self._kill_tree(proc)
        await self._reap()

    async def _kill_tree(self, proc: asyncio.subprocess.Process) -> None:
        """After the leader exited: SIGKILL its group and everything carrying its tag."""
        tree_of(proc).signal_group(signal.SIGKILL)
        if (tag := self._tag) is not None:
            killed = await asyncio.get_running_loop().run_in_executor(None, kill_tree_of, tag)
            if killed:
                self.logs.mark(f"killed {len(killed)} leftover processes of the engine: {killed}")

    async def _reap(self) -> None:
        if self._drain_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._drain_task, 2.0)
        if self.port is not None:
            self._ports.release(self.port)
        if self._registry is not None and self._tag is not None:
            self._registry.remove(self._tag)
        self.logs.mark(f"exited with code {self.proc.returncode if self.proc else None}")

    # ------------------------------------------------------------------ sleep
    async def sleep(self) -> bool:
        """Release the engine's GPU memory without exiting (engines that support it); False if
        it did not sleep. Only an engine that says it runs nothing is asked: SGLang's scheduler
        kills the whole server when asked to release while busy (also for requests lkn gave up
        on but the engine still runs). A release that fails or loses its connection is taken for
        a crash: a half-released engine is unusable."""
        async with self._lock:
            if self.state is not State.READY or not self.client.supports_sleep:
                return False
            if not await self.client.engine_idle(self._session, self.base_url):
                return False
            try:
                await self.client.release_memory(self._session, self.base_url)
            except Exception as exc:
                await self._fail_running(f"memory release failed: {exc!r}")
                raise EngineStartError(self.last_error) from None
            self._set_state(State.ASLEEP, "memory released")
            return True

    async def _wake(self) -> None:
        try:
            await self.client.resume_memory(self._session, self.base_url)
        except Exception as exc:
            await self._fail_running(f"memory resume failed: {exc!r}")
            raise EngineStartError(self.last_error) from None
        self._set_state(State.READY, "memory resumed")

    async def _fail_running(self, reason: str) -> None:
        """A running engine that can no longer be trusted: kill its tree, mark it FAILED (the
        manager counts it as a crash and restarts it on demand)."""
        await self._terminate()
        self.last_error = reason
        self._set_state(State.FAILED, reason)
        self.logs.close()

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "state": self.state.value, "pid": self.pid, "port": self.port,
                "ctx_size": self.client.effective_ctx, "last_error": self.last_error or None,
                "start_seconds": (None if self.ready_seconds is None
                                  else round(self.ready_seconds, 3)),
                "log": self.logs.path,
                # for admins (/status): the engine's last words when it failed
                "log_tail": (self.logs.tail(LOG_TAIL_LINES) or None)
                if self.state is State.FAILED else None}
