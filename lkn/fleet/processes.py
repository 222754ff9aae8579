"""What the manager builds an engine from: its client (how to talk to it) and its process.

A model with an ``upstream`` is a server elsewhere: a ``RemoteProcess`` only watches it. Every
other engine is a child lkn spawns and owns through an ``EngineProcess``. Tests replace either
factory with fakes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import aiohttp

from lkn.config import Config, ModelConfig, VariantConfig
from lkn.engines.base import EngineClient
from lkn.engines.child_env import upstream_key_names
from lkn.engines.handle import StateCallback
from lkn.engines.process import EngineProcess, PortPool, Spawn, State
from lkn.engines.registry import EngineRegistry
from lkn.engines.remote import RemoteEngine, RemoteProcess
from lkn.fleet.failures import FailurePolicy
from lkn.fleet.records import Process

# Told of every state change of the process: (the process, its previous state).
OnChange = StateCallback
ClientFactory = Callable[[ModelConfig, VariantConfig], EngineClient]
ProcessFactory = Callable[[EngineClient, OnChange], Process]


def default_client_factory(model: ModelConfig, variant: VariantConfig) -> EngineClient:
    if model.upstream is not None:
        return RemoteEngine(model, variant)
    if model.engine == "command":
        from lkn.engines.command import CommandEngine
        return CommandEngine(model, variant)
    if model.engine == "sglang":
        from lkn.engines.sglang import SGLangEngine
        return SGLangEngine(model, variant)
    from lkn.engines.llamacpp import LlamaCppEngine
    return LlamaCppEngine(model, variant)


def failure_policy(cfg: Config) -> FailurePolicy:
    s = cfg.server
    return FailurePolicy(base_s=s.restart_backoff_s, cap_s=s.restart_backoff_max_s,
                         max_failures=s.max_start_failures,
                         failed_retry_s=s.failed_start_cooldown_s)


@dataclass
class ProcessMaker:
    """The default ProcessFactory. ``config`` returns the config in force: a process built
    after a reload reads the new server settings."""
    config: Callable[[], Config]
    session: aiohttp.ClientSession
    ports: PortPool
    clock: Callable[[], float] = time.monotonic
    spawn: Spawn | None = None
    registry: EngineRegistry | None = None

    def __call__(self, client: EngineClient, on_change: OnChange) -> Process:
        if isinstance(client, RemoteEngine):  # nothing to spawn: a server elsewhere
            return RemoteProcess(client, session=self.session, on_change=on_change,
                                 clock=self.clock)
        cfg = self.config()
        s = cfg.server
        extra = {} if self.spawn is None else {"spawn": self.spawn}
        return EngineProcess(client, ports=self.ports, session=self.session,
                             start_timeout_s=s.engine_start_timeout_s,
                             stop_grace_s=s.stop_grace_s, log_dir=s.log_dir,
                             on_change=on_change, registry=self.registry, clock=self.clock,
                             log_max_bytes=int(s.log_max_mb * 1024 * 1024),
                             log_keep=s.log_keep,
                             # read at each spawn: a reload may add upstream keys
                             withheld_env=lambda: upstream_key_names(self.config().models),
                             **extra)
