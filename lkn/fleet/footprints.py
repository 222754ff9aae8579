"""How much VRAM an engine needs: estimated from its files until it measured itself.

The scheduler plans with one number per engine. It is the estimate from the model's files
(``lkn.engines.vram``) until the engine reported its own buffers at a start; that measurement is
kept in the ``FootprintStore`` (the state directory, so a later lkn starts with it) and replaces
the estimate. A ``vram_mb`` in the config overrides both, and then nothing is measured.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from lkn.config import ModelConfig, ServerConfig, VariantConfig
from lkn.engines.base import EngineClient
from lkn.engines.footprint import Footprint
from lkn.engines.footprint_store import FootprintStore, footprint_key
from lkn.engines.vram import variant_vram_mb
from lkn.fleet.records import EngineRecord, engine_identity

log = logging.getLogger("lkn.manager")


@dataclass(frozen=True)
class VramNeed:
    need_mb: int                # what the scheduler plans with
    estimate_mb: int            # from the model's files
    measured_mib: float | None  # the engine's own report, if one is known

    def apply(self, record: EngineRecord) -> None:
        record.vram_mb = self.need_mb
        record.vram_estimate_mb, record.vram_measured_mb = self.estimate_mb, self.measured_mib


def need_mb(footprint: Footprint, overhead_mb: int) -> int:
    # On a GPU the engine's buffers leave out the driver's own context and kernels (~600 MiB
    # per process on an H200, bench/gpu_vram): vram_overhead_mb stays for that part.
    extra = overhead_mb if footprint.on_accelerator else 0
    return math.ceil(footprint.mib) + extra


def _key(client: EngineClient) -> str:
    return footprint_key(engine_identity(client), client.variant.model_file)


class Footprints:
    def __init__(self, directory: str | None) -> None:
        # Footprints measured at earlier starts, also by an earlier lkn (its state directory).
        self._store = FootprintStore(directory)

    def need(self, server: ServerConfig, model: ModelConfig, variant: VariantConfig,
             client: EngineClient) -> VramNeed:
        """The engine's VRAM need. The client is told to measure at its next start while
        neither a measurement nor an explicit ``vram_mb`` is known."""
        estimate = variant_vram_mb(model, variant, overhead_mb=server.vram_overhead_mb,
                                   budget_mb=server.vram_budget_mb)
        measured = (self._store.get(_key(client))
                    if variant.vram_mb is None and client.report_markers else None)
        client.learn_footprint = bool(client.report_markers) and variant.vram_mb is None \
            and measured is None
        if measured is None:
            return VramNeed(estimate, estimate, None)
        return VramNeed(need_mb(measured, server.vram_overhead_mb), estimate, measured.mib)

    def learn(self, record: EngineRecord, report: list[str], overhead_mb: int) -> None:
        """The engine just became ready after a start that reported its buffers (``report``):
        keep what it measured and plan with it from now on."""
        client = record.process.client
        client.learn_footprint = False  # its next starts run at the default log level
        footprint = client.footprint(report)
        if footprint is None:
            log.warning("engine %s: no memory report at start; keeping the estimate (%d MiB)",
                        record.key, record.vram_mb)
            return
        v = record.variant
        self._store.put(_key(client), footprint, variant=record.key,
                        model_file=v.model_file, ctx_size=v.ctx_size,
                        parallel=record.model.parallel, cache_type=v.cache_type)
        record.vram_mb = need_mb(footprint, overhead_mb)
        record.vram_measured_mb = footprint.mib
        log.info("engine %s: measured footprint %.2f MiB (estimate %s MiB); using %d MiB",
                 record.key, footprint.mib, record.vram_estimate_mb, record.vram_mb)
