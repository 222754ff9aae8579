"""The reasoning parser: whole answers, and the same answers cut at every point between chunks."""
from __future__ import annotations

import pytest

from lkn.relay.reasoning import (ANALYSIS, COMMENTARY, FINAL, H_CHANNEL, H_END, H_MESSAGE, H_START,
                           THINK_CLOSE, THINK_OPEN, Piece, ReasoningParser, join, split)

HARMONY_FULL = ("<|channel|>analysis<|message|>The user wants 2+2.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>4<|return|>")

# (id, output text, think_opened, expected reasoning, expected content)
CASES = [
    ("think", "<think>\nplan\n</think>\n\nfinal", False, "plan", "final"),
    ("think-opened", "plan\n</think>\n\nfinal", True, "plan", "final"),
    ("think-opened-redundant-tag", "<think>plan</think>final", True, "plan", "final"),
    ("think-leading-space", "  \n<think>x</think>y", False, "x", "y"),
    ("think-empty-block", "<think>\n\n</think>\n\nanswer", False, "", "answer"),
    ("think-unclosed", "<think>still thinking", False, "still thinking", ""),
    ("think-opened-unclosed", "just thinking\n", True, "just thinking", ""),
    ("think-angle-brackets-inside", "<think>1 < 2 </thin k</think>ok", False,
     "1 < 2 </thin k", "ok"),
    ("think-then-tags-in-answer", "<think>a</think>Write </think> or <think>.", False,
     "a", "Write </think> or <think>."),
    ("think-unicode", "<think>é🚀 ü</think>ß 漢字", False, "é🚀 ü", "ß 漢字"),
    ("think-multiline", "<think>step 1\n\nstep 2\n</think>\nThe answer\nis 4.\n", False,
     "step 1\n\nstep 2", "The answer\nis 4.\n"),
    ("plain", "Paris is the capital.", False, "", "Paris is the capital."),
    ("plain-leading-space", "\n Paris", False, "", "\n Paris"),
    ("plain-mentions-think", "Use the <think> tag like <think>x</think>.", False, "",
     "Use the <think> tag like <think>x</think>."),
    ("plain-close-tag-without-open", "a</think>b", False, "", "a</think>b"),
    ("plain-ends-in-partial-tag", "a < b and <thi", False, "", "a < b and <thi"),
    ("plain-is-a-tag-prefix", "<th", False, "", "<th"),
    ("plain-other-special-token", "<|im_start|>hi", False, "", "<|im_start|>hi"),
    ("empty", "", False, "", ""),
    ("empty-opened", "", True, "", ""),
    ("harmony", HARMONY_FULL, False, "The user wants 2+2.", "4"),
    ("harmony-from-start-token",
     "<|start|>assistant<|channel|>analysis<|message|>plan<|end|>"
     "<|start|>assistant<|channel|>final<|message|>answer", False, "plan", "answer"),
    ("harmony-final-header-consumed", "<|channel|>analysis<|message|>plan<|end|>answer",
     False, "plan", "answer"),
    ("harmony-commentary-preamble",
     "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary"
     "<|message|>Let me check. <|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
     False, "a", "Let me check. ok"),
    ("harmony-unclosed-analysis", "<|channel|>analysis<|message|>thinking <|en", False,
     "thinking <|en", ""),
    ("harmony-final-only", "<|channel|>final<|message|>hi <think> there", False, "",
     "hi <think> there"),
    ("harmony-tool-call-header",
     "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"a\": 1}<|call|>",
     False, "", "{\"a\": 1}"),
    ("harmony-header-never-finished", "<|channel|>analysis<|mess", False, "", ""),
    ("harmony-channel-without-end",
     "<|channel|>analysis<|message|>plan<|channel|>final<|message|>done", False, "plan", "done"),
]
IDS = [c[0] for c in CASES]
TAGS = (THINK_OPEN, THINK_CLOSE, H_START, H_END, H_MESSAGE, H_CHANNEL, "<|return|>", "<|call|>")


def run(chunks: list[str], opened: bool) -> tuple[list[list[Piece]], tuple[str, str]]:
    parser = ReasoningParser(think_opened=opened)
    per_call = [parser.feed(c) for c in chunks] + [parser.finish()]
    return per_call, join([p for ps in per_call for p in ps])


@pytest.mark.parametrize("name,text,opened,reasoning,content", CASES, ids=IDS)
def test_whole_answer(name: str, text: str, opened: bool, reasoning: str, content: str) -> None:
    assert split(text, think_opened=opened) == (reasoning, content)


@pytest.mark.parametrize("name,text,opened,reasoning,content", CASES, ids=IDS)
def test_every_single_cut_gives_the_whole_answers_split(name: str, text: str, opened: bool,
                                                        reasoning: str, content: str) -> None:
    for cut in range(len(text) + 1):
        _, got = run([text[:cut], text[cut:]], opened)
        assert got == (reasoning, content), f"cut at {cut}: {text[:cut]!r} | {text[cut:]!r}"


@pytest.mark.parametrize("name,text,opened,reasoning,content", CASES, ids=IDS)
def test_every_pair_of_cuts_gives_the_whole_answers_split(name: str, text: str, opened: bool,
                                                          reasoning: str, content: str) -> None:
    # Two cuts put a tag's middle alone in a chunk: the case a single cut cannot reach.
    for a in range(len(text) + 1):
        for b in range(a, len(text) + 1):
            _, got = run([text[:a], text[a:b], text[b:]], opened)
            assert got == (reasoning, content), f"cuts at {a}, {b}"


@pytest.mark.parametrize("name,text,opened,reasoning,content", CASES, ids=IDS)
def test_one_character_at_a_time_never_emits_part_of_a_tag(
        name: str, text: str, opened: bool, reasoning: str, content: str) -> None:
    per_call, got = run(list(text), opened)
    assert got == (reasoning, content)
    for pieces in per_call:
        for piece in pieces:
            for tag in TAGS:
                if tag in piece.text:  # only where the expected field itself carries the tag
                    assert tag in (reasoning if piece.is_reasoning else content)


def test_reasoning_streams_before_the_block_closes() -> None:
    parser = ReasoningParser()
    assert parser.feed("<think>first") == [Piece(ANALYSIS, "first")]
    assert parser.in_reasoning
    assert parser.feed(" second </th") == [Piece(ANALYSIS, " second")]
    assert parser.feed("ink>\n") == []
    assert not parser.in_reasoning
    assert parser.feed("Answer") == [Piece(FINAL, "Answer")]
    assert parser.finish() == []
    assert parser.format == "think"


def test_holds_back_no_more_than_a_tag() -> None:
    parser = ReasoningParser()
    pieces = parser.feed("<think>" + "x" * 1000 + "</thi")
    assert pieces == [Piece(ANALYSIS, "x" * 1000)]


def test_plain_answers_are_not_delayed_after_the_first_characters() -> None:
    parser = ReasoningParser()
    assert parser.feed("<") == []  # could still open a block
    assert parser.feed("b>bold") == [Piece(FINAL, "<b>bold")]
    assert parser.feed(" <think>") == [Piece(FINAL, " <think>")]
    assert parser.format == "plain"


def test_harmony_pieces_keep_their_channels() -> None:
    text = ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary"
            "<|message|>c<|end|><|start|>assistant<|channel|>final<|message|>f")
    parser = ReasoningParser()
    pieces = parser.feed(text) + parser.finish()
    assert pieces == [Piece(ANALYSIS, "a"), Piece(COMMENTARY, "c"), Piece(FINAL, "f")]
    assert parser.format == "harmony"


def test_feed_after_finish_is_an_error() -> None:
    parser = ReasoningParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")
