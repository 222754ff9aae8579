"""What an engine child is given: an allow-listed environment, and its per-start key (pure).

lkn's own environment holds the upstream API keys of remote models (``upstream.api_key_env``),
systemd's sockets and whatever its operator exported. An engine needs none of that: it gets the
variables a runtime, a GPU stack or a model download reads (``ENGINE_ENV_PATTERNS``), plus the
model's own ``env`` table, and never a name in ``withheld`` (every upstream key of the config),
even where a pattern would let it through.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping

from lkn.config import ModelConfig

# Names or fnmatch patterns (case-sensitive) an engine child inherits from lkn.
ENGINE_ENV_PATTERNS = (
    # the process basics
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
    "XDG_*", "LD_LIBRARY_PATH",
    # Python servers (SGLang, vLLM, ...): their interpreter, packages and caches
    "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PYTHON*", "PIP_*",
    # accelerators and their runtimes
    "CUDA_*", "NVIDIA_*", "NCCL_*", "CUBLAS_*", "CUDNN_*", "ROCR_*", "ROCM_*", "HIP_*",
    "HSA_*", "GPU_*", "ZE_*", "ONEAPI_*", "SYCL_*", "VK_*", "VULKAN_*", "MESA_*",
    "OMP_*", "MKL_*", "OPENBLAS_*", "KMP_*",
    # the engines and their stacks
    "GGML_*", "LLAMA_*", "SGLANG_*", "SGL_*", "VLLM_*", "TORCH*", "PYTORCH_*", "TRITON_*",
    "FLASHINFER_*", "TOKENIZERS_*", "TRANSFORMERS_*", "SAFETENSORS_*",
    # model downloads and caches, and the network they go through
    "HF_*", "HUGGINGFACE_*", "MODELSCOPE_*", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "no_proxy",
)
# Never inherited: where a llama-server reads API keys from. lkn hands each start its own key;
# one from lkn's environment would let whoever knows it call the engine.
ENGINE_KEY_VARIABLES = frozenset({"LLAMA_API_KEY", "LLAMA_ARG_API_KEY_FILE"})


def engine_env(environ: Mapping[str, str], model_env: Iterable[tuple[str, str]], *,
               withheld: Iterable[str] = ()) -> dict[str, str]:
    """The environment of an engine child: the allow-listed part of ``environ`` without
    ``withheld`` and the engine-key variables, then the model's ``env`` table (the operator
    wrote it for this engine: it wins, even over the allow-list)."""
    refused = ENGINE_KEY_VARIABLES | frozenset(withheld)
    env = {name: value for name, value in environ.items()
           if name not in refused and inherited(name)}
    env.update(dict(model_env))
    return env


def inherited(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ENGINE_ENV_PATTERNS)


def upstream_key_names(models: Iterable[ModelConfig]) -> frozenset[str]:
    """Every environment variable the config reads an upstream key from, backends included."""
    names: set[str] = set()
    for model in models:
        for one in (model, *model.backends):
            if one.upstream is not None and one.upstream.api_key_env:
                names.add(one.upstream.api_key_env)
    return frozenset(names)
