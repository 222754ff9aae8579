"""The response cache: which requests may be cached, their keys, and LRU + TTL stores capped in
bytes, one per model (pure: no I/O, the clock is injected).

Only deterministic requests are cached: ``n`` absent or 1, and ``temperature`` 0 or a fixed
integer ``seed``. The key is a hash of the canonical request after model resolution: the body as
JSON with sorted keys and integral floats written as integers, without what does not change the
answer (``stream``, ``stream_options``, ``user``, the client's model name, lkn's own ``"lkn"``
field), plus the route, the resolved model's name, the request's effective homeostasis settings
(the ``"lkn"`` field and ``x-lkn-mode`` may change the answer) and the model's config
fingerprint. The fingerprint covers everything in the model's config but its aliases and its
cache settings, so it changes whenever a reload changes what answers (engine, file, arguments,
homeostasis); ``configure`` then drops that model's entries at once.

The key also carries the request's partition: the id of the client key it came with
(``key-<hash>``), or ``anonymous`` where lkn has no keys. One tenant's answer is never another's.

Entries expire ``ttl_s`` after they were stored; the least recently used go first when a model's
store would exceed ``max_mb``. Each entry remembers whether its answer carries ``usage``: one that
was assembled from a stream whose client did not ask for usage cannot answer a request that must
report it (every non-streamed one), which is then a miss and stores a complete answer.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from lkn.config import CacheConfig, Config, ModelConfig

# Fields that change how an answer is delivered or accounted, never what it says.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "model", "lkn"})
ENTRY_OVERHEAD = 256  # bytes an entry costs beyond its answer and key (objects, dict slots)
ROUTES = ("chat", "completions")

HIT, MISS, BYPASS = "hit", "miss", "bypass"
ANONYMOUS = "anonymous"  # the partition of every request where lkn has no keys


def deterministic(body: dict[str, Any]) -> bool:
    """n = 1 and greedy sampling or a fixed seed: the same request gets the same answer."""
    n = body.get("n")
    if n is not None and n != 1:
        return False
    temperature = body.get("temperature")
    seed = body.get("seed")
    greedy = (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
              and temperature == 0)
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    return greedy or seeded


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 0 and 0.0 ask for the same thing
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def partition_of(tenant: str) -> str:
    """A request's cache partition from its caller's tenant (``Caller.tenant``): a configured
    key's own (``key-<hash>``, by the secret: a reload that renumbers keys moves no data);
    anything else (an address, none) shares ``anonymous``: an address names no tenant, and with
    keys configured only a key gets through."""
    return tenant if tenant.startswith("key-") else ANONYMOUS


def request_key(route: str, model_name: str, body: dict[str, Any], settings: Any,
                fingerprint: str, partition: str = ANONYMOUS) -> str:
    """The canonical request as a hex digest (``settings``: a dataclass, e.g. the effective
    HomeostasisConfig; ``partition``: whose cache it is)."""
    canonical = {"route": route, "model": model_name, "fingerprint": fingerprint,
                 "partition": partition,
                 "settings": asdict(settings),
                 "body": _canonical({k: v for k, v in body.items() if k not in IGNORED_FIELDS})}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_fingerprint(model: ModelConfig) -> str:
    """Changes whenever a reload changes what would answer for this model."""
    relevant = replace(model, aliases=(), cache=CacheConfig())
    return hashlib.sha256(repr(relevant).encode("utf-8")).hexdigest()[:16]


@dataclass
class Entry:
    answer: bytes  # a complete chat.completion / text_completion as JSON
    has_usage: bool
    stored_at: float
    size: int


@dataclass
class Store:
    """One model's entries: ``_lru`` in use order, ``_stored`` in insertion order (which is also
    expiry order: every entry lives the same ``ttl_s``)."""

    fingerprint: str
    ttl_s: float
    max_bytes: int
    used_bytes: int = 0  # what its entries cost (ENTRY_OVERHEAD included)
    evictions: dict[str, int] = field(default_factory=lambda: {"size": 0, "ttl": 0})
    _lru: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    _stored: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._lru)

    def expire(self, now: float) -> None:
        while self._stored:
            key = next(iter(self._stored))
            if now - self._lru[key].stored_at < self.ttl_s:
                return
            self._remove(key)
            self.evictions["ttl"] += 1

    def get(self, key: str, now: float) -> Entry | None:
        self.expire(now)
        entry = self._lru.get(key)
        if entry is not None:
            self._lru.move_to_end(key)
        return entry

    def put(self, key: str, answer: bytes, has_usage: bool, now: float) -> bool:
        size = len(answer) + len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        self.expire(now)
        if key in self._lru:
            self._remove(key)
        while self._lru and self.used_bytes + size > self.max_bytes:
            self._remove(next(iter(self._lru)))
            self.evictions["size"] += 1
        self._lru[key] = Entry(answer, has_usage, now, size)
        self._stored[key] = None
        self.used_bytes += size
        return True

    def _remove(self, key: str) -> None:
        entry = self._lru.pop(key)
        del self._stored[key]
        self.used_bytes -= entry.size


@dataclass(frozen=True)
class Lookup:
    """What the cache decided for one request: ``result`` is hit, miss or bypass; a hit carries
    its entry, a miss the key to store the answer under."""

    result: str
    model: str
    key: str | None = None
    fingerprint: str | None = None
    entry: Entry | None = None


class ResponseCache:
    """Every model's store; ``configure`` (at start and on each reload) creates, resizes and
    drops them."""

    def __init__(self, cfg: Config, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._stores: dict[str, Store] = {}
        self.dropped: dict[str, int] = {}  # entries dropped by reloads, per model
        self.configure(cfg)

    def configure(self, cfg: Config) -> dict[str, int]:
        """Adopt a config; returns the entries dropped per model (changed, removed, disabled)."""
        dropped: dict[str, int] = {}
        stores: dict[str, Store] = {}
        for model in cfg.models:
            old = self._stores.get(model.name)
            if not model.cache.enabled:
                continue
            fp = model_fingerprint(model)
            max_bytes = int(model.cache.max_mb * 1024 * 1024)
            if old is not None and old.fingerprint == fp:
                old.ttl_s, old.max_bytes = model.cache.ttl_s, max_bytes
                old.expire(self._clock())
                while old.used_bytes > max_bytes:
                    old._remove(next(iter(old._lru)))
                    old.evictions["size"] += 1
                stores[model.name] = old
            else:
                stores[model.name] = Store(fp, model.cache.ttl_s, max_bytes)
        for name, old in self._stores.items():
            if stores.get(name) is not old and len(old):
                dropped[name] = len(old)
                self.dropped[name] = self.dropped.get(name, 0) + len(old)
        self._stores = stores
        return dropped

    def lookup(self, route: str, model: ModelConfig, body: dict[str, Any], settings: Any, *,
               bypass: bool, needs_usage: bool, partition: str = ANONYMOUS) -> Lookup | None:
        """None where the model has no cache (or the route is never cached)."""
        store = self._stores.get(model.name)
        if store is None or route not in ROUTES:
            return None
        if bypass or not deterministic(body):
            return Lookup(BYPASS, model.name)
        key = request_key(route, model.name, body, settings, store.fingerprint, partition)
        entry = store.get(key, self._clock())
        if entry is not None and (entry.has_usage or not needs_usage):
            return Lookup(HIT, model.name, key, store.fingerprint, entry)
        return Lookup(MISS, model.name, key, store.fingerprint)

    def store(self, lookup: Lookup, answer: bytes, has_usage: bool) -> bool:
        """Keep a miss's answer, unless its model's config changed since the lookup."""
        store = self._stores.get(lookup.model)
        if store is None or lookup.key is None or store.fingerprint != lookup.fingerprint:
            return False
        return store.put(lookup.key, answer, has_usage, self._clock())

    def describe(self) -> list[dict[str, Any]]:
        now = self._clock()
        out = []
        for name, store in self._stores.items():
            store.expire(now)
            out.append({"model": name, "entries": len(store), "bytes": store.used_bytes,
                        "max_bytes": store.max_bytes, "ttl_s": store.ttl_s,
                        "evictions": dict(store.evictions)})
        return out
