"""The response cache's pure parts: determinism, keys, LRU by size, TTL on a fake clock, reload."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from lkn.cache.store import (BYPASS, ENTRY_OVERHEAD, HIT, MISS, ResponseCache, Store, deterministic,
                       model_fingerprint, request_key)
from lkn.config import CacheConfig, ConfigError, HomeostasisConfig, build_config

MSG = [{"role": "user", "content": "hi"}]
SETTINGS = HomeostasisConfig()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cfg(**cache: Any) -> Any:
    model = {"name": "a", "aliases": ["alias"], "model_file": "/x.gguf", "ctx_size": 512,
             "cache": {"enabled": True, **cache}}
    return build_config({"models": [model, {"name": "b", "model_file": "/x.gguf",
                                            "ctx_size": 512}]})


@pytest.mark.parametrize("body, expected", [
    ({"temperature": 0}, True),
    ({"temperature": 0.0, "n": 1}, True),
    ({"seed": 42, "temperature": 1.0}, True),
    ({"seed": 42}, True),
    ({}, False),                                   # OpenAI's default temperature is 1
    ({"temperature": 0.7}, False),
    ({"temperature": 1, "seed": None}, False),
    ({"temperature": 0, "n": 2}, False),
    ({"seed": True}, False),                       # a bool is no seed
    ({"seed": 1.5}, False),
    ({"temperature": False}, False),
])
def test_only_deterministic_requests_are_cacheable(body: dict, expected: bool) -> None:
    assert deterministic({"model": "a", "messages": MSG, **body}) is expected


def key(body: dict, *, route: str = "chat", settings: HomeostasisConfig = SETTINGS,
        fingerprint: str = "fp") -> str:
    return request_key(route, "a", body, settings, fingerprint)


BASE = {"model": "a", "messages": MSG, "temperature": 0, "max_tokens": 5}


@pytest.mark.parametrize("other, same", [
    ({"max_tokens": 5, "temperature": 0, "messages": MSG, "model": "a"}, True),  # key order
    ({**BASE, "stream": True}, True),
    ({**BASE, "stream": True, "stream_options": {"include_usage": True}}, True),
    ({**BASE, "user": "someone"}, True),
    ({**BASE, "model": "alias"}, True),            # the resolved model is in the key instead
    ({**BASE, "temperature": 0.0}, True),          # 0 and 0.0 are the same request
    ({**BASE, "lkn": {"cache": True}}, True),
    ({**BASE, "max_tokens": 6}, False),
    ({**BASE, "messages": [{"role": "user", "content": "hi!"}]}, False),
    ({**BASE, "seed": 1}, False),
    ({**BASE, "messages": [{"content": "hi", "role": "user"}]}, True),  # nested key order
])
def test_key_is_the_canonical_request(other: dict, same: bool) -> None:
    assert (key(other) == key(BASE)) is same


def test_key_includes_route_settings_and_model_identity() -> None:
    assert key(BASE) != key(BASE, route="completions")
    assert key(BASE) != key(BASE, settings=replace(SETTINGS, mode="homeostatic"))
    assert key(BASE) != key(BASE, fingerprint="other")


def test_fingerprint_ignores_aliases_and_cache_settings_only() -> None:
    model = cfg().models[0]
    fp = model_fingerprint(model)
    assert model_fingerprint(replace(model, aliases=("x",))) == fp
    assert model_fingerprint(replace(model, cache=CacheConfig(ttl_s=1))) == fp
    assert model_fingerprint(replace(model, args=("--threads", "1"))) != fp
    assert model_fingerprint(replace(model, homeostasis=replace(
        model.homeostasis, mode="homeostatic"))) != fp


def entry_size(answer: bytes, k: str = "k1") -> int:
    return len(answer) + len(k) + ENTRY_OVERHEAD


def test_lru_evicts_least_recently_used_by_size() -> None:
    answer = b"x" * 100
    store = Store("fp", ttl_s=60, max_bytes=3 * entry_size(answer))
    for k in ("k1", "k2", "k3"):
        assert store.put(k, answer, True, 0.0)
    assert store.get("k1", 1.0) is not None          # k1 is now the most recently used
    assert store.put("k4", answer, True, 2.0)        # evicts k2, the least recently used
    assert [k for k in ("k1", "k2", "k3", "k4") if store.get(k, 3.0)] == ["k1", "k3", "k4"]
    assert store.used_bytes == 3 * entry_size(answer) and store.evictions["size"] == 1
    big = b"y" * (2 * entry_size(answer) - len("k5") - ENTRY_OVERHEAD)
    assert store.put("k5", big, True, 4.0)           # takes the room of two: k1 and k3 go
    assert [k for k in ("k1", "k3", "k4", "k5") if store.get(k, 5.0)] == ["k4", "k5"]
    assert store.used_bytes == store.max_bytes and store.evictions["size"] == 3


def test_an_answer_larger_than_the_store_is_not_kept() -> None:
    store = Store("fp", ttl_s=60, max_bytes=500)
    assert store.put("k1", b"x" * 100, True, 0.0)
    assert not store.put("k2", b"x" * 1000, True, 0.0)
    assert store.get("k1", 0.0) is not None and store.get("k2", 0.0) is None


def test_replacing_an_entry_keeps_the_byte_count_exact() -> None:
    store = Store("fp", ttl_s=60, max_bytes=10_000)
    store.put("k1", b"x" * 100, False, 0.0)
    store.put("k1", b"x" * 300, True, 1.0)
    assert len(store) == 1 and store.used_bytes == entry_size(b"x" * 300)


@pytest.mark.parametrize("age, alive", [(0.0, True), (9.99, True), (10.0, False), (50, False)])
def test_entries_expire_after_ttl(age: float, alive: bool) -> None:
    store = Store("fp", ttl_s=10, max_bytes=10_000)
    store.put("k1", b"answer", True, 100.0)
    assert (store.get("k1", 100.0 + age) is not None) is alive
    assert store.used_bytes == (entry_size(b"answer") if alive else 0)


def test_expiry_counts_from_storing_not_from_use() -> None:
    store = Store("fp", ttl_s=10, max_bytes=10_000)
    store.put("k1", b"a", True, 0.0)
    store.put("k2", b"b", True, 5.0)
    assert store.get("k1", 9.0) is not None          # used, but still stored at 0
    assert store.get("k1", 10.0) is None
    assert store.get("k2", 10.0) is not None and store.evictions["ttl"] == 1


REQ = {"model": "a", "messages": MSG, "temperature": 0}


def test_lookup_miss_store_hit_on_a_fake_clock() -> None:
    clock = Clock()
    cache = ResponseCache(cfg(ttl_s=30), clock)
    model = cfg().models[0]
    miss = cache.lookup("chat", model, REQ, SETTINGS, bypass=False, needs_usage=True)
    assert miss is not None and miss.result == MISS
    assert cache.store(miss, b'{"choices":[]}', has_usage=True)
    hit = cache.lookup("chat", model, {**REQ, "stream": True}, SETTINGS, bypass=False,
                       needs_usage=False)
    assert hit is not None and hit.result == HIT and hit.entry is not None
    assert hit.entry.answer == b'{"choices":[]}'
    clock.now += 30
    later = cache.lookup("chat", model, REQ, SETTINGS, bypass=False, needs_usage=True)
    assert later is not None and later.result == MISS


@pytest.mark.parametrize("route, body, bypass, expected", [
    ("chat", REQ, True, BYPASS),                             # no-cache / lkn.cache = false
    ("chat", {**REQ, "temperature": 1}, False, BYPASS),      # not deterministic
    ("chat", {**REQ, "n": 3}, False, BYPASS),
    ("embeddings", {"model": "a", "input": "x"}, False, None),  # never cached
])
def test_lookup_outcomes(route: str, body: dict, bypass: bool, expected: str | None) -> None:
    cache = ResponseCache(cfg(), Clock())
    got = cache.lookup(route, cfg().models[0], body, SETTINGS, bypass=bypass, needs_usage=True)
    assert (got.result if got else None) == expected


def test_a_model_without_cache_gets_no_lookup() -> None:
    c = cfg()
    assert ResponseCache(c, Clock()).lookup("chat", c.models[1], REQ, SETTINGS, bypass=False,
                                            needs_usage=True) is None


def test_an_entry_without_usage_serves_only_streams_that_did_not_ask_for_it() -> None:
    c = cfg()
    cache = ResponseCache(c, Clock())
    miss = cache.lookup("chat", c.models[0], REQ, SETTINGS, bypass=False, needs_usage=False)
    assert miss is not None and cache.store(miss, b"{}", has_usage=False)
    stream = cache.lookup("chat", c.models[0], REQ, SETTINGS, bypass=False, needs_usage=False)
    whole = cache.lookup("chat", c.models[0], REQ, SETTINGS, bypass=False, needs_usage=True)
    assert stream is not None and stream.result == HIT
    assert whole is not None and whole.result == MISS


def test_reload_that_changes_the_model_drops_its_entries() -> None:
    c = cfg()
    cache = ResponseCache(c, Clock())
    miss = cache.lookup("chat", c.models[0], REQ, SETTINGS, bypass=False, needs_usage=True)
    assert miss is not None and cache.store(miss, b"{}", has_usage=True)
    # Same model, only the cache's own settings changed: entries stay.
    assert cache.configure(cfg(ttl_s=99)) == {}
    assert cache.describe()[0]["entries"] == 1 and cache.describe()[0]["ttl_s"] == 99
    changed = build_config({"models": [{"name": "a", "model_file": "/y.gguf", "ctx_size": 512,
                                        "cache": {"enabled": True}}]})
    assert cache.configure(changed) == {"a": 1}
    assert cache.describe()[0]["entries"] == 0 and cache.dropped == {"a": 1}
    # An answer that was in flight during the reload is not stored under the new config.
    assert not cache.store(miss, b"{}", has_usage=True)
    hit = cache.lookup("chat", changed.models[0], REQ, SETTINGS, bypass=False, needs_usage=True)
    assert hit is not None and hit.result == MISS


def test_reload_that_shrinks_the_cap_evicts_to_fit_and_disabling_drops() -> None:
    c = cfg()
    cache = ResponseCache(c, Clock())
    for i in range(4):
        body = {**REQ, "max_tokens": i + 1}
        miss = cache.lookup("chat", c.models[0], body, SETTINGS, bypass=False, needs_usage=True)
        assert miss is not None and cache.store(miss, b"x" * 1000, has_usage=True)
    cache.configure(cfg(max_mb=2.5 * (1000 + 64 + ENTRY_OVERHEAD) / 1024 / 1024))
    assert cache.describe()[0]["entries"] == 2
    assert cache.configure(cfg(enabled=False)) == {"a": 2} and cache.describe() == []


@pytest.mark.parametrize("cache, message", [
    ({"enabled": "yes"}, 'models[1].cache.enabled: must be true or false, got "yes"'),
    ({"ttl_s": 0}, "models[1].cache.ttl_s: must be a number >= 0.001, got 0"),
    ({"max_mb": -1}, "models[1].cache.max_mb: must be a number >= 0.001, got -1"),
    ({"size": 1}, "models[1].cache.size: unknown key"),
    ("on", 'models[1].cache: must be a table, got "on"'),
])
def test_cache_config_errors_name_the_key_path(cache: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"models": [{"name": "a", "model_file": "/x", "ctx_size": 8,
                                  "cache": cache}]})
    assert str(info.value) == message


def test_server_cache_is_every_models_default_and_a_model_overrides_it() -> None:
    c = build_config({"server": {"cache": {"enabled": True, "ttl_s": 5}},
                      "models": [{"name": "a", "model_file": "/x", "ctx_size": 8},
                                 {"name": "b", "model_file": "/x", "ctx_size": 8,
                                  "cache": {"max_mb": 1}},
                                 {"name": "c", "model_file": "/x", "ctx_size": 8,
                                  "cache": {"enabled": False}}]})
    assert [m.cache for m in c.models] == [CacheConfig(True, 5, 64), CacheConfig(True, 5, 1),
                                           CacheConfig(False, 5, 64)]
    assert build_config({"models": [{"name": "a", "model_file": "/x", "ctx_size": 8}]}
                        ).models[0].cache.enabled is False


def test_the_demo_caches_every_model() -> None:
    from lkn.config import load_config
    from tests.conftest import ROOT
    demo = load_config(str(ROOT / "example.cfg.lua"))
    assert all(m.cache.enabled for m in demo.models)
    assert demo.server.cache == CacheConfig(True, 600, 64)
