"""Priorities and fair share end to end: the openai SDK against lkn in front of the fake engine
(one slot, slow answers), which writes every request it gets to a capture file in the order it
got them. Requests queue in lkn; the order they reach the engine is the scheduler's."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from lkn.request.caller import CLIENT, Caller, caller_of, take_priority
from lkn.request.trust import Client
from lkn.errors import BadRequest
from lkn.config import ServerConfig
from tests.conftest import Gateway, http, lua_str, write_config


def lua(binary: str, capture: Path) -> str:
    return f"""
server = {{ stop_grace_s = 1, api_keys = {{ "x", "nightly", "bulk", "ann" }} }}
models = {{
  {{ name = "fake", binary = {lua_str(binary)}, model_file = "/x.gguf", ctx_size = 4096,
    parallel = 1,
    args = {{ "--fake-capture", {lua_str(str(capture))}, "--fake-token-delay-s", "0.15" }} }},
}}
"""


@pytest.fixture
def gw(tmp_path: Path, fake_binary: str, capture: Path, gateway_factory: Any) -> Gateway:
    return gateway_factory(write_config(tmp_path, lua(fake_binary, capture)))


def order(capture: Path) -> list[str]:
    """The user message of every chat request the engine got, in the order it got them."""
    return [json.loads(line)["messages"][-1]["content"]
            for line in capture.read_text().splitlines() if "messages" in line]


def send_all(gw: Gateway, requests: list[tuple[str, str, Any]], gap_s: float) -> None:
    """Each (api key, text, lkn priority or None) from its own thread, ``gap_s`` apart, streamed
    (the fake engine takes 0.15 s a token then: 1.2 s an answer); waits for all answers."""
    errors: list[BaseException] = []

    def one(key: str, text: str, priority: Any) -> None:
        extra = {"lkn": {"priority": priority}} if priority is not None else None
        try:
            for _ in gw.client(api_key=key).chat.completions.create(  # streamed: slow
                    model="fake", messages=[{"role": "user", "content": text}], stream=True,
                    extra_body=extra):
                pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = []
    for key, text, priority in requests:
        t = threading.Thread(target=one, args=(key, text, priority))
        t.start()
        threads.append(t)
        time.sleep(gap_s)
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_interactive_requests_pass_a_queued_batch_job(gw: Gateway, capture: Path) -> None:
    gw.client().chat.completions.create(model="fake", messages=[{"role": "user",
                                                                 "content": "warm"}])
    batch = [("nightly", f"batch {i}", "batch") for i in range(6)]
    # the person uses the job's own key: only the priority puts them ahead
    send_all(gw, batch + [("nightly", "person", None)], gap_s=0.02)
    got = order(capture)[1:]
    # each answer takes ~1.2 s on one slot: when the person asks, the first batch request is at
    # the engine; the rest of the job waits behind the person
    assert got.index("person") <= 1, got
    assert sorted(got) == sorted(t for _, t, _ in batch + [("", "person", None)])


def test_a_key_with_many_queued_does_not_push_a_key_with_one_behind_all(
        gw: Gateway, capture: Path) -> None:
    gw.client().chat.completions.create(model="fake", messages=[{"role": "user",
                                                                 "content": "warm"}])
    bulk = [("bulk", f"bulk {i}", None) for i in range(6)]
    send_all(gw, bulk + [("ann", "ann", None)], gap_s=0.02)
    got = order(capture)[1:]
    # bulk's first is at the engine; ann's turn ties with bulk's second (which queued first):
    # fair to one request, and the four others wait behind ann
    assert got.index("ann") <= 2, got


def test_priority_is_checked_and_never_reaches_the_engine(gw: Gateway, capture: Path) -> None:
    client = gw.client()
    for priority in ("batch", "interactive", 10, 100):  # 100 from a client: lowered, not refused
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"lkn": {"priority": priority}})
    assert all("lkn" not in json.loads(line) for line in capture.read_text().splitlines())
    for bad in ("urgent", -1, 101, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="fake", messages=[{"role": "user",
                                                                    "content": "x"}],
                                           extra_body={"lkn": {"priority": bad}})
        error = err.value.body
        assert isinstance(error, dict) and error["param"] == "lkn.priority"
        assert error["source"] == "lkn"
    r = http("POST", gw.base_url + "/v1/chat/completions", json.dumps(
        {"model": "fake", "messages": [{"role": "user", "content": "x"}],
         "lkn": {"priority": "batch", "mode": "passthrough"}}), {"Authorization": "Bearer x"})
    assert r.status_code == 200  # priority and the homeostat's options side by side


class FakeRequest(dict):  # type: ignore[type-arg]
    def __init__(self, headers: dict[str, str], remote: str = "10.0.0.7") -> None:
        super().__init__()
        self.headers = headers
        self.remote = remote


SERVER = ServerConfig(admin_keys=("root-key",), api_keys=("team-key",))


def caller(headers: dict[str, str]) -> Caller:
    return caller_of(FakeRequest(headers), SERVER)  # type: ignore[arg-type]


def test_caller_of() -> None:
    team = caller({"Authorization": "Bearer team-key"})
    # the key's id (key-1: the first flat api_keys entry), never the key itself; the same for
    # either header
    assert team.key == "key:key-1" and team.key_id == "key-1" and "team" not in team.key
    assert caller({"x-api-key": "team-key"}) == team and not team.admin
    root = caller({"Authorization": "Bearer root-key"})
    assert root.admin and root.key == "admin:1" and root.key_id == ""
    # stored data follows the secret: the key that becomes key-1 when an earlier one is
    # removed from api_keys does not inherit its tenant (cached answers, Responses)
    assert team.tenant.startswith("key-") and root.tenant.startswith("key-")
    two = ServerConfig(api_keys=("other-key", "team-key"))
    moved = caller_of(FakeRequest({"x-api-key": "team-key"}), two)  # type: ignore[arg-type]
    assert moved.key_id == "key-2" and moved.tenant == team.tenant
    assert caller({}) == Caller("ip-10.0.0.7", False)
    # a token nobody configured names nobody: the address does (a new token per request buys
    # no turns); a header byte that is no UTF-8 (kept as a surrogate by aiohttp) is no error
    assert caller({"Authorization": "Bearer made-up"}) == Caller("ip-10.0.0.7", False)
    assert caller({"Authorization": "Bearer team-\udcff"}) == Caller("ip-10.0.0.7", False)
    # behind a trusted proxy: the client it names (the auth middleware sets it)
    proxied = FakeRequest({})
    proxied[CLIENT] = Client("203.0.113.9")
    assert caller_of(proxied, SERVER) == Caller("ip-203.0.113.9", False)  # type: ignore[arg-type]


@pytest.mark.parametrize("field, admin, expected_rest, expected", [
    (None, False, None, 50.0),
    ({"mode": "fluid"}, False, {"mode": "fluid"}, 50.0),
    ({"priority": "batch", "mode": "fluid"}, False, {"mode": "fluid"}, 0.0),
    ({"priority": 90}, False, {}, 50.0),
    ({"priority": 90}, True, {}, 90.0),
])
def test_take_priority(field: Any, admin: bool, expected_rest: Any, expected: float) -> None:
    assert take_priority(field, Caller("k", admin)) == (expected_rest, expected)


def test_take_priority_refuses_with_the_param() -> None:
    with pytest.raises(BadRequest) as err:
        take_priority({"priority": "now"}, Caller("k"))
    assert err.value.param == "lkn.priority"


def test_a_batch_keys_requests_are_batch_and_cannot_promote_themselves() -> None:
    from lkn.config import KeyConfig
    from lkn.fleet import planner
    nightly = Caller("key:nightly", False, KeyConfig("nightly", "0" * 64, priority="batch"))
    assert take_priority(None, nightly) == (None, planner.BATCH)
    assert take_priority({"priority": "interactive"}, nightly) == ({}, planner.BATCH)
    assert take_priority({"priority": 10}, nightly)[1] == 0.0  # lower: its own class already
    person = Caller("key:alice", False, KeyConfig("alice", "1" * 64))
    assert take_priority({"priority": "batch"}, person) == ({}, planner.BATCH)
