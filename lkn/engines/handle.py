"""EngineHandle: what the fleet, the request layer and the gateway hold of one engine.

Two classes satisfy it: ``EngineProcess`` (a child lkn spawns and supervises) and
``RemoteProcess`` (a server elsewhere: nothing to spawn, no VRAM). Callers hold this Protocol,
never one of the two, so a remote model is leased, started, stopped and described like any
engine. The members are exactly those the layers above use; a new use adds a member here first.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from lkn.engines.base import EngineClient
from lkn.engines.logs import LogRing
from lkn.engines.states import State


class EngineHandle(Protocol):
    # Read at the next start or stop; the manager sets them when a reload changes the server's.
    start_timeout_s: float
    stop_grace_s: float

    @property
    def key(self) -> str:
        """``model@ctx``: the variant this handle runs."""

    @property
    def client(self) -> EngineClient:
        """How to speak to the engine."""

    @property
    def state(self) -> State: ...

    @property
    def base_url(self) -> str:
        """Where requests go (the engine's port, or the remote server's URL)."""

    @property
    def last_error(self) -> str:
        """Why it last failed, for people ("" when it did not)."""

    @property
    def logs(self) -> LogRing: ...

    @property
    def start_report(self) -> list[str]:
        """The engine's memory report lines of its last start (see ``footprint``)."""

    async def ensure_ready(self) -> None:
        """Return once READY, starting (or waking) it if needed; raise EngineStartError."""

    async def stop(self) -> None:
        """Stop it and return once it is gone."""

    async def confirm_alive(self) -> bool:
        """Asked when a request could not reach it or its answer broke off: False when it
        crashed (found dead, it is handled as a crash at once, not at the next poll); True
        when it is alive or being stopped on purpose."""

    async def sleep(self) -> bool:
        """Release its GPU memory without exiting; False where it did not."""

    def describe(self) -> dict[str, Any]:
        """Its state, for /status and the admin API."""


# Called after every state change with the handle and the state it left.
StateCallback = Callable[[EngineHandle, State], None]
