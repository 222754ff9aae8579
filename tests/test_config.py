from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lkn.__main__ import main
from lkn.config import Config, ConfigError, build_config, load_config
from lkn.errors import ModelNotFound
from tests.conftest import ROOT, write_config

MODEL = 'model_file = "/models/m.gguf"'


@pytest.mark.parametrize("models, message", [
    ('{ { name = "m", ctx_size = "big", ' + MODEL + ' } }',
     'models[1].ctx_size: must be a positive integer, got "big"'),
    ('{ { name = "a", ctx_size = 512, ' + MODEL + ' }, { name = "b", ctx_size = -1, ' + MODEL
     + ' } }', 'models[2].ctx_size: must be a positive integer, got -1'),
    ('{ { ctx_size = 512, ' + MODEL + ' } }', 'models[1].name: must be a non-empty string, got nil'),
    ('{ { name = "m", ctx_size = 512 } }',
     'models[1].model_file: must be a non-empty string, got nil'),
    ('{ { name = "m", engine = "vllm", ctx_size = 512, ' + MODEL + ' } }',
     'models[1].engine: must be one of llamacpp, sglang, command, remote, got "vllm"'),
    ('{ { name = "m", ctx_size = 512, ctx_sise = 1, ' + MODEL + ' } }',
     'models[1].ctx_sise: unknown key'),
    ('{ { name = "m", aliases = { "x", 3 }, ctx_size = 512, ' + MODEL + ' } }', None),
    ('{ { name = "m", ctx_size = 512, ' + MODEL + ' }, { name = "n", aliases = { "m" }, '
     'ctx_size = 512, ' + MODEL + ' } }',
     'models[2]: name or alias "m" is already used by models[1]'),
    ('{ { name = "m", ' + MODEL + ', variants = { { ctx_size = 512 }, { ctx_size = 0 } } } }',
     'models[1].variants[2].ctx_size: must be a positive integer, got 0'),
    ('{ { name = "m", ' + MODEL + ', variants = { { ctx_size = 512 }, { ctx_size = 512 } } } }',
     'models[1].variants: two variants share ctx_size 512'),
    ('{ { name = "m", ' + MODEL + ', variants = { { ctx_size = 512, cache_type = "q3" } } } }',
     'models[1].variants[1].cache_type: must be one of f32, f16, bf16, q8_0, q4_0, q4_1, '
     'iq4_nl, q5_0, q5_1, got "q3"'),
    ('{ { name = "m", ctx_size = 512, ' + MODEL + ', homeostasis = { threshold = 1.5 } } }',
     'models[1].homeostasis.threshold: must be a number between 0.0 and 1.0, got 1.5'),
    ('{ { name = "m", ctx_size = 512, ' + MODEL + ', homeostasis = { escalate_to = "big" } } }',
     'models[1].homeostasis.escalate_to: no such model, got "big"'),
    ('{ { name = "m", ctx_size = 512, ' + MODEL + ', embeddings = "yes" } }',
     'models[1].embeddings: must be true or false, got "yes"'),
    ('{}', 'models: must be a non-empty list of model tables, got {}'),
])
def test_model_validation_names_key_path_and_value(tmp_path: Path, models: str,
                                                   message: str | None) -> None:
    lua = f"server = {{}}\nmodels = {models}\n"
    if message is None:
        cfg = write_config(tmp_path, lua)
        assert cfg.models[0].aliases == ("x", "3")
        return
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, lua)
    assert str(info.value) == message


