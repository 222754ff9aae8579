"""The fake SGLang's model: its command line, derived context, tokenizer and chat template, the
text it generates and the state it keeps (shared by the fake's handlers in ``fake_sglang.py``).
Imported as a module so the command line is parsed once."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

import fake_sglang_rules as rules

ARGS = rules.parse_args(sys.argv[1:])
NAME = ARGS.served_model_name or ARGS.model_path
DERIVED_CTX = rules.derived_context_length(ARGS.model_path)
CTX = ARGS.context_length or DERIVED_CTX
CHAT_DEFAULTS = rules.generation_defaults(ARGS.model_path)
# srt/entrypoints/openai/serving_chat.py: a --chat-template that is not a .jinja file names a
# built-in (non-Jinja) template.
NAMED_TEMPLATE = ARGS.chat_template is not None and not ARGS.chat_template.endswith(".jinja")
STATE: dict[str, Any] = {"status": "starting", "running": 0, "offloaded": set(),
                         "weights_lost": False, "children": []}


def load_tokenizer():  # type: ignore[no-untyped-def]
    from jinja2 import Template
    from tokenizers import Tokenizer

    path = Path(ARGS.tokenizer_path or ARGS.model_path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    return tok, Template(cfg["chat_template"], trim_blocks=True, lstrip_blocks=True)


TOKENIZER, TEMPLATE = load_tokenizer()


def render(messages: list[dict], add_generation_prompt: bool) -> list[int]:
    text = TEMPLATE.render(messages=messages, add_generation_prompt=add_generation_prompt)
    return TOKENIZER.encode(text, add_special_tokens=False).ids


def encode_chat(body: dict) -> list[int]:
    """The chat path's prompt (serving_chat.py ``_process_messages``)."""
    messages, prefix = rules.chat_messages_for_template(
        body["messages"], bool(body.get("continue_final_message")))
    ids = render(messages, True)
    return ids + (encode_text(prefix, special=False) if prefix else [])


def encode_text(text: str, special: bool = True) -> list[int]:
    return TOKENIZER.encode(text, add_special_tokens=special).ids


def openai_error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response({"object": "error", "message": message, "type": kind,
                              "param": None, "code": status}, status=status)


def capture(path: str, body: dict) -> None:
    if ARGS.fake_capture:
        with open(ARGS.fake_capture, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": path, "body": body}) + "\n")


def words(n: int) -> list[str]:
    """The generated text: visibly garbage once the weights were released without a CPU
    backup (torch_memory_saver discards paused memory, utils/torch_memory_saver_adapter.py)."""
    return [" \ufffd\ufffd" if STATE["weights_lost"] else f" w{i}" for i in range(n)]


def not_serving() -> str | None:
    if ARGS.enable_memory_saver and STATE["offloaded"] & {"kv_cache", "weights"}:
        return "memory is released; resume it first"
    return None


async def run_tokens(n: int) -> None:
    """Time on the "GPU": counted as running for /v1/loads and the idle assertion."""
    STATE["running"] += 1
    try:
        await asyncio.sleep(ARGS.fake_token_delay_s * n)
    finally:
        STATE["running"] -= 1


def chat_logprobs(n: int, k: int, temperature: float) -> dict:
    """serving_chat.py ``_process_response_logprobs``: OpenAI's ``content`` list."""
    content = []
    for i, word in enumerate(words(n)):
        cands = rules.candidate_logprobs(max(k, 1), i, temperature)
        content.append({"token": word, "bytes": list(word.encode()), "logprob": cands[0],
                        "top_logprobs": [{"token": f"c{j}", "bytes": list(f"c{j}".encode()),
                                          "logprob": lp} for j, lp in enumerate(cands[:k])]})
    return {"content": content}
