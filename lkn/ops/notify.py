"""systemd's notify protocol (``Type=notify``): one datagram per state to ``$NOTIFY_SOCKET``.

- ``READY=1`` once every listener is bound (systemd starts dependent units then);
- ``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd requires it with RELOADING) when a reload
  begins, ``READY=1`` when it ended, whatever its outcome (``STATUS=`` says which);
- ``STOPPING=1`` when shutdown begins;
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while the event loop runs, when the unit sets
  ``WatchdogSec=``: a wedged loop stops the pings and systemd restarts lkn.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing. No dependency: the
protocol is a datagram of ``KEY=value`` lines.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("lkn.ops.notify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        # "@name" is the abstract namespace; systemd passes either form
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode("utf-8"), target)
        except OSError as exc:  # systemd gone or a bad address: never a reason to stop serving
            log.warning("cannot notify systemd at %s: %s", self.address, exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining in-flight requests, then stopping engines")

    def watchdog_interval(self) -> float | None:
        """Half of ``$WATCHDOG_USEC`` when the watchdog is meant for this process."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not self.address or not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

    async def watchdog(self) -> None:
        """Ping while the loop runs (a task; cancel it at shutdown)."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
