"""Every ``web.AppKey`` of lkn's application, and the small types they hold.

A leaf of the gateway package: the routes, the middleware and the server all read the app's
state through these keys, and this module imports none of them. The reloader is typed by a
``Protocol`` so that routes can ask for a reload without importing the reload module.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from aiohttp import web

from lkn.config import Config
from lkn.ops.notify import Notifier
from lkn.request.state import STATE, GatewayState


@dataclass
class Lifecycle:
    """Where the server is between start and exit (``/ready`` answers from it)."""
    listening: bool = False  # every configured listener is bound (serve())
    stopping: bool = False


class ConfigReloader(Protocol):
    """What routes and signals need of the reloader (``lkn.gateway.reload.Reloader``)."""

    def request(self) -> None: ...

    async def reload(self) -> bool: ...

    async def apply(self, change: Callable[[Config], Config]) -> Config: ...


RELOADER: web.AppKey[ConfigReloader] = web.AppKey("lkn_reloader")
@dataclass
class Intake:
    """Requests being read or served now, and how many were turned away (max_in_flight)."""
    in_flight: int = 0
    refused: int = 0


INTAKE = web.AppKey("lkn_intake", Intake)
NOTIFIER = web.AppKey("lkn_notifier", Notifier)
LIFECYCLE = web.AppKey("lkn_lifecycle", Lifecycle)
# The endless admin streams (logs followed, events) being served: cancelled at shutdown.
STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("lkn_admin_streams")

__all__ = ["LIFECYCLE", "NOTIFIER", "RELOADER", "STATE", "STREAMS", "ConfigReloader",
           "GatewayState", "Lifecycle"]
