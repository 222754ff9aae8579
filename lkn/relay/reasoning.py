"""Splitting model output into reasoning and answer, incrementally (pure: no I/O).

Two formats are recognised, by how the output *starts*:

- ``<think>…</think>`` (DeepSeek-R1, Qwen3): a think block counts only at the very start of the
  output (leading whitespace allowed). Everything after it is the answer, tags included: an
  answer that mentions ``<think>`` or ``</think>`` keeps the text. When the chat template opened
  the block in the prompt (``think_opened=True``; DeepSeek-R1-Distill, QwQ, SmolLM2 with a
  thinking template), the output starts inside the block and only ``</think>`` ends it; a
  redundant ``<think>`` at the start is dropped. A block that never closes is all reasoning.
  Whitespace around the reasoning and before the answer is dropped (engines differ here, and
  clients should not have to strip it).
- harmony (GPT-OSS): the output starts with ``<|channel|>`` or ``<|start|>``; each message is
  ``<|channel|>NAME<|message|>TEXT<|end|>``. ``analysis`` is reasoning; ``final`` and
  ``commentary`` (preambles) are answer text. Bare text after ``<|end|>`` is ``final``:
  llama-server with ``reasoning_format: none`` consumes the final channel's header.

Any other output is answer text, passed through unchanged. Text may arrive cut anywhere, also
inside a tag: a suffix that could still become a tag is held back until the next ``feed`` or
``finish``, so neither field ever carries part of a tag.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
H_START = "<|start|>"
H_END = "<|end|>"
H_MESSAGE = "<|message|>"
H_CHANNEL = "<|channel|>"
H_RETURN = "<|return|>"
H_CALL = "<|call|>"
# What ends a harmony message body; the last two only in malformed output, but they must not leak.
BODY_STOPS = (H_END, H_RETURN, H_CALL, H_START, H_CHANNEL)
BETWEEN_TOKENS = (H_START, H_CHANNEL, H_END, H_RETURN, H_CALL)

ANALYSIS = "analysis"
COMMENTARY = "commentary"
FINAL = "final"
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([A-Za-z0-9_.-]+)")


@dataclass(frozen=True)
class Piece:
    """A run of output text in one channel (think blocks map to ``analysis``/``final``)."""
    channel: str
    text: str

    @property
    def is_reasoning(self) -> bool:
        return self.channel == ANALYSIS


class _State(Enum):
    START = "start"
    THINK = "think"
    ANSWER = "answer"
    HEADER = "header"
    BODY = "body"
    BETWEEN = "between"


def _held(buf: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of one of ``tags``."""
    longest = max(len(t) for t in tags) - 1
    for k in range(min(longest, len(buf)), 0, -1):
        tail = buf[-k:]
        if any(t.startswith(tail) for t in tags):
            return k
    return 0


