"""A tiny Hugging Face model directory for the fake SGLang: tokenizer files and config.json.

The tokenizer is a real ``tokenizers`` WordLevel model (whitespace pre-tokenizer), so counting
with it is real tokenization, only with a toy vocabulary.
"""
from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

WORDS = ("the a is of capital france paris what hello there yes no tell me story about blue "
         "box item small summarize this list answer briefly think carefully verify your "
         "assumptions and reason step-by-step before answering . , ? ! user system assistant")


def make_hf_model_dir(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS.split())))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.add_special_tokens(specials)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": CHAT_TEMPLATE, "bos_token": None, "eos_token": "<|im_end|>"}))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 4, "max_position_embeddings": 4096}))
    (path / "model.safetensors").write_bytes(b"\0" * 4096)
    return path
