"""Is a short answer right? The matching rules of a calibration set (pure).

A question set (JSONL, one object a line) gives each question ``{"question", "answer",
"match"}``; ``answer`` is a string or a list of accepted strings, ``match`` one of:

- ``contains``: an accepted string occurs in the answer as whole words, ignoring case
  ("Paris." and "The capital is Paris" match "Paris"; "Parisian" does not);
- ``number``: the last number in the answer equals the accepted one ("19", "12 + 7 = 19",
  "The answer is 19." all match 19: small models often repeat the question first);
- ``yesno``: the first "yes" or "no" in the answer is the accepted one;
- ``exact``: the whole answer, stripped of spaces, final punctuation and case.

Rules are kept this small on purpose: an answer that needs judging is not a calibration answer.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

MATCH_RULES = ("contains", "number", "yesno", "exact")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_YESNO = re.compile(r"\b(yes|no)\b")


def accepted(answer: str | Sequence[str]) -> tuple[str, ...]:
    return (answer,) if isinstance(answer, str) else tuple(answer)


def _number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def matches(rule: str, answer: str | Sequence[str], text: str) -> bool:
    low = text.lower()
    options = [a.lower() for a in accepted(answer)]
    if rule == "contains":
        return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", low) for a in options)
    if rule == "number":
        got = _number(low)
        return got is not None and any(_number(a) == got for a in options)
    if rule == "yesno":
        m = _YESNO.search(low)
        return m is not None and m.group(1) in options
    if rule == "exact":
        return low.strip().rstrip(".!").strip() in options
    raise ValueError(f"unknown match rule {rule!r}; known: {', '.join(MATCH_RULES)}")


def parse_item(line_no: int, obj: Any, default_rule: str = "contains") -> dict[str, Any]:
    """One JSONL line as ``{"question", "answer", "match", ...}``; errors name the line."""
    if not isinstance(obj, dict):
        raise ValueError(f"line {line_no}: must be a JSON object")
    q, a = obj.get("question"), obj.get("answer")
    if not isinstance(q, str) or not q:
        raise ValueError(f"line {line_no}: 'question' must be a non-empty string")
    if not (isinstance(a, str) or (isinstance(a, list) and a and
                                   all(isinstance(x, str) for x in a))):
        raise ValueError(f"line {line_no}: 'answer' must be a string or a list of strings")
    rule = obj.get("match", default_rule)
    if rule not in MATCH_RULES:
        raise ValueError(f"line {line_no}: 'match' must be one of {', '.join(MATCH_RULES)}, "
                         f"got {rule!r}")
    return {**obj, "match": rule}
