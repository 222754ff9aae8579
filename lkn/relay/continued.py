"""A kept request's answer, made of its probe's answer and the engine's continuation of it
(``homeostat.keep`` decides; the engine's client builds the continuing request).

The client gets one answer, as if the engine had generated it in one call:

- whole: the probe's text, then the continuation's (an engine that repeats the continued text
  at the start of its answer, as llama-server's chat does, has it stripped), under the
  continuation's id; a probe that wrote the whole answer is answered from alone, no second call;
- streamed: the probe's text is the first event (after the role chunk), then the
  continuation's events under the same id, its role chunk and any repeated text dropped;
- usage counts the answer once: the probe's prompt (and its cache hits), the probe's tokens
  plus the continuation's.

What passes here is still the engine's wire format (OpenAI chunks): the thinking split, the
response cache's tee and the client API's transcoder all come after."""
from __future__ import annotations

import copy
from typing import Any, AsyncIterator

from lkn import fastjson
from lkn.engines.probe_answer import ProbeResult
from lkn.sse import DONE, SSEParser, frame, frame_json


class Continued:
    def __init__(self, route: str, probe: ProbeResult, repeated: bool = False) -> None:
        """``repeated``: the engine's answer starts with the probe's text again."""
        assert probe.text is not None and probe.answer is not None
        self.route = route
        self.probe = probe
        self.text: str = probe.text
        self._echo = self.text if repeated else ""  # what is still to strip of the repeat
        # The engine did not continue the probe's answer but began a new one (a build, or a
        # flag, without assistant prefill): its answer did not repeat the text it was to
        # repeat, or its prompt held more than the probe's prompt and tokens (a closed turn
        # and a new one's start). The caller stops keeping this engine's answers.
        self.anew = False
        answer = probe.answer
        self._head: dict[str, Any] = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint")
                      if k in answer}
        self._field = "content" if route == "chat" else "text"

    # ------------------------------------------------------------ whole answers
    def probe_answer(self) -> bytes:
        """The probe's own answer as the whole answer (it wrote all of it)."""
        data = copy.deepcopy(self.probe.answer) or {}
        for choice in data.get("choices") or ():
            if isinstance(choice, dict):
                choice.pop("logprobs", None)  # asked for the decision, not by the client
        return fastjson.dumps(data)

    def stitch(self, raw: bytes) -> bytes:
        """The continuation's whole answer with the probe's text in front."""
        try:
            data = fastjson.loads(raw)
            choice = data["choices"][0]
            holder = choice["message"] if self.route == "chat" else choice
            rest = holder.get(self._field)
        except (ValueError, KeyError, IndexError, TypeError):
            return raw  # not an answer: relayed as the engine wrote it
        holder[self._field] = self.text + self._strip(rest if isinstance(rest, str) else "")
        self._count(data.get("usage"))
        self._time(data.get("timings"))
        return fastjson.dumps(data)

    # ------------------------------------------------------------ streams
    def _chunk(self, piece: dict[str, Any] | None, finish: str | None = None) -> bytes:
        if self.route == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": piece or {}, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": (piece or {}).get("text", ""), "logprobs": None,
                      "finish_reason": finish}
            kind = "text_completion"
        return frame_json({"choices": [choice], **self._head, "object": kind})

    def opening(self) -> bytes:
        """The stream's first events: the role, then the probe's text."""
        if self.route == "chat":
            return (self._chunk({"role": "assistant", "content": None})
                    + self._chunk({"content": self.text}))
        return self._chunk({"text": self.text})

    def probe_stream(self) -> bytes:
        """The whole stream of an answer the probe wrote alone: the opening, the finish, the
        usage (the relay drops it where only lkn asked for it), [DONE]."""
        usage: dict[str, Any] = {"prompt_tokens": self.probe.prompt_tokens or 0,
                                 "completion_tokens": self.probe.decoded}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        kind = "chat.completion.chunk" if self.route == "chat" else "text_completion"
        tail: dict[str, Any] = {"choices": [], **self._head, "object": kind, "usage": usage}
        timings = (self.probe.answer or {}).get("timings")
        if isinstance(timings, dict):
            tail["timings"] = timings  # the engine's speed, not that of writing one chunk
        return (self.opening() + self._chunk(None, self.probe.finish_reason) + frame_json(tail)
                + frame(DONE))

    async def stream(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The opening, then the continuation's events rewritten (see the module)."""
        yield self.opening()
        parser = SSEParser()
        async for chunk in source:
            out = b"".join([self._event(e.data, e.comment) for e in parser.feed(chunk)])
            if out:
                yield out
        out = b"".join([self._event(e.data, e.comment) for e in parser.flush()])
        if out:  # an event left open at the end: the forwarder reports the cut
            yield out

    def _event(self, data: str | None, comment: bool) -> bytes:
        if comment:
            return b": ping\n\n"
        if data is None:
            return b""
        try:
            obj = fastjson.loads(data) if data != DONE else None
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or "error" in obj:
            return frame(data)  # [DONE], an error: as the engine sent it
        obj.update(self._head)
        self._count(obj.get("usage"))
        self._time(obj.get("timings"))
        choices = obj.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            holder = choice.get("delta") if self.route == "chat" else choice
            if isinstance(holder, dict):
                holder.pop("role", None)  # the opening said it
                piece = holder.get(self._field)
                if isinstance(piece, str):
                    holder[self._field] = piece = self._strip(piece)
                if not piece and len(holder) <= (1 if self._field in holder else 0) \
                        and choice.get("finish_reason") is None and not obj.get("usage"):
                    return b""  # nothing left to say (the role chunk, repeated text)
        return frame_json(obj)

    # ------------------------------------------------------------ shared
    def _strip(self, piece: str) -> str:
        """``piece`` without the part of the probe's text the engine repeats (an engine that
        repeats it: the first pieces of its answer spell it, whole or in parts)."""
        echo = self._echo
        if not echo:
            return piece
        if piece.startswith(echo):
            self._echo = ""
            return piece[len(echo):]
        if echo.startswith(piece):
            self._echo = echo[len(piece):]
            return ""
        self._echo = ""  # not the repeat after all: nothing of the answer is dropped
        self.anew = True
        return piece

    def _count(self, usage: Any) -> None:
        """Usage of the whole answer: the probe's prompt, both parts' tokens."""
        if not isinstance(usage, dict):
            return
        probe = self.probe
        prompt = usage.get("prompt_tokens")
        if isinstance(prompt, int) and probe.prompt_tokens is not None and \
                prompt - probe.prompt_tokens - probe.decoded > 1:
            self.anew = True  # one token of slack: the seam may tokenize one apart
        done = usage.get("completion_tokens")
        if isinstance(done, int):
            usage["completion_tokens"] = done + probe.decoded
        if probe.prompt_tokens is not None:
            usage["prompt_tokens"] = probe.prompt_tokens
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and probe.cached_tokens is not None:
                details["cached_tokens"] = probe.cached_tokens
        if isinstance(usage.get("prompt_tokens"), int) and isinstance(
                usage.get("completion_tokens"), int):
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]

    def _time(self, timings: Any) -> None:
        """llama-server's timings of the whole answer: the probe's prompt and generation and
        the continuation's (tokens per second stay the engine's, not twice as fast)."""
        mine = (self.probe.answer or {}).get("timings")
        if not isinstance(timings, dict) or not isinstance(mine, dict):
            return
        for phase in ("prompt", "predicted"):
            n, ms = f"{phase}_n", f"{phase}_ms"
            values = [v for v in (timings.get(n), timings.get(ms), mine.get(n), mine.get(ms))
                      if isinstance(v, (int, float))]
            if len(values) != 4:
                continue
            own_n, own_ms, probe_n, probe_ms = values
            timings[n] = int(own_n + probe_n)
            timings[ms] = own_ms + probe_ms
            if timings[n] and timings[ms]:
                timings[f"{phase}_per_token_ms"] = timings[ms] / timings[n]
                timings[f"{phase}_per_second"] = 1000 * timings[n] / timings[ms]
