"""Recent Responses API answers, kept so that ``previous_response_id`` can continue them.

llama-server refuses ``previous_response_id`` outright and SGLang keeps its store in one
process without bound; lkn keeps the conversation itself, at its edge, so every engine behind
it gets the whole history as plain chat messages and no engine needs state.

The store is bounded twice: by entries (least recently used first out) and by age (an entry
older than ``max_age_s`` since it was put is gone, whatever its use). It is partitioned by
owner (the caller's key id): an id is only found by the owner that stored it, so one key
cannot read another's conversation by guessing or leaking an id. Memory only: a restart
forgets everything, as a cache should; a client that needs durable history sends it as
``input``.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_AGE_S = 3600.0


@dataclass(frozen=True)
class StoredResponse:
    """What a later request needs: the conversation as canonical chat messages (the input
    that request sent, without its ``instructions``, then the answer as an assistant message,
    tool calls included) and the Response object that was answered."""
    messages: tuple[dict[str, Any], ...]
    response: dict[str, Any]


class ResponseStore:
    """A bounded LRU map of ``(owner, response id) -> StoredResponse`` with an age limit."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._clock = clock
        # oldest use first; the value keeps the time it was put
        self._entries: OrderedDict[tuple[str, str], tuple[float, StoredResponse]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        key = (owner, response_id)
        found = self._entries.get(key)
        if found is None:
            return None
        put_at, entry = found
        if self._clock() - put_at >= self.max_age_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, owner: str, response_id: str, entry: StoredResponse) -> None:
        now = self._clock()
        key = (owner, response_id)
        self._entries.pop(key, None)
        self._entries[key] = (now, entry)
        self._evict(now)

    def _evict(self, now: float) -> None:
        """The least recently used entries over the bound, and expired ones at the old end
        (an expired entry further in is dropped when it is next asked for or reaches the end:
        the size bound holds either way)."""
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        while self._entries:
            put_at, _ = next(iter(self._entries.values()))
            if now - put_at < self.max_age_s:
                break
            self._entries.popitem(last=False)
