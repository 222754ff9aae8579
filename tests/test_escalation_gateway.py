"""Escalation through the gateway (fake engines): the escalated request queues for the strong
model with the time it first arrived, the headers say what happened, metrics count it, and the
answer-then-decide probe (several tokens, a quantile of their margins) decides."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import Gateway, lua_str, write_config

MSG = [{"role": "user", "content": "is a cat bigger than a mouse?"}]


def setup(tmp_path: Path, fake_binary: str, gateway_factory: Any, entropy: str,
          server: str = "") -> tuple[Gateway, Path]:
    capture = tmp_path / "capture.jsonl"
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))}, {server} }}
models = {{
  {{ name = "small", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 2048,
    vram_mb = 100, args = {{ "--fake-capture", {lua_str(str(capture))}, "--fake-entropy", "{entropy}" }},
    homeostasis = {{ mode = "homeostatic", threshold = 0.5, intervention = "escalate",
                     escalate_to = "strong", probe_tokens = 6, probe_aggregate = "q75",
                     probe_score = "margin" }} }},
  {{ name = "strong", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 2048,
    vram_mb = 100, args = {{ "--fake-capture", {lua_str(str(capture))} }} }},
}}
""")
    return gateway_factory(cfg), capture


def record_acquires(gw: Gateway) -> list[dict[str, Any]]:
    """Wrap the manager's acquire: each call's model, ``arrived`` and the time it was made."""
    calls: list[dict[str, Any]] = []
    manager = gw.manager
    original = manager.acquire

    async def acquire(model: Any, demand: Any, **kw: Any) -> Any:
        calls.append({"model": model.name, "arrived": kw.get("arrived"),
                      "called": time.monotonic()})
        return await original(model, demand, **kw)
    manager.acquire = acquire
    return calls


def test_escalated_request_keeps_its_arrival_time_and_says_so(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    # One engine at a time: the strong model is not loaded when the escalation comes (the
    # VRAM-pressure case); the small one is stopped to make room.
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, "high",
                        server="max_loaded_engines = 1")
    calls = record_acquires(gw)
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG,
                                                                max_tokens=10)
    assert raw.headers["x-lkn-model"] == "strong"
    assert raw.headers["x-lkn-escalated-from"] == "small"
    assert raw.headers["x-lkn-mode"] == "ANALYTIC"
    assert raw.parse().model == "strong"
    assert [c["model"] for c in calls] == ["small", "strong"]
    first, escalated = calls
    assert first["arrived"] is None  # a new request queues as it arrives
    # the escalation queues with the time the request first queued, not its own
    assert escalated["arrived"] is not None
    assert escalated["arrived"] <= first["called"] < escalated["called"]
    assert gw.call(gw.state.metrics.escalations.value, "small", "strong") == 1
    probes = [json.loads(line) for line in capture.read_text().splitlines()
              if json.loads(line)["model"] == "small"]
    assert [p["max_tokens"] for p in probes] == [6]  # the answer budget, one probe


def test_sure_answer_stays_with_the_small_model(tmp_path: Path, fake_binary: str,
                                                gateway_factory: Any) -> None:
    gw, _ = setup(tmp_path, fake_binary, gateway_factory, "low")
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG)
    assert raw.headers["x-lkn-model"] == "small" and raw.headers["x-lkn-mode"] == "FLUID"
    assert "x-lkn-escalated-from" not in raw.headers
    assert float(raw.headers["x-lkn-entropy"]) < 0.01  # margin of p=0.999 over 0.0001
    assert gw.call(gw.state.metrics.escalations.value, "small", "strong") == 0


def test_stream_is_decided_before_its_first_byte(tmp_path: Path, fake_binary: str,
                                                 gateway_factory: Any) -> None:
    # Answer-then-decide on a stream: the probe (the answer budget, not streamed) runs first,
    # so the stream's headers already name the model that answers. The probe scores no more
    # tokens than the client asked for.
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, "high")
    # both engines running: a cold stream would get its headers at once, while it waits for
    # the start (loading feedback), before anything is decided
    gw.client().chat.completions.create(model="small", messages=MSG, max_tokens=5)
    warm = len(capture.read_text().splitlines())
    with gw.client().chat.completions.with_streaming_response.create(
            model="small", messages=MSG, stream=True, max_tokens=5) as resp:
        assert resp.headers["x-lkn-model"] == "strong"
        assert resp.headers["x-lkn-escalated-from"] == "small"
        text = "".join(resp.iter_lines())
    assert "[DONE]" in text
    bodies = [json.loads(line) for line in capture.read_text().splitlines()[warm:]]
    assert [(b["model"], b["max_tokens"], bool(b.get("stream"))) for b in bodies] == [
        ("small", 5, False), ("strong", 5, True)]  # the budget, capped by max_tokens


def test_escalation_queues_ahead_of_a_later_request_for_the_busy_strong_model(
        tmp_path: Path, fake_binary: str, gateway_factory: Any) -> None:
    # strong is busy with a slow stream (A). C arrives for small, whose probe is slow; while it
    # probes, B arrives for strong and queues. C is then escalated: it queues with its own
    # arrival (before B's), so strong answers C before B once A is done. Both engines fit
    # (vram_mb) and stay up: the order is the strong model's queue alone.
    capture = tmp_path / "capture.jsonl"
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "small", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 2048,
    vram_mb = 100, args = {{ "--fake-entropy", "high", "--fake-probe-delay-s", 1.5 }},
    homeostasis = {{ mode = "homeostatic", threshold = 0.5, intervention = "escalate",
                     escalate_to = "strong" }} }},
  {{ name = "strong", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 2048,
    vram_mb = 100,
    args = {{ "--fake-capture", {lua_str(str(capture))}, "--fake-token-delay-s", 0.5 }} }},
}}
""")
    gw = gateway_factory(cfg)
    client = gw.client()
    for model in ("small", "strong"):  # both engines up before the race
        client.chat.completions.create(model=model, messages=MSG, max_tokens=1,
                                       extra_body={"lkn": {"mode": "passthrough"}})
    capture.write_text("")

    def ask(name: str, model: str, stream: bool) -> None:
        msgs = [{"role": "user", "content": name}]
        if stream:
            for _ in client.chat.completions.create(model=model, messages=msgs, stream=True,
                                                    max_tokens=8):
                pass
        else:
            client.chat.completions.create(model=model, messages=msgs, max_tokens=2)

    threads = []
    for name, model, stream, pause in (("A", "strong", True, 0.5), ("C", "small", False, 0.5),
                                       ("B", "strong", False, 0.0)):
        t = threading.Thread(target=ask, args=(name, model, stream))
        t.start()
        threads.append(t)
        time.sleep(pause)
    for t in threads:
        t.join(60)
    order = [json.loads(line)["messages"][0]["content"]
             for line in capture.read_text().splitlines()]
    assert order == ["A", "C", "B"]
