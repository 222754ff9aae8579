"""Table tests of the calibration set's matching rules."""
from __future__ import annotations

import pytest

from lkn.homeostat.answers import matches, parse_item


@pytest.mark.parametrize("rule, answer, text, expected", [
    ("contains", "Paris", "Paris.", True),
    ("contains", "Paris", "The capital of France is paris", True),
    ("contains", "Paris", "Parisian", False),                 # whole words only
    ("contains", ["Kyiv", "Kiev"], "Kiev", True),              # any accepted spelling
    ("contains", "New Delhi", "new  delhi", False),            # the words as given
    ("contains", "Lyon", "Paris", False),
    ("number", "17", "17", True),
    ("number", "17", "13 + 4 = 17", True),                     # the last number counts
    ("number", "17", "The answer is 17.", True),
    ("number", "17", "17.0", True),
    ("number", "17", "13 + 4 = 19", False),
    ("number", "1000", "1,000", True),
    ("number", "17", "seventeen", False),                      # digits only
    ("yesno", "yes", "Yes, it is.", True),
    ("yesno", "no", "No.", True),
    ("yesno", "no", "Yes. No wait", False),                    # the first one counts
    ("yesno", "yes", "Maybe", False),
    ("yesno", "no", "Nobody knows", False),                    # words, not prefixes
    ("exact", "blue", " Blue. ", True),
    ("exact", "blue", "blue sky", False),
])
def test_matches(rule: str, answer: str | list[str], text: str, expected: bool) -> None:
    assert matches(rule, answer, text) is expected


def test_unknown_rule_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown match rule"):
        matches("fuzzy", "a", "a")


@pytest.mark.parametrize("obj, message", [
    ([], "line 3: must be a JSON object"),
    ({"answer": "x"}, "line 3: 'question' must be a non-empty string"),
    ({"question": "q", "answer": 4}, "line 3: 'answer' must be a string or a list"),
    ({"question": "q", "answer": []}, "line 3: 'answer' must be a string or a list"),
    ({"question": "q", "answer": "a", "match": "fuzzy"}, "line 3: 'match' must be one of"),
])
def test_parse_item_names_the_line(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_item(3, obj)


def test_parse_item_fills_the_default_rule() -> None:
    assert parse_item(1, {"question": "q", "answer": "a"}, "number")["match"] == "number"
