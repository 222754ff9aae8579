"""VRAM estimates that learn, against the real llama-server (SmolLM2-135M, CPU): the first start
reports its buffers (``-lv 4``), lkn uses the measurement and keeps it in the state directory;
the next lkn starts the engine at the default log level and uses the kept number."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import http, lua_str, smollm2_path, write_config

pytestmark = pytest.mark.engine


def engine_entry(base_url: str) -> dict[str, Any]:
    engines = http("GET", base_url + "/status").json()["engines"]
    assert len(engines) == 1, engines
    return engines[0]


def test_footprint_is_measured_used_kept_and_reused(tmp_path: Path,
                                                    gateway_factory: Any) -> None:
    state = tmp_path / "state"
    cfg = write_config(tmp_path, f"""
server = {{ stop_grace_s = 5, log_dir = {lua_str(str(tmp_path / 'logs'))},
           state_dir = {lua_str(str(state))}, engine_start_timeout_s = 120 }}
models = {{
  {{ name = "smol", model_file = {lua_str(smollm2_path())}, gpu_layers = 0, ctx_size = 512,
    args = {{ "--threads", 1 }} }},
}}
""")
    ask = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    first = gateway_factory(cfg)
    assert first.client().chat.completions.create(**ask).choices
    entry = engine_entry(first.base_url)
    # weights 92.10 + KV 11.25 (512 cells, f16) + output 0.19 + compute (~15 MiB)
    assert 92.1 + 11.25 + 0.19 < entry["vram_measured_mb"] < 92.1 + 11.25 + 0.19 + 64
    assert entry["vram_estimate_mb"] > entry["vram_measured_mb"]  # the 256 MiB guess
    assert entry["vram_mb"] == int(-(-entry["vram_measured_mb"] // 1))  # on the CPU: as measured
    kept = json.loads((state / "footprints.json").read_text())["footprints"]
    assert [(e["variant"], e["mib"]) for e in kept.values()] == \
        [("smol@512", entry["vram_measured_mb"])]
    first_log = Path(entry["log"]).read_text()
    assert " -lv 4 " in first_log and "CPU KV buffer size =    11.25 MiB" in first_log
    first.stop()

    second = gateway_factory(cfg)
    assert second.client().chat.completions.create(**ask).choices
    again = engine_entry(second.base_url)
    assert again["vram_measured_mb"] == entry["vram_measured_mb"]
    assert again["vram_mb"] == entry["vram_mb"]
    run_two = Path(again["log"]).read_text().split("--- lkn: start: ")[-1]
    assert " -lv 4 " not in run_two and "buffer size" not in run_two
