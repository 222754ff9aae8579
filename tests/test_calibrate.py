"""``lkn calibrate`` end to end against fake engines: the gateway runs in-process, each question
is asked in homeostatic mode without intervention, answers are scored by their rule, and the
report names the AUROC, the table and the picked threshold."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lkn.__main__ import main
from tests.conftest import lua_str

# The fake engine answers " w0 w1 ... w7" to everything: "w3" is right, "zebra" is wrong.
QUESTIONS = [
    {"question": "first?", "answer": "w3", "match": "contains"},
    {"question": "second?", "answer": "zebra"},
    {"question": "third?", "answer": ["nope", "w7"]},
    {"question": "fourth?", "answer": "3", "match": "number"},
]


def write(tmp_path: Path, fake_binary: str) -> tuple[Path, Path]:
    cfg = tmp_path / "cal.cfg.lua"
    cfg.write_text(f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "small", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 2048,
    args = {{ "--fake-entropy", "high" }},
    homeostasis = {{ mode = "homeostatic", probe_tokens = 4, probe_aggregate = "q75",
                     probe_score = "margin", intervention = "escalate",
                     escalate_to = "strong" }} }},
  {{ name = "strong", binary = {lua_str(fake_binary)}, model_file = "/x.gguf",
    ctx_size = 2048 }},
}}
""")
    qs = tmp_path / "qs.jsonl"
    qs.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return cfg, qs


def test_calibrate_reports_the_signal_and_the_threshold_for_a_share(
        tmp_path: Path, fake_binary: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, qs = write(tmp_path, fake_binary)
    plot = tmp_path / "cal.png"
    assert main(["calibrate", "--config", str(cfg), "--model", "small", "--questions", str(qs),
                 "--strong", "strong", "--share", "0.5", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "4 questions, 4 scored" in out
    # w3 and w7 are in the answer; "zebra" is not; the last number of " w0 ... w7" is 7, not 3
    assert "accuracy of the model: 0.500; of the strong model: 0.500" in out
    # the fake gives every question the same score (a tie of its top two: margin 1.0)
    assert "AUROC of the score for a wrong answer: 0.500" in out
    # the fake reports no cached tokens: each probe prefilled its whole prompt, decoded 4
    assert re.search(r"what the decision cost per request \(x-lkn-probe-cost\): \d+\.\d "
                     r"prompt tokens prefilled and 4\.0 tokens decoded by the model\n", out)
    # tied scores escalate together: 50 % is out of reach without escalating all, so none is
    picked = out.split("for at most 50% escalated:")[1]
    assert "      0%     1.0000     0.500        0.500" in picked
    assert "threshold = 1.0000 (above every score: nothing escalated)" in picked
    assert plot.exists() or "plot skipped: matplotlib is not installed" in out


def test_calibrate_says_when_no_threshold_reaches_the_accuracy(
        tmp_path: Path, fake_binary: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, qs = write(tmp_path, fake_binary)
    assert main(["calibrate", "--config", str(cfg), "--model", "small", "--questions", str(qs),
                 "--accuracy", "0.9"]) == 0
    assert "no threshold reaches it on these questions" in capsys.readouterr().out


@pytest.mark.parametrize("line, message", [
    ('{"question": "q"}', "line 1: 'answer' must be a string"),
    ("not json", "line 1: not JSON"),
])
def test_calibrate_rejects_a_bad_question_file(tmp_path: Path, fake_binary: str,
                                               capsys: pytest.CaptureFixture[str], line: str,
                                               message: str) -> None:
    cfg, qs = write(tmp_path, fake_binary)
    qs.write_text(line + "\n")
    assert main(["calibrate", "--config", str(cfg), "--model", "small",
                 "--questions", str(qs)]) == 1
    assert message in capsys.readouterr().err


def test_calibrate_rejects_an_unknown_model(tmp_path: Path, fake_binary: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg, qs = write(tmp_path, fake_binary)
    assert main(["calibrate", "--config", str(cfg), "--model", "huge",
                 "--questions", str(qs)]) == 1
    assert "no model 'huge'" in capsys.readouterr().err
