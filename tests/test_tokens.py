"""Local token counting (llama-cpp-python, vocab only) and the documented estimate."""
from __future__ import annotations

import asyncio

import pytest

from lkn.engines.tokens import count_locally, count_prompt, estimate_tokens
from tests.conftest import smollm2_path

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_estimate_over_counts_a_real_tokenizer() -> None:
    body = {"messages": MESSAGES}
    assert estimate_tokens("chat", body) > count_locally(smollm2_path(), "gguf", "chat", body)
    prompt = {"prompt": "The quick brown fox jumps over the lazy dog. " * 20}
    assert estimate_tokens("completions", prompt) > count_locally(
        smollm2_path(), "gguf", "completions", prompt)
    assert estimate_tokens("completions", {"prompt": [1, 2, 3]}) == 3


def test_count_prompt_prefers_live_then_local_then_estimate() -> None:
    body = {"messages": MESSAGES}

    async def live() -> int:
        return 1234

    async def broken() -> int:
        raise ConnectionError("engine is stopping")

    async def run() -> list[tuple[int, str]]:
        return [
            await count_prompt(route="chat", body=body, live=live, local_path=smollm2_path(),
                               local_kind="gguf"),
            await count_prompt(route="chat", body=body, live=broken, local_path=smollm2_path(),
                               local_kind="gguf"),
            await count_prompt(route="chat", body=body, live=None, local_path="/nonexistent",
                               local_kind="gguf"),
        ]
    (n1, m1), (n2, m2), (n3, m3) = asyncio.run(run())
    assert (n1, m1) == (1234, "engine")
    assert m2 == "local" and n2 == count_locally(smollm2_path(), "gguf", "chat", body)
    assert m3 == "estimate" and n3 == estimate_tokens("chat", body)


@pytest.mark.parametrize("prompt, expected_kind", [([5, 6, 7, 8], "ids"), (["a b", "a b c d e"],
                                                                          "longest")])
def test_local_count_of_raw_prompt_shapes(prompt: list, expected_kind: str) -> None:
    n = count_locally(smollm2_path(), "gguf", "completions", {"prompt": prompt})
    if expected_kind == "ids":
        assert n == 4
    else:
        assert n == count_locally(smollm2_path(), "gguf", "completions", {"prompt": prompt[1]})
