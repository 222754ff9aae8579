"""VRAM estimate of a model variant, from its files, before it is loaded.

estimate = offloaded weights + KV cache for the context + a compute allowance

- weights: the GGUF file size times the offloaded share of its ``n_layer + 1`` blocks (llama.cpp
  counts the output layer as one more block for ``-ngl``);
- KV cache: ``layers_on_gpu x ctx x n_head_kv x (head_dim_k x bytes(type_k) + head_dim_v x
  bytes(type_v))``;
- compute allowance: ``server.vram_overhead_mb``.

Once a llama-server variant has started, the manager plans with the footprint the engine itself
reported (``footprint``, kept in the state directory) instead of this estimate. An
explicit ``vram_mb`` on the variant wins over both. An SGLang model with
``mem_fraction_static`` takes that share of the budget (SGLang allocates it up front); without it,
the Hugging Face directory is estimated from its safetensors sizes and ``config.json`` the same
way, in bf16.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass

from lkn.config import ModelConfig, VariantConfig
from lkn.engines.gguf import GGUFError, read_metadata

log = logging.getLogger("lkn.engines.vram")
MIB = 1024 * 1024

# bytes per element of each KV cache type (block-quantized types: block bytes / 32 elements)
CACHE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
               "q4_1": 20 / 32, "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    weight_bytes: int


@functools.lru_cache(maxsize=64)
def gguf_shape(path: str) -> ModelShape:
    meta = read_metadata(path)
    arch = meta.get("general.architecture")
    if not arch:
        raise GGUFError(f"{path}: no general.architecture")

    def get(name: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise GGUFError(f"{path}: missing {arch}.{name}")
        return int(value)

    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    return ModelShape(
        n_layer=get("block_count"),
        n_head_kv=get("attention.head_count_kv", n_head),
        head_dim_k=get("attention.key_length", n_embd // n_head),
        head_dim_v=get("attention.value_length", n_embd // n_head),
        weight_bytes=os.path.getsize(path),
    )


@functools.lru_cache(maxsize=64)
def hf_shape(model_dir: str) -> ModelShape:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    n_head = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // n_head)
    weights = sum(os.path.getsize(os.path.join(model_dir, n)) for n in os.listdir(model_dir)
                  if n.endswith((".safetensors", ".bin")))
    return ModelShape(n_layer=int(cfg["num_hidden_layers"]),
                      n_head_kv=int(cfg.get("num_key_value_heads", n_head)),
                      head_dim_k=head_dim, head_dim_v=head_dim, weight_bytes=weights)


def kv_cache_bytes(shape: ModelShape, ctx: int, layers: int, cache_type: str) -> float:
    per_token = shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * CACHE_BYTES[cache_type]
    return layers * ctx * per_token


def estimate_mb(shape: ModelShape, *, ctx: int, gpu_layers: int, cache_type: str,
                overhead_mb: int) -> int:
    blocks = shape.n_layer + 1
    offloaded = min(gpu_layers, blocks)
    weights = shape.weight_bytes * offloaded / blocks
    kv = kv_cache_bytes(shape, ctx, min(gpu_layers, shape.n_layer), cache_type)
    return int(round((weights + kv) / MIB)) + overhead_mb


def variant_vram_mb(model: ModelConfig, variant: VariantConfig, *, overhead_mb: int,
                    budget_mb: int) -> int:
    """The variant's VRAM need; when its files cannot be read, the whole budget (run alone)."""
    if variant.vram_mb is not None:
        return variant.vram_mb
    ctx = variant.ctx_size * model.parallel
    if model.engine == "sglang" and model.mem_fraction_static is not None:
        # SGLang claims this share of the card for weights + KV pool whatever the model needs.
        return int(round(model.mem_fraction_static * budget_mb)) + overhead_mb
    try:
        if model.engine == "sglang":
            shape = hf_shape(variant.model_file)
            return estimate_mb(shape, ctx=ctx, gpu_layers=shape.n_layer + 1,
                               cache_type="bf16", overhead_mb=overhead_mb)
        return estimate_mb(gguf_shape(variant.model_file), ctx=ctx,
                           gpu_layers=variant.gpu_layers, cache_type=variant.cache_type,
                           overhead_mb=overhead_mb)
    except (OSError, GGUFError, KeyError, ValueError) as exc:
        log.warning("cannot estimate VRAM of %s@%d (%s); assuming it needs the whole budget",
                    model.name, variant.ctx_size, exc)
        return budget_mb
