"""The requests lkn is answering now, by request id: for ``/status`` and for an operator's
``POST /admin/requests/{id}/cancel``.

Request ids come from the client's ``x-request-id`` when it is a sane token, else lkn makes one.
Two requests may carry the same client id; a cancel of that id cancels both.
"""
from __future__ import annotations

import asyncio
import contextvars
import re
import secrets
import time
from dataclasses import dataclass, field

# The id of the request the running code serves ("" outside any request): log lines carry it.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("lkn_request_id", default="")
_SANE = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")  # no "/": it must fit a URL path segment


def request_id(given: str | None) -> str:
    """The client's id when it is a sane token (no spaces or control characters, at most 128
    characters), else a new one."""
    if given and _SANE.fullmatch(given):
        return given
    return "req-" + secrets.token_hex(8)


@dataclass(eq=False)
class Entry:
    id: str
    route: str
    task: asyncio.Task[object] | None
    started: float = field(default_factory=time.monotonic)
    model: str = ""
    cancelled: bool = False  # by an operator (not the client leaving)


class InFlight:
    def __init__(self) -> None:
        self._entries: dict[str, list[Entry]] = {}

    def add(self, rid: str, route: str) -> Entry:
        entry = Entry(rid, route, asyncio.current_task())
        self._entries.setdefault(rid, []).append(entry)
        return entry

    def remove(self, entry: Entry) -> None:
        entries = self._entries.get(entry.id, [])
        if entry in entries:
            entries.remove(entry)
        if not entries:
            self._entries.pop(entry.id, None)

    def cancel(self, rid: str) -> int:
        """Cancel every request with this id; how many there were."""
        entries = self._entries.get(rid, [])
        for entry in entries:
            if not entry.cancelled and entry.task is not None:
                entry.cancelled = True
                entry.task.cancel()
        return len(entries)

    def describe(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [{"id": e.id, "model": e.model, "route": e.route,
                 "running_s": round(now - e.started, 3)}
                for entries in self._entries.values() for e in entries]

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())
