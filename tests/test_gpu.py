"""Waiting for GPU memory to be released after a stop, with a scripted nvidia-smi."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from lkn.engines.gpu import GpuMonitor


def fake_smi(tmp_path: Path, readings: list[int]) -> str:
    """An nvidia-smi that prints the next reading each time it is run (the last one repeats)."""
    state = tmp_path / "readings"
    state.write_text("\n".join(str(r) for r in readings))
    script = tmp_path / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
f={state}
head -n 1 "$f"
if [ "$(wc -l < "$f")" -gt 0 ]; then sed -i 1d "$f"; fi
""")
    script.chmod(0o755)
    return str(script)


def test_waits_until_most_of_the_memory_is_back(tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, [7000, 6900, 6500, 3100, 3000])
    gpu = GpuMonitor(smi=smi, poll_s=0.01, timeout_s=5)

    async def run() -> int | None:
        before = await gpu.used_mb()
        await gpu.wait_released(before, 4000)
        return await gpu.used_mb()
    # usage must fall to <= 7000 - 0.8 * 4000 = 3800: the wait ends on the 3100 reading
    assert asyncio.run(run()) == 3000


def test_gives_up_after_the_timeout(tmp_path: Path) -> None:
    gpu = GpuMonitor(smi=fake_smi(tmp_path, [7000]), poll_s=0.01, timeout_s=0.2)
    t0 = time.monotonic()
    asyncio.run(gpu.wait_released(7000, 4000))
    assert time.monotonic() - t0 >= 0.2


def test_without_a_gpu_nothing_waits() -> None:
    gpu = GpuMonitor(smi="")
    assert not gpu.present
    assert asyncio.run(gpu.used_mb()) is None
    asyncio.run(gpu.wait_released(None, 4000))
