"""What the fake SGLang decides, as SGLang 0.5.23's own source decides it (pure functions, no
I/O beyond reading the model directory). Each rule names the file it follows, paths relative
to ``sglang/srt/`` in the wheel."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

# constants.py: an omitted or empty "tags" releases/resumes all three.
ALL_TAGS = ("kv_cache", "weights", "cuda_graph")

# sampling/sampling_params.py: SamplingParams' integer fields; a float there fails
# (sampling_seed: "must be an integer"), so a client has to send whole numbers as ints.
INT_SAMPLING_FIELDS = ("max_new_tokens", "top_k", "min_new_tokens", "n", "sampling_seed")


def parser() -> argparse.ArgumentParser:
    """The flags lkn may pass (field names in arg_groups/fields/*.py, ``--`` + name with
    dashes), plus the fake's own ``--fake-*`` fault flags."""
    p = argparse.ArgumentParser(prog="sglang serve")
    p.add_argument("--model-path", "--model", required=True)
    p.add_argument("--tokenizer-path", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--mem-fraction-static", type=float, default=None)
    p.add_argument("--enable-memory-saver", action="store_true")
    p.add_argument("--enable-weights-cpu-backup", action="store_true")
    p.add_argument("--api-key", default=None)
    p.add_argument("--chat-template", default=None)
    p.add_argument("--skip-server-warmup", action="store_true")
    p.add_argument("--reasoning-parser", default=None)
    p.add_argument("--fake-load-s", type=float, default=0.0)
    p.add_argument("--fake-warmup-s", type=float, default=0.0)
    p.add_argument("--fake-health-delay-s", type=float, default=0.0)
    p.add_argument("--fake-no-ready", action="store_true")
    p.add_argument("--fake-crash-before-ready", type=int, default=None)
    p.add_argument("--fake-ignore-sigterm", action="store_true")
    p.add_argument("--fake-escaped-child", default=None)
    p.add_argument("--fake-children", default=None)
    p.add_argument("--fake-capture", default=None)
    p.add_argument("--fake-token-delay-s", type=float, default=0.0)
    p.add_argument("--fake-text", default=None)  # chat answers: this file's text, 3 chars a chunk
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """launch_server.py / server_args.py ``prepare_server_args``: ``parser.parse_args(argv)``,
    so an unknown flag exits with status 2. lkn runs ``PYTHON -m sglang.launch_server ...``
    and the fake stands in for PYTHON: the interpreter's own ``-m MODULE`` is dropped first."""
    if argv[:2] == ["-m", "sglang.launch_server"]:
        argv = argv[2:]
    return parser().parse_args(argv)


def derived_context_length(model_dir: str) -> int:
    """utils/hf_transformers/common.py ``get_context_length``: the first of
    CONTEXT_LENGTH_KEYS in the (text) config, times the rope scaling factor; 2048 if none."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config") or config
    rope = config.get("rope_scaling") or {}
    factor = rope.get("factor", 1) if rope else 1
    if "original_max_position_embeddings" in rope or rope.get("rope_type") == "llama3":
        factor = 1
    for key in ("max_sequence_length", "seq_length", "max_seq_len", "model_max_length",
                "max_position_embeddings"):
        if config.get(key) is not None:
            return int(factor * config[key])
    return 2048


def context_length_error(requested: int | None, derived: int) -> str | None:
    """configs/model_config.py ``_derive_context_length``: a longer context than the model's
    is a ValueError at start unless SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN is true
    (environ.py ``EnvBool``: true/1/yes/y)."""
    if requested is None or requested <= derived:
        return None
    if os.environ.get("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "").lower() in (
            "true", "1", "yes", "y"):
        return None
    return (f"ValueError: Warning: User-specified context_length ({requested}) is greater than "
            f"the derived context_length ({derived}). This may lead to incorrect model outputs "
            f"or CUDA errors. Note that the derived context_length may differ from "
            f"max_position_embeddings in the model's config. To allow overriding this maximum, "
            f"set the env var SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1")


def generation_defaults(model_dir: str) -> dict[str, Any]:
    """configs/model_config.py ``get_default_sampling_params``: the chat endpoint fills unset
    temperature/top_p/top_k/min_p/repetition_penalty from generation_config.json."""
    path = Path(model_dir) / "generation_config.json"
    if not path.exists():
        return {}
    config = json.loads(path.read_text())
    return {k: config[k] for k in ("repetition_penalty", "temperature", "top_k", "top_p",
                                   "min_p") if config.get(k) is not None}


def sampling_error(params: dict[str, Any]) -> str | None:
    """The checks of sampling/sampling_params.py ``verify`` that a client can trip."""
    for name in INT_SAMPLING_FIELDS:
        value = params.get(name)
        if isinstance(value, float):
            return f"{name} must be an integer, got float."
    top_p = params.get("top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        return f"top_p must be in (0, 1], got {float(top_p)}."
    temperature = params.get("temperature")
    if temperature is not None and (not math.isfinite(temperature) or temperature < 0):
        return f"temperature must be a non-negative finite number, got {temperature}."
    return None


def candidate_logprobs(k: int, position: int, temperature: float) -> list[float]:
    """The fake model's top-k: a peaked first position, flatter later ones. Logprobs are
    taken after temperature scaling (layers/sampler.py; temperature 0 means greedy, whose
    logprobs are the unscaled ones)."""
    scale = temperature if temperature > 0 else 1.0
    logits = [-(i * (2.0 if position == 0 else 0.3)) / scale for i in range(k)]
    top = max(logits)
    total = math.log(sum(math.exp(x - top) for x in logits)) + top
    return [x - total for x in logits]


def chat_messages_for_template(messages: list[dict[str, Any]], continue_final: bool
                               ) -> tuple[list[dict[str, Any]], str | None]:
    """entrypoints/openai/serving_chat.py ``_handle_last_assistant_message``: on the chat path
    a trailing assistant message becomes a user message, or with continue_final_message its
    text is cut off and appended after the generation prompt."""
    if messages and messages[-1].get("role") == "assistant" and isinstance(
            messages[-1].get("content"), str):
        if continue_final:
            return messages[:-1], messages[-1]["content"]
        return [*messages[:-1], {"role": "user", "content": messages[-1]["content"]}], None
    return messages, None
