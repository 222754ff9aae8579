"""Shared pieces of the SGLang tests: the tiny model directory, the fake SGLang as an
interpreter, a gateway config with an SGLang and a llama model, and a bare EngineProcess."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from lkn.config import ModelConfig, VariantConfig
from lkn.engines.process import EngineProcess, PortPool
from lkn.engines.sglang import SGLangEngine
from tests.conftest import FAKE_SGLANG, Gateway, free_port, lua_str, make_wrapper, write_config
from tests.fakes.hf_model import make_hf_model_dir

MSG = [{"role": "user", "content": "what is the capital of france ?"}]


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    return make_hf_model_dir(tmp_path / "tiny-hf")


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    return make_wrapper(tmp_path, FAKE_SGLANG, "fake-python")


def dead(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def sg_config(tmp_path: Path, hf_dir: Path, fake_python: str, fake_binary: str, *,
              sg_args: str = "", sg_extra: str = "", server: str = "") -> Any:
    # an ephemeral engine port range: other test runs on this box use the default one
    port = free_port()
    return write_config(tmp_path, f"""
server = {{ max_loaded_engines = 1, stop_grace_s = 2, log_dir = {lua_str(str(tmp_path / 'logs'))},
           engine_start_timeout_s = 30, engine_port_range = {{ {port}, {port + 20} }}, {server} }}
models = {{
  {{ name = "sg", engine = "sglang", python = {lua_str(fake_python)},
    model_file = {lua_str(str(hf_dir))}, ctx_size = 4096, default_max_tokens = 16,
    args = {{ "--fake-load-s", 0.3, "--fake-warmup-s", 0.3, {sg_args} }}, {sg_extra} }},
  {{ name = "llama", binary = {lua_str(fake_binary)}, model_file = "/nonexistent.gguf",
    ctx_size = 2048 }},
}}
""")


@pytest.fixture
def gw(tmp_path: Path, hf_dir: Path, fake_python: str, fake_binary: str, gateway_factory: Any,
       request: Any) -> Gateway:
    return gateway_factory(sg_config(tmp_path, hf_dir, fake_python, fake_binary,
                                     **getattr(request, "param", {})))


async def sg_process(hf_dir: Path, fake_python: str, session: aiohttp.ClientSession,
                     *args: str, health_timeout_s: float = 20, ctx: int = 4096,
                     sleep_when_idle_s: float | None = None,
                     env: tuple[tuple[str, str], ...] = ()) -> EngineProcess:
    model = ModelConfig(name="sg", engine="sglang", python=fake_python,
                        health_timeout_s=health_timeout_s, sleep_when_idle_s=sleep_when_idle_s,
                        env=env, variants=(VariantConfig(ctx, str(hf_dir), 999, args=args),))
    port = free_port()
    return EngineProcess(SGLangEngine(model, model.variants[0]), ports=PortPool(port, port + 20),
                         session=session, start_timeout_s=30, stop_grace_s=1)
