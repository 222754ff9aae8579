"""Named keys against the real llama-server (SmolLM2-135M on CPU): what a key is charged, and
what the activity log sums, is exactly what the engine reported in each answer's usage."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Gateway, http, lua_str, smollm2_path, write_config

pytestmark = pytest.mark.engine


def test_usage_per_key_sums_the_engines_own_counts(tmp_path: Path, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(write_config(tmp_path, f"""
server = {{ stop_grace_s = 5, engine_start_timeout_s = 120, state_dir = {lua_str(str(tmp_path))},
  keys = {{ {{ id = "team", key = "sk-team", tokens_per_day = 1000000 }},
            {{ id = "job", key = "sk-job", priority = "batch" }} }} }}
models = {{
  {{ name = "smol", model_file = {lua_str(smollm2_path())}, gpu_layers = 0, ctx_size = 1024,
    default_max_tokens = 16, args = {{ "--threads", 1 }} }},
}}
"""))
    reported: dict[str, int] = {"team": 0, "job": 0}
    for key, who in (("sk-team", "team"), ("sk-job", "job"), ("sk-team", "team")):
        with gw.client(api_key=key) as client:
            answer = client.chat.completions.create(
                model="smol", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
            reported[who] += answer.usage.prompt_tokens + answer.usage.completion_tokens
            stream = client.chat.completions.create(
                model="smol", max_tokens=8, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "Name a color."}])
            usage = [c.usage for c in stream if c.usage is not None][-1]
            reported[who] += usage.prompt_tokens + usage.completion_tokens
    deadline = time.monotonic() + 30  # the activity log writes in batches, later under load
    sums: dict[str, int] = {}
    while time.monotonic() < deadline:
        rows = http("GET", gw.base_url + "/admin/usage?group_by=key").json()["data"]
        sums = {r["key"]: r["total_tokens"] for r in rows}
        if sum(r["requests"] for r in rows) == 6:
            break
        time.sleep(0.1)
    assert sums == reported
    keys = {k["id"]: k for k in http("GET", gw.base_url + "/admin/keys").json()["data"]}
    assert keys["team"]["quota"]["tokens_per_day"]["used"] == reported["team"]
