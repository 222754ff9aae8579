"""The activity log against real SQLite files: batching, the writer task, durability across a
restart, files that cannot be opened or written, retention, and every filter and grouping of
its queries (checked against the same sums done in Python)."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import sqlite3
import stat
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from lkn.errors import BadRequest
from lkn.ops.activity import ActivityLog, ActivityRow, ActivityUnavailable
from lkn.ops.activity_schema import COLUMNS, SCHEMA_VERSION
from lkn.ops.activity_store import Filters, clamp_limit, where

DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def row(**fields: Any) -> ActivityRow:
    base: dict[str, Any] = dict(
        ts=T0, request_id="req-1", key_id="alice", user=None, api="openai",
        route="/v1/chat/completions", model="qwen", backend=None, variant=None, status=200,
        prompt_tokens=10, completion_tokens=5, reasoning_tokens=0, latency_ms=100.0,
        ttft_ms=None, mode=None, intervention=None, cache=None, error=None, body=None)
    base.update(fields)
    return ActivityRow(**base)


def as_dict(r: ActivityRow) -> dict[str, Any]:
    return dataclasses.asdict(r)


async def eventually(check: Callable[[], Any], what: str) -> None:
    """Wait for the writer task without asserting how long it takes (bounded, not timed)."""
    for _ in range(2000):
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "activity.sqlite3"


@pytest.fixture
async def alog(db: Path) -> AsyncIterator[ActivityLog]:
    log = ActivityLog(db, retention_days=None)
    yield log
    await log.close()


# --- rows, the file, the schema ---------------------------------------------------------------

async def test_a_row_comes_back_with_every_field_and_an_id(alog: ActivityLog) -> None:
    full = row(user="Ann <ann@x.org> (u1)", backend="gpu0", variant=1, status=502,
               reasoning_tokens=3, ttft_ms=12.5, mode="analytic", intervention="escalate",
               cache="miss", error="engine crashed", body='{"messages": []}')
    alog.record(full)
    [got] = await alog.activity()
    assert isinstance(got.pop("id"), int)
    assert got == as_dict(full)
    assert alog.written == 1 and alog.dropped == 0 and alog.pending == 0


async def test_the_file_is_private_versioned_wal_and_indexed(alog: ActivityLog, db: Path) -> None:
    assert await alog.open() is True
    alog.record(row())
    assert await alog.flush() == 1
    for name in (db.name, db.name + "-wal", db.name + "-shm"):
        assert stat.S_IMODE((db.parent / name).stat().st_mode) == 0o600, name
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert {"activity_ts", "activity_key_ts", "activity_model_ts"} <= indexes


async def test_nothing_is_opened_until_asked(db: Path) -> None:
    log = ActivityLog(db)
    log.record(row())
    assert not db.exists() and log.available and log.pending == 1
    await log.close()  # the pending row is written on close
    assert db.exists()


# --- the writer task, under concurrent load, across a restart ---------------------------------

async def test_1000_rows_from_8_keys_while_the_writer_runs_all_arrive_with_exact_sums(
        db: Path) -> None:
    log = ActivityLog(db, flush_interval_s=0.001, retention_days=None, max_pending=10_000)
    writer = asyncio.create_task(log.run())
    expected_tokens: dict[str, int] = {}
    expected_reasoning: dict[str, int] = {}
    rng = random.Random(22)

    async def client(key: str) -> None:
        for i in range(125):
            prompt, completion = rng.randint(1, 4000), rng.randint(0, 2000)
            reasoning = rng.randint(0, completion)
            expected_tokens[key] = expected_tokens.get(key, 0) + prompt + completion
            expected_reasoning[key] = expected_reasoning.get(key, 0) + reasoning
            log.record(row(request_id=f"{key}-{i}", key_id=key, prompt_tokens=prompt,
                           completion_tokens=completion, reasoning_tokens=reasoning,
                           ts=T0 + i))
            await asyncio.sleep(0 if i % 7 else 0.001)  # let the writer take partial batches

    keys = [f"key-{n}" for n in range(8)]
    await asyncio.gather(*(client(k) for k in keys))
    try:
        assert await log.tokens_since(0) == expected_tokens
        assert await log.requests_since(0) == {k: 125 for k in keys}
        usage = {u["key"]: u for u in await log.usage(group_by="key")}
        assert {k: u["reasoning_tokens"] for k, u in usage.items()} == expected_reasoning
        rows = await log.activity(limit=1000)
        assert len(rows) == 1000
        assert {r["request_id"] for r in rows} == {f"{k}-{i}" for k in keys for i in range(125)}
        assert log.written == 1000 and log.dropped == 0 and log.write_errors == 0
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
    assert not log.available


async def test_a_restart_keeps_tokens_and_usage(db: Path) -> None:
    first = ActivityLog(db, retention_days=None)
    for i, key in enumerate(["alice", "bob", "alice", ""]):
        first.record(row(key_id=key, ts=T0 + i, prompt_tokens=100 + i, completion_tokens=i))
    await first.close()

    second = ActivityLog(db, retention_days=None)
    try:
        assert await second.tokens_since(T0) == {"alice": 100 + 102 + 2, "bob": 102, "": 106}
        assert await second.tokens_since(T0 + 2) == {"alice": 104, "": 106}
        usage = await second.usage(group_by="key")
        assert [(u["key"], u["requests"], u["total_tokens"]) for u in usage] == [
            ("alice", 2, 204), ("", 1, 106), ("bob", 1, 102)]
        second.record(row(key_id="bob", ts=T0 + 9))
        assert (await second.requests_since(T0))["bob"] == 2
    finally:
        await second.close()


async def test_cancelling_the_writer_writes_what_is_pending_then_closes(db: Path) -> None:
    log = ActivityLog(db, flush_interval_s=3600, retention_days=None)
    writer = asyncio.create_task(log.run())
    await eventually(lambda: db.exists(), "the writer opened the file")
    for i in range(3):
        log.record(row(request_id=f"late-{i}"))
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert log.written == 3 and not log.available
    log.record(row())  # after close: counted, never raised
    assert log.dropped == 1
    with pytest.raises(ActivityUnavailable):
        await log.activity()

    again = ActivityLog(db)
    try:
        assert {r["request_id"] for r in await again.activity()} == {"late-0", "late-1",
                                                                     "late-2"}
    finally:
        await again.close()


async def test_the_batch_is_bounded_and_drops_the_oldest(db: Path) -> None:
    log = ActivityLog(db, max_pending=5)
    try:
        for i in range(8):
            log.record(row(request_id=f"r{i}"))
        assert log.pending == 5 and log.dropped == 3
        assert [r["request_id"] for r in await log.activity()] == ["r7", "r6", "r5", "r4", "r3"]
    finally:
        await log.close()


async def test_a_half_full_batch_wakes_the_writer_before_its_interval(db: Path) -> None:
    log = ActivityLog(db, flush_interval_s=3600, max_pending=10, retention_days=None)
    writer = asyncio.create_task(log.run())
    try:
        await eventually(lambda: db.exists(), "the writer opened the file")
        for i in range(5):
            log.record(row(request_id=f"r{i}"))
        await eventually(lambda: log.written == 5, "the writer flushed early")
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer


# --- files that cannot be opened or written ---------------------------------------------------

def _unopenable(tmp_path: Path, how: str) -> Path:
    if how == "inside_a_file":  # what root cannot be kept out of by permissions
        (tmp_path / "state").write_text("a file, not a directory")
        return tmp_path / "state" / "activity.sqlite3"
    if how == "read_only_dir":
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(0o500)
        return state / "activity.sqlite3"
    corrupt = tmp_path / "activity.sqlite3"
    corrupt.write_bytes(b"this is not an SQLite database\n" * 200)
    return corrupt


@pytest.mark.parametrize("how", [
    "inside_a_file",
    pytest.param("read_only_dir", marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root writes into a 0500 directory")),
    "corrupt_file",
])
async def test_a_file_that_cannot_be_opened_leaves_lkn_serving(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    path = _unopenable(tmp_path, how)
    before = path.read_bytes() if how == "corrupt_file" else None
    log = ActivityLog(path, flush_interval_s=0.001)
    writer = asyncio.create_task(log.run())
    try:
        await eventually(lambda: not log.available, "the writer found the file unusable")
        for _ in range(3):
            log.record(row())  # never raises
        assert log.dropped == 3 and log.pending == 0
        with pytest.raises(ActivityUnavailable) as err:
            await log.usage(group_by="key")
        assert err.value.status == 503
        assert not writer.done()  # the writer goes on (doing nothing)
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        if how == "read_only_dir":
            (tmp_path / "state").chmod(0o700)  # so tmp_path can be cleaned up
    assert "cannot be opened" in caplog.text
    if before is not None:
        assert path.read_bytes() == before  # a corrupt file is left as evidence, not replaced


async def test_a_file_from_a_newer_lkn_is_not_written(db: Path) -> None:
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    log = ActivityLog(db)
    try:
        assert await log.open() is False
    finally:
        await log.close()


async def test_a_failing_write_is_counted_and_logged_once_and_the_log_recovers(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = ActivityLog(db, busy_timeout_s=0, retention_days=None)
    await log.open()
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock: "database is locked"
        for attempt in range(2):
            log.record(row(request_id=f"lost-{attempt}-a"))
            log.record(row(request_id=f"lost-{attempt}-b"))
            assert await log.flush() == 0
        assert log.write_errors == 2 and log.dropped == 4 and log.available
        assert caplog.text.count("could not be written") == 1
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    log.record(row(request_id="kept"))
    try:
        assert [r["request_id"] for r in await log.activity()] == ["kept"]
        assert "writing again after 2 failed batches" in caplog.text
    finally:
        await log.close()


# --- retention ----------------------------------------------------------------------------------

async def test_prune_deletes_older_rows_and_says_how_many(alog: ActivityLog) -> None:
    for i in range(5):
        alog.record(row(ts=T0 + i * DAY, request_id=f"d{i}"))
    assert await alog.prune(T0 + 2 * DAY) == 2
    assert [r["request_id"] for r in await alog.activity()] == ["d4", "d3", "d2"]
    assert await alog.prune(T0) == 0


async def test_the_writer_prunes_by_retention_days_on_the_wall_clock(db: Path) -> None:
    now = T0 + 100 * DAY
    log = ActivityLog(db, retention_days=30, flush_interval_s=0.001, clock=lambda: now)
    for age_days in (31, 29, 0):
        log.record(row(ts=now - age_days * DAY, request_id=f"age-{age_days}"))
    writer = asyncio.create_task(log.run())
    try:
        async def pruned() -> bool:
            return [r["request_id"] for r in await log.activity()] == ["age-0", "age-29"]
        await eventually(pruned, "the 31-day-old row was pruned")
    finally:
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer


# --- queries -------------------------------------------------------------------------------------

DATA = [
    row(ts=T0 + 0, key_id="alice", model="qwen", api="openai", status=200,
        prompt_tokens=10, completion_tokens=5, reasoning_tokens=2, latency_ms=100, ttft_ms=10),
    row(ts=T0 + 60, key_id="bob", model="smollm2", api="anthropic", status=429,
        prompt_tokens=0, completion_tokens=0, latency_ms=1, error="quota"),
    row(ts=T0 + DAY, key_id="alice", model="smollm2", api="ollama", status=200,
        prompt_tokens=30, completion_tokens=7, latency_ms=300, ttft_ms=30),
    row(ts=T0 + DAY + 5, key_id="", model="qwen", api="openai", status=500,
        prompt_tokens=8, completion_tokens=0, latency_ms=50, error="engine crashed"),
    row(ts=T0 + 2 * DAY, key_id="bob", model="qwen", api="responses", status=200,
        prompt_tokens=100, completion_tokens=50, reasoning_tokens=20, latency_ms=500,
        ttft_ms=40),
    row(ts=T0 + 2 * DAY + 1, key_id="alice", model="qwen", api="openai", status=404,
        prompt_tokens=0, completion_tokens=0, latency_ms=2, error="no such model"),
]


@pytest.fixture
async def filled(alog: ActivityLog) -> ActivityLog:
    for r in DATA:
        alog.record(r)
    await alog.flush()
    return alog


def _ids_of(rows: list[dict[str, Any]]) -> list[float]:
    return [r["ts"] for r in rows]


@pytest.mark.parametrize("query, keep", [
    ({}, lambda r: True),
    ({"key": "alice"}, lambda r: r.key_id == "alice"),
    ({"key": ""}, lambda r: r.key_id == ""),
    ({"model": "smollm2"}, lambda r: r.model == "smollm2"),
    ({"since": T0 + DAY}, lambda r: r.ts >= T0 + DAY),
    ({"until": T0 + DAY}, lambda r: r.ts < T0 + DAY),
    ({"since": T0 + 60, "until": T0 + 2 * DAY}, lambda r: T0 + 60 <= r.ts < T0 + 2 * DAY),
    ({"status": 200}, lambda r: r.status == 200),
    ({"status": "error"}, lambda r: r.status >= 400),
    ({"key": "alice", "model": "qwen", "status": "error"},
     lambda r: r.key_id == "alice" and r.model == "qwen" and r.status >= 400),
])
async def test_activity_filters(filled: ActivityLog, query: dict[str, Any],
                                keep: Callable[[ActivityRow], bool]) -> None:
    got = await filled.activity(**query)
    assert _ids_of(got) == sorted((r.ts for r in DATA if keep(r)), reverse=True)


async def test_activity_pages_newest_first_by_limit_and_before_id(filled: ActivityLog) -> None:
    first = await filled.activity(limit=4)
    second = await filled.activity(limit=4, before_id=first[-1]["id"])
    assert _ids_of(first + second) == sorted((r.ts for r in DATA), reverse=True)
    assert len(await filled.activity(limit=0)) == 1  # clamped, not an empty page


@pytest.mark.parametrize("group_by, group_of", [
    ("key", lambda r: r.key_id),
    ("model", lambda r: r.model),
    ("api", lambda r: r.api),
    ("day", lambda r: {0: "2026-01-01", 1: "2026-01-02", 2: "2026-01-03"}[
        int((r.ts - T0) // DAY)]),
])
@pytest.mark.parametrize("filters, keep", [
    ({}, lambda r: True),
    ({"key": "alice"}, lambda r: r.key_id == "alice"),
    ({"model": "qwen", "since": T0 + 60, "until": T0 + 2 * DAY + 1},
     lambda r: r.model == "qwen" and T0 + 60 <= r.ts < T0 + 2 * DAY + 1),
])
async def test_usage_sums_match_the_rows(
        filled: ActivityLog, group_by: str, group_of: Callable[[ActivityRow], str],
        filters: dict[str, Any], keep: Callable[[ActivityRow], bool]) -> None:
    expected: dict[str, dict[str, Any]] = {}
    for r in filter(keep, DATA):
        sums = expected.setdefault(group_of(r), {
            "requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "reasoning_tokens": 0, "total_tokens": 0, "latencies": [], "ttfts": []})
        sums["requests"] += 1
        sums["errors"] += r.status >= 400
        sums["prompt_tokens"] += r.prompt_tokens
        sums["completion_tokens"] += r.completion_tokens
        sums["reasoning_tokens"] += r.reasoning_tokens
        sums["total_tokens"] += r.prompt_tokens + r.completion_tokens
        sums["latencies"].append(r.latency_ms)
        if r.ttft_ms is not None:
            sums["ttfts"].append(r.ttft_ms)
    for sums in expected.values():
        latencies, ttfts = sums.pop("latencies"), sums.pop("ttfts")
        sums["avg_latency_ms"] = pytest.approx(sum(latencies) / len(latencies))
        sums["avg_ttft_ms"] = pytest.approx(sum(ttfts) / len(ttfts)) if ttfts else None

    got = await filled.usage(group_by=group_by, **filters)  # type: ignore[arg-type]
    assert {g.pop(group_by): g for g in got} == expected
    if group_by == "day":
        assert [g["day"] for g in await filled.usage(group_by="day")] == sorted(
            {group_of(r) for r in DATA})


async def test_usage_orders_the_biggest_spender_first(filled: ActivityLog) -> None:
    assert [u["key"] for u in await filled.usage(group_by="key")] == ["bob", "alice", ""]


async def test_bad_query_arguments_are_400s(filled: ActivityLog) -> None:
    with pytest.raises(BadRequest) as err:
        await filled.activity(status="oops")
    assert err.value.param == "status"
    with pytest.raises(BadRequest) as err:
        await filled.usage(group_by="hour")  # type: ignore[arg-type]
    assert err.value.param == "group_by"


async def test_queries_see_rows_recorded_but_not_yet_written(alog: ActivityLog) -> None:
    alog.record(row(key_id="carol", prompt_tokens=7, completion_tokens=1))
    assert alog.pending == 1
    assert await alog.tokens_since(0) == {"carol": 8}


# --- the pure pieces ------------------------------------------------------------------------------

@pytest.mark.parametrize("filters, clause, params", [
    (Filters(), "", ()),
    (Filters(key="a"), " WHERE key_id = ?", ("a",)),
    (Filters(key="", model="m"), " WHERE key_id = ? AND model = ?", ("", "m")),
    (Filters(since=1.0, until=2.0), " WHERE ts >= ? AND ts < ?", (1.0, 2.0)),
    (Filters(before_id=9), " WHERE id < ?", (9,)),
    (Filters(status=503), " WHERE status = ?", (503,)),
    (Filters(status="error"), " WHERE status >= 400", ()),
])
def test_where(filters: Filters, clause: str, params: tuple[object, ...]) -> None:
    assert where(filters) == (clause, params)


@pytest.mark.parametrize("status", ["500", "errors", True, 2.5])
def test_where_refuses_a_status_that_is_neither_a_status_nor_error(status: Any) -> None:
    with pytest.raises(BadRequest):
        where(Filters(status=status))


@pytest.mark.parametrize("limit, clamped", [(-5, 1), (0, 1), (1, 1), (100, 100), (1000, 1000),
                                            (5000, 1000)])
def test_clamp_limit(limit: int, clamped: int) -> None:
    assert clamp_limit(limit) == clamped


def test_the_columns_are_the_row_fields_in_order() -> None:
    assert COLUMNS == tuple(f.name for f in dataclasses.fields(ActivityRow))
