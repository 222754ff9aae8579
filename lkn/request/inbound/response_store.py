"""Recent Responses API answers, kept so that ``previous_response_id`` can continue them.

llama-server refuses ``previous_response_id`` outright and SGLang keeps its store in one
process without bound; lkn keeps the conversation itself, at its edge, so every engine behind
it gets the whole history as plain chat messages and no engine needs state.

An entry keeps only what its turn added (the input messages of that request and the answer)
and the id of the response it continued; the conversation is rebuilt by walking that chain
back (``conversation``). A chain of N turns so costs O(N) memory, not O(N²) as whole copies
would. A missing link (evicted, expired, or never stored) means the conversation cannot be
rebuilt, which the caller answers like an unknown id.

The store is bounded three ways, least recently used first out for all three:

- by entries and by bytes (each entry's size is estimated when it is put, as the JSON length of
  its messages and its response; an entry larger than its owner's share of the bytes is not
  kept);
- by age: an entry not used for ``max_age_s`` is gone. A use is a ``get``, a ``put``, and a
  successful ``conversation`` walk, which refreshes every link of the chain, oldest to newest
  (so the head is the most recently used and the first turn the least): a conversation in use
  lives however long it lasts, an abandoned one goes ``max_age_s`` after its last turn;
- per owner (the caller's key id): an owner's own puts evict that owner's least recently used
  entries first once it holds more than ``owner_share`` of ``max_entries`` or of
  ``max_bytes``, so one busy key cannot push every other key's conversations out; the global
  bounds stay as the last resort (with the default share of one half, two busy keys can fill
  the store between them).

So a chain can be at most ``owner_share * max_entries`` turns long (512 with the defaults):
the turn past that evicts the first, and the conversation can no longer be rebuilt. A client
with longer conversations sends the history as ``input``.

The store is partitioned by owner: an id is only found by the owner that stored it, so one key
cannot read another's conversation by guessing or leaking an id. Memory only: a restart forgets
everything, as a cache should; a client that needs durable history sends it as ``input``.
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
DEFAULT_OWNER_SHARE = 0.5

Key = tuple[str, str]  # (owner, response id)


@dataclass(frozen=True)
class StoredResponse:
    """One turn: its new canonical chat messages (the input that request sent, without its
    ``instructions``, then the answer as one assistant message, tool calls included), the
    Response object that was answered, and the id of the response it continued."""
    messages: tuple[dict[str, Any], ...]
    response: dict[str, Any]
    previous: str | None = None

    def size(self) -> int:
        """Roughly the bytes it holds: its JSON length."""
        return len(fastjson.dumps(list(self.messages))) + len(fastjson.dumps(self.response))


@dataclass
class _Slot:
    used_at: float  # the last put, get or walk that reached it
    size: int
    entry: StoredResponse


@dataclass
class _Owner:
    """One owner's entries, least recently used first, and their bytes."""
    ids: OrderedDict[str, None]
    bytes: int = 0


class ResponseStore:
    """A bounded LRU map of ``(owner, response id) -> StoredResponse`` with an idle-age limit
    and per-owner shares (see the module's docstring)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic, *,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 owner_share: float = DEFAULT_OWNER_SHARE) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if not 0 < owner_share <= 1:
            raise ValueError("owner_share must be more than 0 and at most 1")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.owner_share = owner_share
        self.owner_entries = max(1, int(max_entries * owner_share))
        self.owner_bytes = max(1, int(max_bytes * owner_share))
        self._clock = clock
        # oldest use first; a use moves an entry to the end, so ``used_at`` rises along it
        self._entries: OrderedDict[Key, _Slot] = OrderedDict()
        self._owners: dict[str, _Owner] = {}
        self.bytes = 0  # the estimated size of what is kept

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The entry (a use of it: its age starts again), or None."""
        key, now = (owner, response_id), self._clock()
        slot = self._live(key, now)
        if slot is None:
            return None
        self._touch(key, slot, now)
        return slot.entry

    def conversation(self, owner: str, response_id: str) -> list[dict[str, Any]] | None:
        """The whole conversation up to and including ``response_id``'s answer, oldest first
        (the stored messages themselves: copy before changing them), or None when a link of
        its chain is not here. A found chain is a use of every link, refreshed oldest to
        newest; a broken one refreshes nothing."""
        now = self._clock()
        links: list[tuple[Key, _Slot]] = []
        at: str | None = response_id
        while at is not None:
            key = (owner, at)
            slot = self._live(key, now)
            if slot is None or len(links) > len(self._entries):  # gone (or a loop)
                return None
            links.append((key, slot))
            at = slot.entry.previous
        links.reverse()
        for key, slot in links:
            self._touch(key, slot, now)
        return [message for _, slot in links for message in slot.entry.messages]

    def put(self, owner: str, response_id: str, entry: StoredResponse) -> None:
        now = self._clock()
        key = (owner, response_id)
        self._drop(key)
        slot = _Slot(now, entry.size(), entry)
        if slot.size > self.owner_bytes:
            return  # never fits: keeping it would evict everything else of the owner first
        self._entries[key] = slot
        self.bytes += slot.size
        mine = self._owners.setdefault(owner, _Owner(OrderedDict()))
        mine.ids[response_id] = None
        mine.bytes += slot.size
        while len(mine.ids) > self.owner_entries or mine.bytes > self.owner_bytes:
            self._drop((owner, next(iter(mine.ids))))  # the owner's own oldest first
        self._evict(now)

    def _live(self, key: Key, now: float) -> _Slot | None:
        """The slot of ``key`` unless it is missing or expired (an expired one is dropped)."""
        slot = self._entries.get(key)
        if slot is not None and now - slot.used_at >= self.max_age_s:
            self._drop(key)
            return None
        return slot

    def _touch(self, key: Key, slot: _Slot, now: float) -> None:
        slot.used_at = max(slot.used_at, now)
        self._entries.move_to_end(key)
        self._owners[key[0]].ids.move_to_end(key[1])

    def _drop(self, key: Key) -> None:
        slot = self._entries.pop(key, None)
        if slot is None:
            return
        self.bytes -= slot.size
        mine = self._owners[key[0]]
        del mine.ids[key[1]]
        mine.bytes -= slot.size
        if not mine.ids:
            del self._owners[key[0]]

    def _evict(self, now: float) -> None:
        """The least recently used entries over the global bounds, then the expired ones:
        the order of use is the order of ``used_at``, so they are all at the old end."""
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        while self._entries:
            key, slot = next(iter(self._entries.items()))
            if now - slot.used_at < self.max_age_s:
                break
            self._drop(key)
