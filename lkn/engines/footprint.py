"""An engine's memory footprint as llama-server reports it at start (pure).

At ``-lv 4`` llama-server prints each buffer it allocates, per device::

    load_tensors:   CPU_Mapped model buffer size =    92.10 MiB
    llama_context:        CPU  output buffer size =     0.19 MiB
    llama_kv_cache:        CPU KV buffer size =    22.50 MiB
    sched_reserve:        CPU compute buffer size =    15.64 MiB

(on a GPU ``CUDA0 model buffer size``, ``CUDA_Host compute buffer size``, ...). The footprint
that counts against the VRAM budget is the sum over the accelerator devices; host-side buffers
(``CPU``, ``CPU_Mapped``, ``*_Host`` pinned memory) only count for an engine that runs on the CPU
alone, whose "device" is host memory. A model with several KV caches (sliding-window layers)
prints one KV line per cache: they add up; a compute buffer reserved twice is one buffer: the
largest counts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

REPORT_MARKER = "buffer size"
_LINE = re.compile(r"(?P<device>[A-Za-z][\w.-]*)\s+(?:(?P<kind>model|KV|compute|output|RS)\s+)?"
                   r"buffer size\s*=\s*(?P<mib>\d+(?:\.\d+)?) MiB")
HOST_DEVICES = frozenset({"CPU", "CPU_Mapped", "CPU_REPACK", "CPU_AARCH64"})


@dataclass(frozen=True)
class BufferLine:
    device: str
    kind: str  # model | KV | compute | output | RS
    mib: float


@dataclass(frozen=True)
class Footprint:
    buffers: dict[str, dict[str, float]] = field(default_factory=dict)  # device -> kind -> MiB

    @property
    def on_accelerator(self) -> bool:
        return any(not is_host(d) for d in self.buffers)

    @property
    def mib(self) -> float:
        """What the engine holds on its device(s): accelerators only, if it uses one."""
        gpu = self.on_accelerator
        return round(sum(sum(kinds.values()) for device, kinds in self.buffers.items()
                         if not gpu or not is_host(device)), 2)


def is_host(device: str) -> bool:
    return device in HOST_DEVICES or device.endswith("_Host")


def parse_line(line: str) -> BufferLine | None:
    if REPORT_MARKER not in line:
        return None
    found = _LINE.search(line)
    if found is None:
        return None
    # Older builds say "CPU buffer size" for the weights (no kind).
    return BufferLine(found["device"], found["kind"] or "model", float(found["mib"]))


def parse_footprint(lines: Iterable[str]) -> Footprint | None:
    """The footprint the lines of one start report, or None without a model and a KV buffer
    (an incomplete report is no measurement)."""
    buffers: dict[str, dict[str, float]] = {}
    for line in lines:
        b = parse_line(line)
        if b is None:
            continue
        kinds = buffers.setdefault(b.device, {})
        if b.kind == "compute":
            kinds["compute"] = max(kinds.get("compute", 0.0), b.mib)
        else:
            kinds[b.kind] = round(kinds.get(b.kind, 0.0) + b.mib, 2)
    kinds_seen = {k for kinds in buffers.values() for k in kinds}
    if not {"model", "KV"} <= kinds_seen:
        return None
    return Footprint(buffers)
