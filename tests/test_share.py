"""A threshold that holds a share of ANALYTIC requests (homeostasis.analytic_share): the pure
window (a table), the config, and the gateway holding the share on traffic whose scores moved."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from lkn.config import HomeostasisConfig
from lkn.errors import ConfigError
from lkn.homeostat.interventions import request_overrides
from lkn.homeostat.share import MIN_SCORES, ScoreWindow, ScoreWindows
from tests.conftest import lua_str, write_config

SCORES = [i / 100 for i in range(100)]  # 0.00 .. 0.99


@pytest.mark.parametrize("scores, share, fallback, expected", [
    (SCORES[:MIN_SCORES - 1], 0.5, 0.42, 0.42),        # too few scores: the configured one
    (SCORES, 0.5, 0.42, 0.50),                         # the top half: 0.50 .. 0.99
    (SCORES, 0.1, 0.42, 0.90),
    (SCORES, 1.0, 0.42, 0.00),                         # everything
    (SCORES, 0.0, 0.42, math.nextafter(0.99, 1.0)),    # nothing
    (SCORES[::-1], 0.25, 0.42, 0.75),                  # order does not matter
    ([0.3] * 40, 0.5, 0.9, math.nextafter(0.3, 1.0)),  # all tied: none rather than all
    ([0.0] * 30 + SCORES[50:80], 0.5, 0.9, 0.50),      # greedy answers at 0: the top half
    ([0.0] * 45 + [0.5] * 15, 0.2, 0.9, 0.5),          # the tie nearer the share (25 % > 0 %)
    ([0.0] * 20 + [0.5] * 40, 0.5, 0.9, math.nextafter(0.5, 1.0)),  # 67 % vs 0 %: as near
])
def test_the_threshold_that_holds_a_share(scores: list[float], share: float, fallback: float,
                                          expected: float) -> None:
    window = ScoreWindow(256)
    for s in scores:
        window.observe(s)
    t = window.threshold(share, fallback)
    assert t == pytest.approx(expected)
    if len(scores) >= MIN_SCORES and len(set(scores)) == len(scores):
        assert sum(s >= t for s in scores) / len(scores) == pytest.approx(share, abs=0.01)


def test_the_window_forgets_old_scores_and_follows_a_shift() -> None:
    window = ScoreWindows().of("m", 64)
    for _ in range(64):
        window.observe(0.1)
    for i in range(64):  # traffic of another kind: every score higher
        window.observe(0.5 + i / 1000)
    assert len(window) == 64 and window.threshold(0.5, 0.9) == pytest.approx(0.532)


def test_windows_are_per_model_and_a_new_size_starts_afresh() -> None:
    windows = ScoreWindows()
    a = windows.of("a", 64)
    a.observe(0.5)
    assert windows.of("a", 64) is a and windows.of("b", 64) is not a
    assert len(windows.of("a", 128)) == 0


def test_a_clients_own_threshold_wins_over_the_share() -> None:
    settings = HomeostasisConfig(mode="homeostatic", analytic_share=0.5)
    assert request_overrides(settings, {"threshold": 0.3}, None).analytic_share is None
    assert request_overrides(settings, {"mode": "homeostatic"}, None).analytic_share == 0.5


@pytest.mark.parametrize("field, value, message", [
    ("analytic_share", "1.5", "analytic_share: must be a number between 0.0 and 1.0, got 1.5"),
    ("share_window", "8", "share_window: must be an integer >= 32, got 8"),
])
def test_share_config_errors(tmp_path: Path, field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        write_config(tmp_path, f"""
models = {{ {{ name = "m", model_file = "/x.gguf", homeostasis = {{ {field} = {value} }} }} }}
""")


def test_the_gateway_holds_the_share(tmp_path: Path, fake_binary: str,
                                     gateway_factory: Any) -> None:
    # The fake's entropy is the same for every request: a fixed threshold of 0.99 would keep
    # them all; holding a share of 1.0 turns every one ANALYTIC once the window is full.
    cfg = write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{
  {{ name = "small", binary = {lua_str(fake_binary)}, model_file = "/x.gguf", ctx_size = 4096,
    args = {{ "--fake-entropy", "low" }},
    homeostasis = {{ mode = "homeostatic", threshold = 0.99, analytic_share = 1.0 }} }},
}}
""")
    gw = gateway_factory(cfg)
    client = gw.client()
    modes = [client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    ).headers["x-lkn-mode"] for _ in range(MIN_SCORES + 2)]
    assert modes[:MIN_SCORES] == ["FLUID"] * MIN_SCORES
    assert modes[MIN_SCORES:] == ["ANALYTIC", "ANALYTIC"]
