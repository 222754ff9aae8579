"""What one finished request leaves in the activity log, and the SQLite file that keeps it.

The schema is versioned by ``PRAGMA user_version``: ``MIGRATIONS[n]`` takes a file from version
``n`` to ``n + 1``, each in its own transaction, so a file written by an older lkn is brought up
to date on open and an empty file is simply migrated from version 0. A file from a *newer* lkn
is refused rather than written in a shape it does not know.

The file is created with mode 0600 before SQLite opens it: it holds who asked what (and, with
capture on, the text itself), and SQLite gives its ``-wal`` and ``-shm`` files the database
file's own mode.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path

log = logging.getLogger("lkn.ops.activity")


@dataclass(frozen=True)
class ActivityRow:
    """One finished request. Token counts are 0 when the engine did not report them."""
    ts: float  # wall clock, epoch seconds
    request_id: str
    key_id: str  # "" for a request without a key
    user: str | None  # a forwarded Open WebUI user, "name <email> (id)"
    api: str  # "openai", "responses", "anthropic", "ollama", "llamacpp"
    route: str
    model: str
    backend: str | None
    variant: int | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    latency_ms: float
    ttft_ms: float | None
    mode: str | None
    intervention: str | None
    cache: str | None
    error: str | None  # a short message, for a status >= 400
    body: str | None  # captured text when capture is on, capped by the caller


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ActivityRow))
row_values = attrgetter(*COLUMNS)  # a row's values in COLUMNS' order (astuple would deep-copy)


MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the activity table; ids only grow, so ``before_id`` pages through it newest first
    """
    CREATE TABLE activity (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        request_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        user TEXT,
        api TEXT NOT NULL,
        route TEXT NOT NULL,
        model TEXT NOT NULL,
        backend TEXT,
        variant INTEGER,
        status INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        ttft_ms REAL,
        mode TEXT,
        intervention TEXT,
        cache TEXT,
        error TEXT,
        body TEXT
    );
    CREATE INDEX activity_ts ON activity (ts);
    CREATE INDEX activity_key_ts ON activity (key_id, ts);
    CREATE INDEX activity_model_ts ON activity (model, ts);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class NewerSchema(sqlite3.DatabaseError):
    """The file was written by a newer lkn."""


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # an existing file keeps its mode
    os.close(fd)


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]  # reads the header: a corrupt
    if version > SCHEMA_VERSION:                                  # file fails here
        raise NewerSchema(f"schema version {version} is newer than this lkn's "
                          f"{SCHEMA_VERSION}")
    for step in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def open_database(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """The activity file at ``path``, created and migrated, in WAL mode. Raises ``OSError`` or
    ``sqlite3.Error`` when it cannot be opened; never leaves a connection open on failure.

    ``isolation_level=None``: the caller opens its own transactions, one per batch.
    ``check_same_thread=False``: the log serializes every use on its one worker thread; the
    check would only turn a harmless slip into a lost batch.
    """
    _create_private(path)
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                           check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("activity log %s: journal mode %s, not WAL (readers may wait on "
                        "the writer)", path, mode)
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable on a crash of lkn,
        _migrate(conn)                             # at most the last commits lost on power loss
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn
