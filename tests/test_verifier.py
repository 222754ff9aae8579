"""A verifier as the deferral signal (homeostasis.verifier): the pure scoring and request
(tables), and through the gateway against fake engines: the verifier's "no" escalates to it on
the lease it judged on, its "yes" keeps the small model's probe answer, a failing verifier
passes the request through, and what it cost is in x-lkn-probe-cost and the metrics."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from lkn.errors import ConfigError
from lkn.homeostat.verifier import UNDECIDED, no_probability, verification_body
from tests.conftest import lua_str, write_config

MSG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]


@pytest.mark.parametrize("candidates, probs, expected", [
    (["Yes", "No"], [0.9, 0.1], 0.1),
    ([" no", "yes", "maybe"], [0.6, 0.2, 0.2], 0.75),
    (["No.", "NO", "Yes"], [0.3, 0.3, 0.4], 0.6),            # spellings of one word add up
    (["Sure", "Maybe"], [0.5, 0.5], UNDECIDED),              # neither: undecided
    ([], [], UNDECIDED),
    (["No", "Yes"], [1.0, 0.0], 1.0),                        # log 0 = -inf counts nothing
])
def test_the_verifiers_no_probability(candidates: list[str], probs: list[float],
                                      expected: float) -> None:
    logprobs = [math.log(p) if p > 0 else -math.inf for p in probs]
    assert no_probability(candidates, logprobs) == pytest.approx(expected)


def test_the_verification_request_carries_only_the_conversation() -> None:
    body = {"model": "small", "messages": MSG, "tools": [{"type": "function"}],
            "temperature": 0.9, "max_tokens": 50}
    got = verification_body("chat", body, " 4", "Right? yes or no")
    assert got == {"model": "small", "temperature": 0,
                   "messages": [*MSG, {"role": "assistant", "content": " 4"},
                                {"role": "user", "content": "Right? yes or no"}]}
    raw = verification_body("completions", {"model": "m", "prompt": "2+2="}, "4", "Q")
    assert raw is not None and raw["messages"][0] == {"role": "user", "content": "2+2="}
    assert verification_body("completions", {"prompt": [15339, 13]}, "4", "Q") is None


def test_a_verifier_must_name_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\[1\].homeostasis.verifier: no such model"):
        write_config(tmp_path, """
models = { { name = "m", model_file = "/x.gguf", ctx_size = 512,
             homeostasis = { verifier = "nope" } } }
""")


def setup(tmp_path: Path, fake_binary: str, gateway_factory: Any, verdict: str) -> Any:
    capture = tmp_path / "capture.jsonl"
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))}, max_loaded_engines = 2 }}
models = {{
  {{ name = "small", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    vram_mb = 100, args = {{ "--fake-capture", {lua_str(str(capture))}, "--fake-entropy", "low" }},
    homeostasis = {{ mode = "homeostatic", intervention = "escalate", escalate_to = "large",
                    verifier = "large", probe_tokens = 3, threshold = 0.5 }} }},
  {{ name = "large", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    vram_mb = 100, args = {{ "--fake-capture", {lua_str(str(capture))}, {verdict} }} }},
}}
""")
    return gateway_factory(cfg), capture


def sent(capture: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capture.read_text().splitlines()]


def test_a_verifiers_no_escalates_to_it(tmp_path: Path, fake_binary: str,
                                         gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, '"--fake-verdict", 0.9')
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG,
                                                                max_tokens=8)
    assert raw.headers["x-lkn-mode"] == "ANALYTIC" and raw.headers["x-lkn-model"] == "large"
    assert float(raw.headers["x-lkn-entropy"]) == pytest.approx(0.9, abs=1e-4)
    assert re.fullmatch(r"prefill=\d+, decode=3, kept=0, verifier_prefill=\d+, "
                        r"verifier_decode=1", raw.headers["x-lkn-probe-cost"])
    probe, question, answer = sent(capture)
    assert probe["max_tokens"] == 3
    assert question["max_tokens"] == 1 and question["top_logprobs"] == 20
    assert question["messages"] == [*MSG, {"role": "assistant", "content": " w0 w1 w2"},
                                    {"role": "user", "content":
                                     "Is your answer above correct? Reply with yes or no only."}]
    assert answer["messages"] == MSG and answer["max_tokens"] == 8
    metrics = gw.state.metrics
    assert gw.call(lambda: metrics.probe_tokens.value("large", "verify")) == 1
    assert gw.call(lambda: metrics.escalations.value("small", "large")) == 1


def test_a_verifiers_yes_keeps_the_small_models_answer(tmp_path: Path, fake_binary: str,
                                                       gateway_factory: Any) -> None:
    gw, capture = setup(tmp_path, fake_binary, gateway_factory, '"--fake-verdict", 0.2')
    for stream in (False, True):
        raw = gw.client().chat.completions.with_raw_response.create(
            model="small", messages=MSG, max_tokens=8, stream=stream)
        assert raw.headers["x-lkn-mode"] == "FLUID" and raw.headers["x-lkn-model"] == "small"
        assert raw.headers["x-lkn-probe-cost"].startswith("prefill=")
        answer = raw.parse()
        text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices) \
            if stream else answer.choices[0].message.content
        assert text == "".join(f" w{i}" for i in range(8))
    continued = sent(capture)[2]
    assert continued["messages"][-1] == {"role": "assistant", "content": " w0 w1 w2"}
    assert continued["max_tokens"] == 5


def test_a_verifier_that_fails_passes_the_request_through(tmp_path: Path, fake_binary: str,
                                                           gateway_factory: Any) -> None:
    gw, _ = setup(tmp_path, fake_binary, gateway_factory, '"--fake-probe-error"')
    raw = gw.client().chat.completions.with_raw_response.create(model="small", messages=MSG,
                                                                max_tokens=8)
    assert raw.headers["x-lkn-mode"] == "PASSTHROUGH" and raw.headers["x-lkn-model"] == "small"
    assert raw.parse().choices[0].message.content == "".join(f" w{i}" for i in range(8))
