"""Recent Responses API answers, kept so that ``previous_response_id`` can continue them.

llama-server refuses ``previous_response_id`` outright and SGLang keeps its store in one
process without bound; lkn keeps the conversation itself, at its edge, so every engine behind
it gets the whole history as plain chat messages and no engine needs state.

An entry keeps only what its turn added (the input messages of that request and the answer)
and the id of the response it continued; the conversation is rebuilt by walking that chain
back (``conversation``). A chain of N turns so costs O(N) memory, not O(N²) as whole copies
would. A missing link (evicted, expired, or never stored) means the conversation cannot be
rebuilt, which the caller answers like an unknown id.

The store is bounded three ways: by entries, by bytes (each entry's size is estimated when it
is put, as the JSON length of its messages and its response; an entry larger than the whole
bound is not kept) — least recently used first out for both, a walked chain counting as a use
of every link — and by age (an entry older than ``max_age_s`` since it was put is gone,
whatever its use). It is partitioned by owner (the caller's key id): an id is only found by the
owner that stored it, so one key cannot read another's conversation by guessing or leaking an
id. Memory only: a restart forgets everything, as a cache should; a client that needs durable
history sends it as ``input``.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from lkn import fastjson

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_AGE_S = 3600.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class StoredResponse:
    """One turn: its new canonical chat messages (the input that request sent, without its
    ``instructions``, then the answer as an assistant message, tool calls included), the
    Response object that was answered, and the id of the response it continued."""
    messages: tuple[dict[str, Any], ...]
    response: dict[str, Any]
    previous: str | None = None

    def size(self) -> int:
        """Roughly the bytes it holds: its JSON length."""
        return len(fastjson.dumps(list(self.messages))) + len(fastjson.dumps(self.response))


@dataclass(frozen=True)
class _Slot:
    put_at: float
    size: int
    entry: StoredResponse


class ResponseStore:
    """A bounded LRU map of ``(owner, response id) -> StoredResponse`` with an age limit."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic, *,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Slot] = OrderedDict()  # oldest use first
        self.bytes = 0  # the estimated size of what is kept

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        key = (owner, response_id)
        slot = self._entries.get(key)
        if slot is None:
            return None
        if self._clock() - slot.put_at >= self.max_age_s:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return slot.entry

    def conversation(self, owner: str, response_id: str) -> list[dict[str, Any]] | None:
        """The whole conversation up to and including ``response_id``'s answer, oldest first
        (the stored messages themselves: copy before changing them), or None when a link of
        its chain is not here."""
        turns: list[tuple[dict[str, Any], ...]] = []
        at: str | None = response_id
        while at is not None:
            entry = self.get(owner, at)
            if entry is None or len(turns) > len(self._entries):  # gone (or a loop)
                return None
            turns.append(entry.messages)
            at = entry.previous
        return [message for messages in reversed(turns) for message in messages]

    def put(self, owner: str, response_id: str, entry: StoredResponse) -> None:
        now = self._clock()
        key = (owner, response_id)
        self._drop(key)
        slot = _Slot(now, entry.size(), entry)
        if slot.size > self.max_bytes:
            return  # never fits: keeping it would evict everything else first
        self._entries[key] = slot
        self.bytes += slot.size
        self._evict(now)

    def _drop(self, key: tuple[str, str]) -> None:
        slot = self._entries.pop(key, None)
        if slot is not None:
            self.bytes -= slot.size

    def _evict(self, now: float) -> None:
        """The least recently used entries over the bounds, and expired ones at the old end
        (an expired entry further in is dropped when it is next asked for or reaches the end:
        the bounds hold either way)."""
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        while self._entries:
            key, slot = next(iter(self._entries.items()))
            if now - slot.put_at < self.max_age_s:
                break
            self._drop(key)
