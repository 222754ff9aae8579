"""Table tests of the entropy math and the FLUID/ANALYTIC decision."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lkn.homeostat.probe import (ANALYTIC, FLUID, aggregate, classify, disagreement, normalized_entropy,
                       token_uncertainty)

LN = math.log


def reference(probs: list[float]) -> float:
    p = np.array(probs) / sum(probs)
    return float(-(p * np.log(p)).sum() / math.log(len(probs)))


@pytest.mark.parametrize("logprobs, expected", [
    ([LN(0.25)] * 4, 1.0),                                  # uniform
    ([LN(0.1)] * 10, 1.0),                                  # uniform, not summing to 1 is fine
    ([0.0, -math.inf, -math.inf, -math.inf], 0.0),          # one-hot
    ([0.0, -3.4e38, -3.4e38], 0.0),                         # llama.cpp's "float lowest"
    ([LN(0.5), LN(0.3), LN(0.2)], reference([0.5, 0.3, 0.2])),
    ([LN(0.05), LN(0.03), LN(0.02)], reference([0.5, 0.3, 0.2])),  # renormalized over k
    ([LN(0.7), LN(0.2), LN(0.1), -math.inf], reference([0.7, 0.2, 0.1]) * LN(3) / LN(4)),
    ([-0.3], 0.0),                                          # k = 1: nothing to measure
    ([-1000.0, -1000.5], reference([1.0, math.exp(-0.5)])),  # far-out logprobs stay stable
])
def test_normalized_entropy(logprobs: list[float], expected: float) -> None:
    got = normalized_entropy(logprobs)
    assert got is not None
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= got <= 1.0


@pytest.mark.parametrize("logprobs", [
    [], [math.nan, -1.0], [math.inf, -1.0], [-math.inf, -math.inf], [-3.4e38],
])
def test_failed_probe_is_none_never_a_number(logprobs: list[float]) -> None:
    assert normalized_entropy(logprobs) is None


def test_duplicate_candidates_count_once_when_tokens_are_given() -> None:
    with_dup = normalized_entropy([LN(0.5), LN(0.5), LN(0.5)], tokens=["a", "b", "a"])
    assert with_dup == pytest.approx(1.0)
    assert normalized_entropy([LN(0.5), LN(0.5), LN(0.5)]) == pytest.approx(1.0)
    assert normalized_entropy([0.0, 0.0], tokens=[7, 7]) == 0.0  # one distinct candidate


@pytest.mark.parametrize("entropies, how, expected", [
    ([0.2, 0.8, 0.5], "first", 0.2),
    ([0.2, 0.8, 0.5], "mean", 0.5),
    ([0.2, 0.8, 0.5], "max", 0.8),
    ([None, 0.8], "first", None),
    ([None, 0.8, 0.4], "mean", pytest.approx(0.6)),
    ([None], "mean", None),
])
def test_aggregate(entropies: list[float | None], how: str, expected: object) -> None:
    assert aggregate(entropies, how) == expected


@pytest.mark.parametrize("tokens, entropies, expected", [
    ([" The", " capital", " is", " Paris"], [0.1, 0.2, 0.3, 0.9], 0.2),
    (["**", "Yes", "."], [0.1, 0.7, 0.0], 0.7),
    ([" the", " is"], [0.4, 0.5], 0.4),            # no answer-bearing token: first position
    ([" Paris"], [None], None),
])
def test_answer_bearing_token(tokens: list[str], entropies: list[float | None],
                              expected: float | None) -> None:
    assert aggregate(entropies, "answer", tokens) == expected


@pytest.mark.parametrize("entropy, threshold, mode", [
    (0.59, 0.6, FLUID), (0.6, 0.6, ANALYTIC), (0.0, 0.0, ANALYTIC), (1.0, 1.0, ANALYTIC),
    (0.99, 1.0, FLUID),
])
def test_classify(entropy: float, threshold: float, mode: str) -> None:
    assert classify(entropy, threshold) == mode


# ---------------------------------------------------------------- answer-then-decide scores

@pytest.mark.parametrize("logprobs, how, expected", [
    ([LN(0.9), LN(0.05), LN(0.05)], "surprise", 0.1),
    ([LN(0.9), LN(0.05), LN(0.05)], "margin", 1 - (0.9 - 0.05)),
    ([LN(0.45), LN(0.45), LN(0.1)], "margin", 1.0),            # a tie: no margin at all
    ([LN(0.6), LN(0.1), LN(0.3)], "margin", 1 - (0.6 - 0.3)),  # sorted, not in given order
    ([0.0], "margin", 0.0),                                    # one candidate, p = 1
    ([LN(0.4)], "margin", 0.6),                                # one candidate: p2 = 0
    ([1e-7, -math.inf], "surprise", 0.0),                      # a logprob above 0 is p = 1
    ([LN(0.25)] * 4, "entropy", 1.0),                          # entropy is normalized_entropy
])
def test_token_uncertainty(logprobs: list[float], how: str, expected: float) -> None:
    assert token_uncertainty(logprobs, how) == pytest.approx(expected)


@pytest.mark.parametrize("how", ["margin", "surprise", "entropy"])
@pytest.mark.parametrize("logprobs", [[], [math.nan, -1.0], [math.inf]])
def test_token_uncertainty_of_a_failed_position_is_none(logprobs: list[float],
                                                        how: str) -> None:
    assert token_uncertainty(logprobs, how) is None


@pytest.mark.parametrize("values, how, expected", [
    ([0.1, 0.2, 0.3, 0.4, 0.5], "q50", 0.3),
    ([0.1, 0.2, 0.3, 0.4, 0.5], "q75", 0.4),
    ([0.1, 0.2, 0.3, 0.4, 0.5], "q90", 0.46),          # linear interpolation
    ([0.1, None, 0.5], "q50", 0.3),                     # failed positions left out
    ([0.7], "q90", 0.7),
    ([None, None], "q75", None),
])
def test_quantile_aggregates(values: list[float | None], how: str, expected: object) -> None:
    got = aggregate(values, how)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("answers, expected", [
    (["Paris", "paris.", " Paris!"], 0.0),             # the same answer, written differently
    (["Paris", "Lyon", "Paris", "Paris"], 0.25),
    (["17", "19", "5", "17", "18"], 0.6),
    (["a", "b"], 0.5),
    ([], None),
])
def test_disagreement(answers: list[str], expected: float | None) -> None:
    got = disagreement(answers)
    assert got == (None if expected is None else pytest.approx(expected))
