"""What a probe learned: the top-k logprobs of each generated position, and the answer the probe
wrote (its text, token ids, why it stopped, the engine's token counts), so that a request the
homeostat keeps can continue from it instead of generating it again (``relay.continued``).

``parse_openai`` reads an OpenAI-shaped probe answer (llama-server, SGLang's chat, an OpenAI
upstream). The text is kept only when it is exactly what the tokens spell: llama-server gives
each token's bytes, and an answer cut inside a UTF-8 character (or one whose tokens do not
spell its text) is not continued from, only scored."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ProbeAnswerError(ValueError):
    """The probe's answer carries no logprobs."""


@dataclass(frozen=True)
class ProbeResult:
    """Top-k logprobs of each probed position (the first generated tokens), and the answer."""
    positions: tuple[tuple[float, ...], ...]
    tokens: tuple[str, ...] = ()
    candidates: tuple[tuple[str, ...], ...] = ()  # each position's top-k tokens, as positions
    text: str | None = None              # the answer's text; None: unknown or not plain
    token_ids: tuple[int, ...] = ()      # the generated tokens' ids, where the engine gives them
    finish_reason: str | None = None     # "stop": the probe wrote the whole answer
    prompt_tokens: int | None = None     # the engine's count of the prompt
    cached_tokens: int | None = None     # of which came from its prompt cache
    answer: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def decoded(self) -> int:
        """Tokens the probe generated."""
        return len(self.positions)

    @property
    def prefilled(self) -> int | None:
        """Prompt tokens the probe made the engine evaluate (its cache hits excluded)."""
        if self.prompt_tokens is None:
            return None
        return max(0, self.prompt_tokens - (self.cached_tokens or 0))


def _spelled(content: list[Any], text: str) -> bool:
    """Whether the tokens' bytes spell ``text`` exactly (True when the engine gives no bytes)."""
    parts = [entry.get("bytes") for entry in content if isinstance(entry, dict)]
    if not parts or not all(isinstance(p, list) for p in parts):
        return "".join(str(e.get("token", "")) for e in content) == text
    try:
        return bytes(b for p in parts if isinstance(p, list) for b in p).decode("utf-8") == text
    except (TypeError, ValueError):
        return False


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_openai(data: Any, route: str) -> ProbeResult:
    """The probe's answer in OpenAI's shape (chat or completions, ``logprobs`` with
    ``top_logprobs`` per position). Raises ``ProbeAnswerError`` without logprobs."""
    try:
        choice = data["choices"][0]
        content = choice["logprobs"]["content"]
        positions = tuple(tuple(float(c["logprob"]) for c in entry.get("top_logprobs") or ())
                          for entry in content)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise ProbeAnswerError("probe answer carries no logprobs") from None
    tokens = tuple(str(entry.get("token", "")) for entry in content)
    candidates = tuple(tuple(str(c.get("token", "")) for c in entry.get("top_logprobs") or ())
                       for entry in content)
    ids = tuple(i for i in (_int(e.get("id")) for e in content) if i is not None)
    if route == "chat":
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = message.get("content")
        if message.get("tool_calls") or message.get("reasoning_content"):
            text = None  # not plain text: nothing to continue from
    else:
        text = choice.get("text")
    if not isinstance(text, str) or not _spelled(content, text) or len(data["choices"]) != 1:
        text = None  # several choices: the probe's answer is not one answer
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else None
    finish = choice.get("finish_reason")
    return ProbeResult(positions=positions, tokens=tokens, candidates=candidates, text=text,
                       token_ids=ids if len(ids) == len(content) else (),
                       finish_reason=finish if isinstance(finish, str) else None,
                       prompt_tokens=_int(usage.get("prompt_tokens")), cached_tokens=cached,
                       answer=data if isinstance(data, dict) else None)


def with_prefill(messages: Any, text: str) -> list[Any] | None:
    """``messages`` followed by ``text`` as the assistant's message to continue; None when they
    end with an assistant message already (the client's own prefill is not combined)."""
    if not isinstance(messages, list) or not messages or (
            isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant"):
        return None
    return [*messages, {"role": "assistant", "content": text}]