@pytest.mark.parametrize("server, message", [
    ('listen = { "127.0.0.1:99999" }',
     'server.listen[1]: must be HOST:PORT with a port in 1..65535, got "127.0.0.1:99999"'),
    ('listen = { "127.0.0.1:8080", "::1:8080" }',
     'server.listen[2]: an IPv6 address must be written in brackets, like [::1]:8080, '
     'got "::1:8080"'),
    ('engine_port_range = { 40000, 30000 }',
     'server.engine_port_range: must satisfy FIRST <= LAST <= 65535, got {40000, 30000}'),
    ('stop_grace_s = "soon"', 'server.stop_grace_s: must be a number >= 0.0, got "soon"'),
    ("swap_cost_s = -1", "server.swap_cost_s: must be a number >= 0.0, got -1"),
    ('vram_budget_mb = 0', 'server.vram_budget_mb: must be a positive integer, got 0'),
    ('homeostasis = { mode = "always" }',
     'server.homeostasis.mode: must be one of homeostatic, passthrough, got "always"'),
    ('api_keys = "secret"', 'server.api_keys: must be a list of strings, got a str '
                            '(value not shown)'),
    ('api_keys = { "ok", 42 }', 'server.api_keys[2]: must be a non-empty string (value not '
                                'shown)'),
    ('listne = {}', 'server.listne: unknown key'),
    ('preload = { "ghost" }', 'server.preload[1]: no such model, got "ghost"'),
    ('cors_origins = { "https://app.example/x" }',
     'server.cors_origins[1]: must be "*" or an origin like "https://app.example:8443" '
     '(no path), got "https://app.example/x"'),
    ('admin_keys = "k"', 'server.admin_keys: must be a list of strings, got a str (value not '
                         'shown)'),
])
def test_server_validation_names_key_path_and_value(tmp_path: Path, server: str,
                                                    message: str) -> None:
    lua = f'server = {{ {server} }}\nmodels = {{ {{ name = "m", ctx_size = 512, {MODEL} }} }}\n'
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, lua)
    assert str(info.value) == message


def test_good_config_becomes_frozen_dataclasses(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, """
server = { listen = { "127.0.0.1:8080", "[::1]:8081" }, api_keys = { "k1" }, stop_grace_s = 2,
           homeostasis = { mode = "homeostatic", threshold = 0.4 } }
models = {
  { name = "m", aliases = { "alias" }, model_file = "/m/a.gguf", args = { "--threads", 2 },
    env = { CUDA_VISIBLE_DEVICES = "0" }, homeostasis = { intervention = "none" },
    variants = { { ctx_size = 2048, cache_type = "q8_0" }, { ctx_size = 512, vram_mb = 900 } } },
}
""")
    assert cfg.server.listen == ("127.0.0.1:8080", "[::1]:8081")
    assert cfg.server.api_keys == ("k1",)
    assert cfg.server.stop_grace_s == 2.0
    m = cfg.resolve("alias")
    assert m is not None and m.name == "m"
    assert [v.ctx_size for v in m.variants] == [512, 2048]  # sorted by context
    assert m.variants[0].vram_mb == 900 and m.variants[1].cache_type == "q8_0"
    assert m.variants[0].args == ("--threads", "2")
    assert m.env == (("CUDA_VISIBLE_DEVICES", "0"),)
    # model-level homeostasis merges over the server's
    assert (m.homeostasis.mode, m.homeostasis.threshold, m.homeostasis.intervention) == (
        "homeostatic", 0.4, "none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.listen = ()  # type: ignore[misc]


def test_lua_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, "server = {\nmodels = ", name="broken.lua")
    assert "broken.lua:" in str(info.value) and "Lua error" in str(info.value)


def test_lua_logic_works_in_config(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, """
local base = "/models/"
models = {}
for _, ctx in ipairs({ 512, 1024 }) do
  table.insert(models, { name = "m" .. ctx, model_file = base .. "m.gguf", ctx_size = ctx })
end
""")
    assert [m.name for m in cfg.models] == ["m512", "m1024"]


def test_example_config_loads_with_two_models_over_smollm2() -> None:
    cfg = load_config(str(ROOT / "example.cfg.lua"))
    assert len(cfg.models) == 2
    files = {v.model_file for m in cfg.models for v in m.variants}
    assert len(files) == 1 and next(iter(files)).endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert [v.ctx_size for v in cfg.resolve("smollm2").variants] == [512, 2048]
    load_config(str(ROOT / "config.cfg.lua"))


def test_check_config_cli_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "example.cfg.lua")]) == 0
    assert "config OK" in capsys.readouterr().out
    bad = tmp_path / "bad.lua"
    bad.write_text('models = { { name = "m", ctx_size = "big", model_file = "/x" } }')
    assert main(["check-config", str(bad)]) == 1
    assert 'models[1].ctx_size: must be a positive integer, got "big"' in capsys.readouterr().err


