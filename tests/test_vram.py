"""VRAM estimate of SmolLM2-135M-Instruct from its GGUF metadata, checked by hand."""
from __future__ import annotations

import os

from lkn.config import ModelConfig, VariantConfig
from lkn.engines.gguf import read_metadata
from lkn.engines.vram import estimate_mb, gguf_shape, variant_vram_mb
from tests.conftest import smollm2_path

MIB = 1024 * 1024


def test_gguf_metadata_of_smollm2() -> None:
    meta = read_metadata(smollm2_path())
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 30
    assert meta["llama.embedding_length"] == 576
    assert meta["llama.attention.head_count"] == 9
    assert meta["llama.attention.head_count_kv"] == 3
    assert meta["tokenizer.ggml.tokens"] is None  # big arrays are skipped unless asked for


def test_estimate_matches_hand_computation_at_two_contexts() -> None:
    path = smollm2_path()
    shape = gguf_shape(path)
    file_mib = os.path.getsize(path) / MIB
    # head_dim = 576 / 9 = 64; per token per layer: 3 kv heads x (64 K + 64 V) x 2 bytes (f16)
    kv_per_token = 30 * 3 * (64 + 64) * 2
    assert kv_per_token == 23040
    for ctx, kv_mib in ((512, 11.25), (2048, 45.0)):
        assert kv_per_token * ctx / MIB == kv_mib
        by_hand = round(file_mib + kv_mib) + 256
        assert estimate_mb(shape, ctx=ctx, gpu_layers=99, cache_type="f16",
                           overhead_mb=256) == by_hand
    # a q8_0 cache costs 34/32 bytes per element instead of 2
    assert estimate_mb(shape, ctx=2048, gpu_layers=99, cache_type="q8_0", overhead_mb=0) == \
        round(file_mib + 45.0 * (34 / 32) / 2)
    # CPU only (-ngl 0): nothing on the GPU but the allowance
    assert estimate_mb(shape, ctx=2048, gpu_layers=0, cache_type="f16", overhead_mb=256) == 256


def test_variant_vram_override_and_unreadable_file() -> None:
    v = VariantConfig(512, smollm2_path(), 99, vram_mb=1234)
    m = ModelConfig(name="m", engine="llamacpp", variants=(v,))
    assert variant_vram_mb(m, v, overhead_mb=256, budget_mb=8192) == 1234
    missing = VariantConfig(512, "/nonexistent.gguf", 99)
    assert variant_vram_mb(m, missing, overhead_mb=256, budget_mb=8192) == 8192
    sg = ModelConfig(name="s", engine="sglang", variants=(missing,), mem_fraction_static=0.5)
    assert variant_vram_mb(sg, missing, overhead_mb=256, budget_mb=8192) == 4096 + 256
