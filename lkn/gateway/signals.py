"""The daemon's signals, from start until its cleanup has ended.

While serving: SIGTERM and SIGINT stop lkn (drain, stop the engines, exit), SIGHUP reloads the
config. While draining: SIGHUP is ignored (and logged: a reload then would race the engines'
stop), and another SIGTERM/SIGINT shortens the drain: the clients still being served are
disconnected, so their engines' leases end and the engines stop now, each still with its stop
grace (SGLang's included). The handlers stay installed until the cleanup is over, so no signal
in that window falls back to Python's default (SIGHUP's kills the process, SIGINT's raises).
"""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable

log = logging.getLogger("lkn.gateway.signals")

STOPS = (signal.SIGTERM, signal.SIGINT)


class Signals:
    def __init__(self, stop: Callable[[], None], reload: Callable[[], None],
                 cut_drain: Callable[[], int]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop, self._reload, self._cut_drain = stop, reload, cut_drain
        self.draining = False
        self.cuts = 0

    def install(self) -> None:
        for sig in STOPS:
            self._loop.add_signal_handler(sig, self._on_stop, sig)
        self._loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def remove(self) -> None:
        for sig in (*STOPS, signal.SIGHUP):
            self._loop.remove_signal_handler(sig)

    def drain(self) -> None:
        """The server stopped taking requests and drains: from now on a stop signal cuts."""
        self.draining = True

    def _on_stop(self, sig: signal.Signals) -> None:
        if not self.draining:
            self._stop()
            return
        self.cuts += 1
        dropped = self._cut_drain()
        log.warning("%s while draining: drain cut short, %d client connections closed; "
                    "engines stop now (with their stop grace)", sig.name, dropped)

    def _on_hup(self) -> None:
        if self.draining:
            log.warning("SIGHUP while shutting down: ignored (no reload during the drain)")
            return
        self._reload()
