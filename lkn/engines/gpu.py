"""GPU memory readings, to wait after a stop until the memory is really free again.

A process that has exited can still hold device memory for a moment while the driver tears its
context down; starting the next engine at once can then fail to allocate (llama-swap #97).
Readings come from ``nvidia-smi`` when it is present; without it (a CPU box) every wait returns
at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time

log = logging.getLogger("lkn.gpu")
SMI_TIMEOUT_S = 5.0  # a reading takes ~50 ms; a hung driver call is killed, not left running


class GpuMonitor:
    def __init__(self, *, poll_s: float = 0.25, timeout_s: float = 15.0,
                 smi: str | None = None, smi_timeout_s: float = SMI_TIMEOUT_S) -> None:
        self.smi = smi if smi is not None else shutil.which("nvidia-smi")
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.smi_timeout_s = smi_timeout_s

    @property
    def present(self) -> bool:
        return bool(self.smi)

    async def used_mb(self) -> int | None:
        if not self.smi:
            return None
        try:
            proc = await asyncio.create_subprocess_exec(
                self.smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL)
        except OSError:
            return None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.smi_timeout_s)
            return sum(int(x) for x in out.decode().split() if x.strip().isdigit())
        except (OSError, asyncio.TimeoutError, ValueError):
            return None
        finally:
            if proc.returncode is None:  # timed out or cancelled: kill it, and reap it
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())

    async def wait_released(self, before_mb: int | None, freed_mb: int) -> None:
        """Wait until usage dropped by most of ``freed_mb`` from ``before_mb`` (or a timeout)."""
        if before_mb is None or freed_mb <= 0:
            return
        target = before_mb - 0.8 * freed_mb
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            now = await self.used_mb()
            if now is None or now <= target:
                return
            await asyncio.sleep(self.poll_s)
        log.warning("GPU memory still %s MiB used %.0fs after a stop (expected <= %.0f)",
                    await self.used_mb(), self.timeout_s, target)
