"""The durable activity log: one row per finished request, in SQLite under ``state_dir``.

It must never block a request and never fail one. ``record()`` only appends to a bounded
in-memory batch (beyond ``max_pending`` rows the oldest are dropped and counted); the one writer
task, ``run()``, writes the batch every ``flush_interval_s`` (sooner when it is half full) in one
transaction. A write that fails (a full or read-only disk, a locked or corrupt file) is logged,
counted in ``write_errors``, its rows counted in ``dropped``, and the task goes on; a file that
cannot be opened at all leaves ``available`` False and ``record()`` a counter. lkn serves
either way.

Every use of the database runs on one worker thread of the log's own (a one-thread executor,
not ``asyncio.to_thread``'s shared pool): the connection is only ever touched there, and jobs
run in the order they were submitted, so a query submitted after a flush sees its rows, and the
final flush and close queue behind a batch in flight even when ``run()`` is cancelled. Writes
are shielded from cancellation: a batch once taken is written or counted, never lost silently.

Queries flush first, so they see every row recorded before them. Retention: with
``retention_days`` (default 30; None keeps everything) ``run()`` prunes on start and then every
``prune_interval_s`` (an hour).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from lkn.errors import LknError
from lkn.ops import activity_store as store
from lkn.ops.activity_schema import ActivityRow, open_database
from lkn.ops.activity_store import Filters, GroupBy

__all__ = ["ActivityLog", "ActivityRow", "ActivityUnavailable", "GroupBy"]

log = logging.getLogger("lkn.ops.activity")
T = TypeVar("T")
_DAY_S = 86400.0


class ActivityUnavailable(LknError):
    """The log could not be opened, is closed, or its file failed a read (503)."""
    status = 503
    type = "server_error"
    code = "activity_unavailable"
    should_retry = False


class ActivityLog:
    def __init__(self, path: str | os.PathLike[str], *, flush_interval_s: float = 0.5,
                 retention_days: float | None = 30, max_pending: int = 10_000,
                 prune_interval_s: float = 3600.0, busy_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._flush_interval_s = flush_interval_s
        self._retention_s = None if retention_days is None else retention_days * _DAY_S
        self._max_pending = max_pending
        self._prune_interval_s = prune_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock  # wall clock: rows carry epoch times, retention cuts by them
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lkn-activity")
        self._wake = asyncio.Event()
        # the event loop's side
        self._pending: deque[ActivityRow] = deque()
        self._dropped_pending = 0
        self._closing = False
        # the worker thread's side (only that thread writes these)
        self._conn: sqlite3.Connection | None = None
        self._state: Literal["new", "open", "failed", "closed"] = "new"
        self._failure = ""
        self._written = 0
        self._dropped_writes = 0
        self._write_errors = 0
        self._failing_batches = 0

    # --- what lkn reads (metrics, /status) -------------------------------------------------

    @property
    def available(self) -> bool:
        """False once the file could not be opened, or after close. True before the first
        open: rows are kept until the writer knows."""
        return self._state in ("new", "open") and not self._closing

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        """Rows lost: beyond the batch bound, recorded while unavailable, or in a failed write."""
        return self._dropped_pending + self._dropped_writes

    @property
    def write_errors(self) -> int:
        return self._write_errors

    # --- the request path -------------------------------------------------------------------

    def record(self, row: ActivityRow) -> None:
        """Keep ``row`` for the writer. O(1); never raises, never waits."""
        if not self.available:
            self._dropped_pending += 1
            return
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self._dropped_pending += 1
        self._pending.append(row)
        if len(self._pending) * 2 >= self._max_pending:
            self._wake.set()

    # --- the writer task ----------------------------------------------------------------------

    async def open(self) -> bool:
        """Open (create, migrate) the file now rather than at the first write; ``available``."""
        if not self._closing:
            await self._submit(self._ensure_open, shield=True)
        return self.available

    async def run(self) -> None:
        """The one writer: lkn starts it and cancels it at shutdown, when it writes what is
        pending and closes the file."""
        loop = asyncio.get_running_loop()
        try:
            await self.open()
            next_prune = loop.time()
            while True:
                await self.flush()
                if self._retention_s is not None and loop.time() >= next_prune:
                    await self._prune_expired(self._retention_s)
                    next_prune = loop.time() + self._prune_interval_s
                try:
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            await self.close()

    async def flush(self) -> int:
        """Write what is pending now, in one transaction; how many rows were written."""
        if not self._pending:
            return 0
        batch, self._pending = list(self._pending), deque()
        return await self._submit(self._write, store.encode(batch), len(batch), shield=True)

    async def close(self) -> None:
        """Write what is pending and close the file; later rows are dropped (counted)."""
        if self._closing:
            return
        self._closing = True  # from now on record() drops: nothing is left behind in memory
        try:
            await self.flush()
            await self._submit(self._close, shield=True)
        finally:
            self._executor.shutdown(wait=False)  # a queued close job still runs

    async def _prune_expired(self, retention_s: float) -> None:
        try:
            deleted = await self.prune(self._clock() - retention_s)
        except ActivityUnavailable as exc:
            log.warning("activity log: pruning failed (%s); will try again", exc.message)
            return
        if deleted:
            log.info("activity log: pruned %d rows older than %g days", deleted,
                     retention_s / _DAY_S)

    # --- queries ------------------------------------------------------------------------------

    async def activity(self, *, key: str | None = None, model: str | None = None,
                       since: float | None = None, until: float | None = None,
                       status: int | str | None = None, limit: int = 100,
                       before_id: int | None = None) -> list[dict[str, Any]]:
        """Rows newest first, each with its ``id``; ``status`` is a status or ``"error"``
        (>= 400); ``limit`` is clamped to 1..1000; ``before_id`` pages to older rows."""
        filters = Filters(key, model, since, until, status, before_id)
        store.where(filters)  # a bad filter is a 400 before anything is written or read
        return await self._query(store.activity, filters, limit)

    async def usage(self, *, group_by: GroupBy, since: float | None = None,
                    until: float | None = None, key: str | None = None,
                    model: str | None = None) -> list[dict[str, Any]]:
        """Sums per key, model, UTC day or api: requests, errors, prompt/completion/reasoning
        and total tokens, average latency and time to first token."""
        return await self._query(store.usage, group_by, Filters(key, model, since, until))

    async def tokens_since(self, since: float) -> dict[str, int]:
        """Prompt + completion tokens per key id since ``since`` (epoch): quotas after a
        restart."""
        return await self._query(store.per_key_since, since, "tokens")

    async def requests_since(self, since: float) -> dict[str, int]:
        return await self._query(store.per_key_since, since, "requests")

    async def prune(self, older_than: float) -> int:
        """Delete the rows before ``older_than`` (epoch); how many."""
        return await self._query(store.prune, older_than)

    async def _query(self, fn: Callable[..., T], *args: object) -> T:
        if self._closing:
            raise ActivityUnavailable("the activity log is closed")
        await self.flush()
        return await self._submit(self._read, fn, *args, shield=False)

    # --- the worker thread ------------------------------------------------------------------

    async def _submit(self, fn: Callable[..., T], *args: object, shield: bool) -> T:
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args))
        # unshielded, a cancelled await would also cancel a job still queued behind another
        return await (asyncio.shield(future) if shield else future)

    def _ensure_open(self) -> sqlite3.Connection | None:
        if self._state == "new":
            try:
                self._conn = open_database(self.path, busy_timeout_s=self._busy_timeout_s)
            except Exception as exc:  # whatever it is, lkn serves without it
                self._state, self._failure = "failed", f"{type(exc).__name__}: {exc}"
                log.error("activity log %s cannot be opened (%s): lkn serves without it; "
                          "no activity or usage is kept and key quotas start from zero after "
                          "a restart", self.path, self._failure)
            else:
                self._state = "open"
                log.info("activity log %s open", self.path)
        return self._conn if self._state == "open" else None

    def _write(self, batch: str, rows: int) -> int:
        conn = self._ensure_open()
        if conn is None:
            self._dropped_writes += rows
            return 0
        try:
            store.insert(conn, batch)
        except Exception as exc:  # a failed write never reaches a request
            self._write_errors += 1
            self._dropped_writes += rows
            self._failing_batches += 1
            if self._failing_batches == 1:  # once per streak: a full disk would log twice a second
                log.error("activity log %s: %d rows could not be written and are dropped "
                          "(%s: %s)", self.path, rows, type(exc).__name__, exc)
            return 0
        if self._failing_batches:
            log.warning("activity log %s: writing again after %d failed batches",
                        self.path, self._failing_batches)
            self._failing_batches = 0
        self._written += rows
        return rows

    def _read(self, fn: Callable[..., T], *args: object) -> T:
        conn = self._ensure_open()
        if conn is None:
            reason = self._failure or "closed"
            raise ActivityUnavailable(f"the activity log is unavailable ({reason})")
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise ActivityUnavailable(f"the activity log failed: {type(exc).__name__}: "
                                      f"{exc}") from exc

    def _close(self) -> None:
        conn, self._conn, self._state = self._conn, None, "closed"
        if conn is not None:
            try:
                conn.execute("PRAGMA optimize")  # keeps the query planner's statistics fresh
            except sqlite3.Error:
                pass
            conn.close()
