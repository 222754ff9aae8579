"""A box a team shares: named keys through the openai SDK against lkn in front of the fake engine
(the same usage for every answer: ``PER_ANSWER``): models per key, the key's own queue,
rates and token quotas (429 with Retry-After and x-ratelimit-*), the durable activity log and
what survives a restart, the key label, Open WebUI's user headers, and a state_dir lkn cannot
write."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Gateway, http, lua_str, write_config

MSG = [{"role": "user", "content": "hello"}]
PER_ANSWER = 10  # the fake's usage of a whole answer: 2 prompt + 8 completion tokens


def lua(binary: str, state_dir: str, *, delay: float = 0.0) -> str:
    return f"""
server = {{ stop_grace_s = 1, state_dir = {lua_str(state_dir)}, max_queue_wait_s = 20,
  keys = {{
    {{ id = "alice", key = "sk-alice", models = {{ "fast", "broken" }} }},
    {{ id = "bob", key = "sk-bob", max_concurrent = 1, requests_per_minute = 3 }},
    {{ id = "nightly", key = "sk-nightly", priority = "batch", tokens_per_day = 40,
      forward_user_headers = true }},
  }},
  activity = {{ capture = "errors" }},
}}
models = {{
  {{ name = "fast", aliases = {{ "f" }}, binary = {lua_str(binary)}, model_file = "/x.gguf",
    ctx_size = 4096, parallel = 4, args = {{ "--fake-token-delay-s", {delay} }} }},
  {{ name = "other", binary = {lua_str(binary)}, model_file = "/y.gguf", ctx_size = 4096 }},
  {{ name = "broken", binary = "/nonexistent/engine", model_file = "/z.gguf", ctx_size = 4096,
    fallbacks = {{ "other" }} }},
}}
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    return str(tmp_path / "state")


@pytest.fixture
def gw(tmp_path: Path, fake_binary: str, state_dir: str, gateway_factory: Any) -> Gateway:
    return gateway_factory(write_config(tmp_path, lua(fake_binary, state_dir)))


CLIENTS: dict[tuple[str, str], Any] = {}


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    for client in CLIENTS.values():
        client.close()
    CLIENTS.clear()


def client(gw: Gateway, key: str) -> Any:
    """One SDK client per gateway and key, closed after the test."""
    if (gw.base_url, key) not in CLIENTS:
        CLIENTS[(gw.base_url, key)] = gw.client(api_key=key)
    return CLIENTS[(gw.base_url, key)]


def ask(gw: Gateway, key: str, model: str = "fast", **kw: Any) -> Any:
    return client(gw, key).chat.completions.with_raw_response.create(model=model, messages=MSG,
                                                                     **kw)


