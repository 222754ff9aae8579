"""Template and BOS/EOS read from the files' headers equal what the tokenizer library says, and
an idle lkn imports neither llama-cpp-python nor numpy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lkn.engines.chat_template import read_template_info
from lkn.engines.gguf import GGUFError, read_array_items
from lkn.engines.tokens import local_tokenizer
from tests.conftest import ROOT, smollm2_path


def test_gguf_template_and_special_tokens_match_llama_cpp() -> None:
    path = smollm2_path()
    info, tok = read_template_info(path, "gguf"), local_tokenizer(path, "gguf")
    assert (info.template, info.bos, info.eos) == (tok.template, tok.bos, tok.eos)
    assert info.bos == "<|im_start|>" and info.eos == "<|im_end|>"


def test_array_items_reads_only_what_it_is_asked_for() -> None:
    assert read_array_items(smollm2_path(), "tokenizer.ggml.tokens", {0, 2}) == {
        0: "<|endoftext|>", 2: "<|im_end|>"}
    with pytest.raises(GGUFError):
        read_array_items(smollm2_path(), "no.such.key", {0})


def test_hf_template_comes_from_tokenizer_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{{ messages }}", "bos_token": {"content": "<s>"},
         "eos_token": "</s>"}))
    info = read_template_info(str(tmp_path), "hf")
    assert (info.template, info.bos, info.eos) == ("{{ messages }}", "<s>", "</s>")


def test_an_idle_gateway_imports_neither_llama_cpp_nor_numpy(tmp_path: Path) -> None:
    code = ("import sys, lkn.__main__, lkn.gateway.server, lkn.engines.bound as b\n"
            "from lkn.config import ModelConfig, VariantConfig\n"
            "m = ModelConfig(name='m', engine='llamacpp',\n"
            f"                variants=(VariantConfig(512, {smollm2_path()!r}, 0),))\n"
            "b.warm_shapes([m])\n"
            "assert b.template_shape(*b.local_source(m)) is not None\n"
            "print(sorted(n for n in ('numpy', 'llama_cpp') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
