"""Table tests of the calibration math: AUROC, the threshold curve and the threshold pickers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lkn.homeostat.calibration import (auroc, bootstrap, curve, threshold_for_accuracy,
                                threshold_for_share)


@pytest.mark.parametrize("scores, wrong, expected", [
    ([0.9, 0.8, 0.2, 0.1], [True, True, False, False], 1.0),   # perfect
    ([0.1, 0.2, 0.8, 0.9], [True, True, False, False], 0.0),   # perfectly backwards
    ([0.5, 0.5, 0.5, 0.5], [True, False, True, False], 0.5),   # all tied: half
    ([0.9, 0.3, 0.5, 0.1], [True, True, False, False], 0.75),  # 3 of 4 pairs ordered
    ([0.4, 0.4, 0.1], [True, False, False], 0.75),             # one tie, one win
])
def test_auroc(scores: list[float], wrong: list[bool], expected: float) -> None:
    assert auroc(scores, wrong) == pytest.approx(expected)


def test_auroc_with_one_class_is_nan() -> None:
    assert math.isnan(auroc([0.1, 0.2], [False, False]))


def test_bootstrap_interval_holds_the_estimate_and_the_difference_to_itself_is_zero() -> None:
    rng = np.random.default_rng(1)
    wrong = rng.random(200) < 0.4
    scores = np.where(wrong, rng.random(200) + 0.3, rng.random(200))
    lo, hi, dlo, dhi = bootstrap(scores, wrong, scores, rounds=200)
    assert lo < auroc(scores, wrong) < hi
    assert dlo == dhi == 0.0


SCORES = [0.9, 0.7, 0.5, 0.3, 0.1]
SMALL = [False, False, True, True, True]
STRONG = [True, False, True, True, False]


def test_curve_runs_from_escalating_none_to_escalating_all() -> None:
    points = curve(SCORES, SMALL, STRONG)
    assert [p.escalated for p in points] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert points[0].threshold > 0.9 and points[-1].threshold == 0.1
    assert [p.cascade_accuracy for p in points] == pytest.approx([0.6, 0.8, 0.8, 0.8, 0.8, 0.6])
    assert points[2].kept_accuracy == 1.0 and math.isnan(points[-1].kept_accuracy)


def test_tied_scores_escalate_together() -> None:
    points = curve([0.5, 0.5, 0.2], [False, True, True])
    assert [p.escalated for p in points] == pytest.approx([0.0, 2 / 3, 1.0])


@pytest.mark.parametrize("share, threshold, escalated", [
    (0.0, None, 0.0),       # None: above the highest score
    (0.4, 0.7, 0.4),
    (0.5, 0.7, 0.4),        # never more than asked
    (1.0, 0.1, 1.0),
])
def test_threshold_for_share(share: float, threshold: float | None, escalated: float) -> None:
    p = threshold_for_share(curve(SCORES, SMALL, STRONG), share)
    assert p.escalated == escalated
    assert p.threshold > 0.9 if threshold is None else p.threshold == threshold


@pytest.mark.parametrize("strong, target, threshold", [
    (STRONG, 0.8, 0.9),     # the cascade reaches 0.8 escalating one request
    (STRONG, 0.9, None),    # nothing reaches 0.9
    (None, 1.0, 0.7),       # without the strong model: the kept answers' accuracy
    (None, 0.6, None),      # escalating none already has 0.6: the threshold above all
])
def test_threshold_for_accuracy(strong: list[bool] | None, target: float,
                                threshold: float | None) -> None:
    p = threshold_for_accuracy(curve(SCORES, SMALL, strong), target)
    if strong is STRONG and threshold is None:
        assert p is None
    elif threshold is None:
        assert p is not None and p.escalated == 0.0
    else:
        assert p is not None and p.threshold == threshold