def admin(gw: Gateway, path: str) -> Any:
    r = http("GET", gw.base_url + path)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def wait_rows(gw: Gateway, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = admin(gw, "/admin/activity?limit=1000")
        if len(rows) >= n:
            break
        time.sleep(0.05)
    return rows


def test_a_key_uses_only_its_models_aliases_included(gw: Gateway) -> None:
    assert ask(gw, "sk-alice", "f").parse().choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ask(gw, "sk-alice", "other")
    assert denied.value.body["code"] == "model_not_allowed"
    assert denied.value.response.headers["x-lkn-error-source"] == "lkn"
    assert ask(gw, "sk-bob", "other").parse().choices  # bob may use every model
    with pytest.raises(openai.AuthenticationError):
        ask(gw, "sk-nobody")


def test_a_fallback_the_key_may_not_use_is_skipped_and_said(gw: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as failed:  # "broken" cannot start
        ask(gw, "sk-alice", "broken")
    assert failed.value.status_code == 503
    assert failed.value.response.headers["x-lkn-skipped"] == \
        "fallback other (not allowed for this key)"
    served = ask(gw, "sk-bob", "broken")  # bob may use "other": it answers
    assert served.headers["x-lkn-fallback-from"] == "broken"
    assert served.headers["x-lkn-model"] == "other"


def test_rates_are_429s_with_retry_after_and_ratelimit_headers(gw: Gateway) -> None:
    first = ask(gw, "sk-bob")
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    ask(gw, "sk-bob"), ask(gw, "sk-bob")
    with pytest.raises(openai.RateLimitError) as limited:
        client(gw, "sk-bob").chat.completions.create(model="fast", messages=MSG)
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.value.body["code"] == "requests_per_minute"
    assert ask(gw, "sk-alice").parse().choices  # other keys are not touched


def test_a_token_quota_is_charged_from_the_engines_usage(gw: Gateway) -> None:
    # Each request reserves its body's bytes / 4 (~20 tokens here) until the engine's usage
    # settles it: 3 answers use 30 of the 40 tokens; a fourth could need more than is left.
    for _ in range(3):
        assert ask(gw, "sk-nightly").parse().usage.total_tokens == PER_ANSWER
    with pytest.raises(openai.RateLimitError) as spent:
        ask(gw, "sk-nightly")
    assert spent.value.body["code"] == "tokens_per_day"
    (nightly,) = [k for k in admin(gw, "/admin/keys") if k["id"] == "nightly"]
    assert nightly["quota"]["tokens_per_day"]["used"] == 3 * PER_ANSWER
    assert nightly["priority"] == "batch"


def test_max_concurrent_waits_in_the_keys_own_queue(tmp_path: Path, fake_binary: str,
                                                    state_dir: str, gateway_factory: Any) -> None:
    gw = gateway_factory(write_config(tmp_path, lua(fake_binary, state_dir, delay=0.1)))
    ask(gw, "sk-alice")  # the engine is up
    done: list[str] = []

    def second() -> None:
        ask(gw, "sk-bob")
        done.append("second")

    stream = client(gw, "sk-bob").chat.completions.create(model="fast", messages=MSG,
                                                          stream=True)
    next(iter(stream))  # bob's first request holds his one place
    waiter = threading.Thread(target=second)
    waiter.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (bob,) = [k for k in admin(gw, "/admin/keys") if k["id"] == "bob"]
        if bob["waiting"] == 1:
            break
        time.sleep(0.02)
    assert bob["in_flight"] == 1 and bob["waiting"] == 1  # queued, not refused
    assert ask(gw, "sk-alice").parse().choices  # another key is not held up
    assert not done
    list(stream)
    waiter.join(20)
    assert done == ["second"]


def test_the_activity_log_and_usage_survive_a_restart(tmp_path: Path, fake_binary: str,
                                                      state_dir: str,
                                                      gateway_factory: Any) -> None:
    cfg = write_config(tmp_path, lua(fake_binary, state_dir))
    gw = gateway_factory(cfg)
    ask(gw, "sk-alice"), ask(gw, "sk-alice"), ask(gw, "sk-bob")
    ask(gw, "sk-nightly", extra_headers={"X-OpenWebUI-User-Name": "Ann",
                                         "X-OpenWebUI-User-Email": "ann@example.com"})
    with pytest.raises(openai.PermissionDeniedError):
        ask(gw, "sk-alice", "other")
    ask(gw, "sk-nightly"), ask(gw, "sk-nightly")  # 30 of nightly's 40 tokens: no room left
    rows = wait_rows(gw, 7)
    assert sorted(r["key_id"] for r in rows) == ["alice", "alice", "alice", "bob", "nightly",
                                                 "nightly", "nightly"]
    assert not any("sk-" in json.dumps(r) for r in rows if r["body"] is None)
    denied = next(r for r in rows if r["status"] == 403)
    assert denied["model"] == "other" and "other" in denied["error"] and denied["body"]
    assert any(r["user"] == "Ann <ann@example.com>" for r in rows)
    before = {u["key"]: u for u in admin(gw, "/admin/usage?group_by=key")}
    assert before["alice"]["total_tokens"] == 2 * PER_ANSWER
    assert before["alice"]["errors"] == 1 and before["bob"]["requests"] == 1
    metrics = http("GET", gw.base_url + "/metrics",
                   headers={"Authorization": "Bearer sk-bob"}).text
    assert 'lkn_completion_tokens_total{key="alice",model="fast"} 16.0' in metrics
    gw.stop()

    again = gateway_factory(cfg)
    after = {u["key"]: u for u in admin(again, "/admin/usage?group_by=key")}
    assert after == before
    with pytest.raises(openai.RateLimitError):  # nightly's quota outlived the restart
        ask(again, "sk-nightly")


def test_a_state_dir_lkn_cannot_write_keeps_it_serving(tmp_path: Path, fake_binary: str,
                                                       gateway_factory: Any) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    gw = gateway_factory(write_config(tmp_path, lua(fake_binary, str(blocker / "state"))))
    assert ask(gw, "sk-alice").parse().choices
    r = http("GET", gw.base_url + "/admin/usage")
    assert r.status_code == 503 and r.json()["error"]["code"] == "activity_unavailable"