class ReasoningParser:
    """Feed output text as it arrives; each call returns the pieces that are now certain."""

    def __init__(self, *, think_opened: bool = False) -> None:
        self._think_opened = think_opened
        self._state = _State.START
        self._buf = ""
        self._lstrip = False  # drop leading whitespace of the section just entered
        self._channel = FINAL
        self._final = False
        self._out: list[Piece] = []
        self.format: str | None = None  # "think", "harmony" or "plain" once decided

    @property
    def in_reasoning(self) -> bool:
        return self._state is _State.THINK or (
            self._state is _State.BODY and self._channel == ANALYSIS)

    def feed(self, text: str) -> list[Piece]:
        if self._final:
            raise RuntimeError("feed() after finish()")
        self._buf += text
        while self._step():
            pass
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Piece]:
        """The end of the output: what was held back is released as text of its section."""
        self._final = True
        while self._step():
            pass
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ states
    def _emit(self, channel: str, text: str) -> None:
        if not text:
            return
        if self._out and self._out[-1].channel == channel:
            self._out[-1] = Piece(channel, self._out[-1].text + text)
        else:
            self._out.append(Piece(channel, text))

    def _enter(self, state: _State, rest: str, *, lstrip: bool = False) -> bool:
        self._state, self._buf, self._lstrip = state, rest, lstrip
        return True

    def _step(self) -> bool:
        if self._lstrip:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return False
            self._lstrip = False
        return {_State.START: self._start, _State.THINK: self._think,
                _State.ANSWER: self._answer, _State.HEADER: self._header,
                _State.BODY: self._body, _State.BETWEEN: self._between}[self._state]()

    def _start(self) -> bool:
        s = self._buf.lstrip()
        if s.startswith(THINK_OPEN):
            self.format = "think"
            return self._enter(_State.THINK, s[len(THINK_OPEN):], lstrip=True)
        if self._think_opened:
            if THINK_OPEN.startswith(s) and not self._final:
                return False  # may still be a redundant <think>
            self.format = "think"
            return self._enter(_State.THINK, s, lstrip=True)
        if s.startswith(H_CHANNEL):
            self.format = "harmony"
            return self._enter(_State.HEADER, s)
        if s.startswith(H_START):
            self.format = "harmony"
            return self._enter(_State.HEADER, s[len(H_START):])
        if not self._final and any(t.startswith(s) for t in (THINK_OPEN, H_CHANNEL, H_START)):
            return False
        self.format = "plain"
        return self._enter(_State.ANSWER, self._buf)

    def _think(self) -> bool:
        buf = self._buf
        i = buf.find(THINK_CLOSE)
        if i >= 0:
            self._emit(ANALYSIS, buf[:i].rstrip())
            return self._enter(_State.ANSWER, buf[i + len(THINK_CLOSE):], lstrip=True)
        if self._final:
            self._emit(ANALYSIS, buf.rstrip())
            self._buf = ""
            return False
        # Hold a possible partial tag and the whitespace before it: if the tag completes,
        # that whitespace is trimmed from the reasoning.
        keep = len(buf) - _held(buf, (THINK_CLOSE,))
        while keep > 0 and buf[keep - 1].isspace():
            keep -= 1
        self._emit(ANALYSIS, buf[:keep])
        self._buf = buf[keep:]
        return False

    def _answer(self) -> bool:
        self._emit(FINAL, self._buf)
        self._buf = ""
        return False

    def _header(self) -> bool:
        i = self._buf.find(H_MESSAGE)
        if i < 0:
            if self._final:
                self._buf = ""  # a header without a body carries no text
            return False
        match = _CHANNEL_NAME.search(self._buf[:i])
        self._channel = match.group(1) if match else FINAL
        return self._enter(_State.BODY, self._buf[i + len(H_MESSAGE):])

    def _body(self) -> bool:
        buf = self._buf
        hits = [(i, t) for t in BODY_STOPS if (i := buf.find(t)) >= 0]
        if hits:
            i, tag = min(hits)
            self._emit(self._channel, buf[:i])
            if tag == H_CHANNEL:
                return self._enter(_State.HEADER, buf[i:])
            if tag == H_START:
                return self._enter(_State.HEADER, buf[i + len(tag):])
            return self._enter(_State.BETWEEN, buf[i + len(tag):])
        hold = 0 if self._final else _held(buf, BODY_STOPS)
        self._emit(self._channel, buf[:len(buf) - hold])
        self._buf = buf[len(buf) - hold:]
        return False

    def _between(self) -> bool:
        s = self._buf.lstrip()
        if s.startswith(H_START):
            return self._enter(_State.HEADER, s[len(H_START):])
        if s.startswith(H_CHANNEL):
            return self._enter(_State.HEADER, s)
        for stop in (H_END, H_RETURN, H_CALL):
            if s.startswith(stop):
                return self._enter(_State.BETWEEN, s[len(stop):])
        if not s or (not self._final and any(t.startswith(s) for t in BETWEEN_TOKENS)):
            if self._final:
                self._buf = ""
            return False
        self._channel = FINAL
        return self._enter(_State.BODY, s)


def split(text: str, *, think_opened: bool = False) -> tuple[str, str]:
    """A whole answer as ``(reasoning, content)``."""
    parser = ReasoningParser(think_opened=think_opened)
    pieces = parser.feed(text) + parser.finish()
    return join(pieces)


def join(pieces: list[Piece]) -> tuple[str, str]:
    reasoning = "".join(p.text for p in pieces if p.is_reasoning)
    content = "".join(p.text for p in pieces if not p.is_reasoning)
    return reasoning, content