@pytest.mark.parametrize("fields, expected", [
    ('', ("engine", None)),
    ('reasoning = "lkn"', ("lkn", None)),
    ('engine = "sglang"', ("lkn", None)),
    ('engine = "sglang", reasoning_parser = "qwen3"', ("engine", "qwen3")),
    ('engine = "sglang", reasoning_parser = "gpt-oss", reasoning = "none"', ("none", "gpt-oss")),
])
def test_reasoning_mode_defaults_to_whoever_can_split(tmp_path: Path, fields: str,
                                                      expected: tuple[str, str | None]) -> None:
    cfg = write_config(tmp_path, f'models = {{ {{ name = "m", ctx_size = 512, {MODEL}, '
                                 f'{fields} }} }}\n')
    assert (cfg.models[0].reasoning, cfg.models[0].reasoning_parser) == expected


@pytest.mark.parametrize("fields, message", [
    ('reasoning = "model"', 'models[1].reasoning: must be one of engine, lkn, none, got "model"'),
    ('reasoning_parser = "qwen3"', 'models[1].reasoning_parser: only SGLang takes a reasoning '
     'parser (llama-server picks its own from the chat template)'),
    ('engine = "sglang", reasoning = "engine"', 'models[1].reasoning: SGLang separates thinking '
     'only with a reasoning_parser (e.g. "qwen3", "deepseek-r1", "gpt-oss"); set one, or use '
     'reasoning = "lkn"'),
])
def test_reasoning_config_errors(tmp_path: Path, fields: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, f'models = {{ {{ name = "m", ctx_size = 512, {MODEL}, '
                               f'{fields} }} }}\n')
    assert str(info.value) == message


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    lua = (f'server = {{ vram_budget_mb = 0, typo = 1 }}\n'
           f'models = {{ {{ name = "m", ctx_size = 512, parallel = 0, {MODEL} }},\n'
           f'            {{ name = "m", ctx_size = "x", {MODEL} }},\n'
           f'            {{ name = "n", ctx_size = 512, pinned = "yes", {MODEL} }} }}\n')
    with pytest.raises(ConfigError) as info:
        write_config(tmp_path, lua)
    assert info.value.errors == [
        "server.vram_budget_mb: must be a positive integer, got 0",
        "server.typo: unknown key",
        "models[1].parallel: must be a positive integer, got 0",
        'models[2].ctx_size: must be a positive integer, got "x"',
        'models[3].pinned: must be true or false, got "yes"']
    assert str(info.value).startswith("5 errors: server.vram_budget_mb")


def test_operations_settings(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"""
server = {{ admin_keys = {{ "a1" }}, preload = {{ "m" }}, cors_origins = {{ "*" }} }}
models = {{ {{ name = "m", ctx_size = 512, pinned = true, loading_events = true, {MODEL} }} }}
""")
    assert (cfg.server.admin_keys, cfg.server.preload, cfg.server.cors_origins) == (
        ("a1",), ("m",), ("*",))
    assert cfg.models[0].pinned and cfg.models[0].loading_events


def _models(*specs: dict[str, object]) -> Config:
    return build_config({"models": [{"binary": "/bin/x", "model_file": "/x.gguf", **s}
                                    for s in specs]})


def test_a_request_meets_the_config_in_force_in_one_place() -> None:
    """Config.in_force: a request's model from an older generation, against this one."""
    old = _models({"name": "a", "ctx_size": 512}, {"name": "b", "ctx_size": 512})
    a = old.resolve("a")
    assert a is not None and old.in_force(a) is a                      # unchanged: itself
    same = _models({"name": "a", "ctx_size": 512})
    assert same.in_force(a) is same.resolve("a")                        # equal, new object
    renamed = _models({"name": "a", "ctx_size": 640})
    now = renamed.in_force(a)
    assert [v.ctx_size for v in now.variants] == [640]                  # re-planned on the new
    with pytest.raises(ModelNotFound) as exc:
        _models({"name": "b", "ctx_size": 512}).in_force(a)             # removed: a 404
    assert exc.value.status == 404 and "removed" in exc.value.message
