"""A bounded ring of an engine's output lines, mirrored to a log file.

The child's stdout/stderr are always drained into this ring: a child whose pipe fills up blocks
on write and looks hung. The ring keeps the last lines for error messages (an engine that exits
before ready is reported with its log tail); the file keeps everything for the operator.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from typing import IO, Callable

log = logging.getLogger("lkn.engine")

MARK = "--- lkn: "  # how lkn's own lines in an engine's log begin


class LogRing:
    def __init__(self, name: str, *, max_lines: int = 400, log_dir: str | None = None,
                 max_bytes: int = 0, keep: int = 3) -> None:
        self.name = name
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._file: IO[str] | None = None
        self._broken = False
        self.max_bytes = max_bytes  # rotate the file past this size (0: never)
        self.keep = keep            # rotated files kept: NAME.log.1 … NAME.log.KEEP
        self.path: str | None = None
        # Called with every new line (the admin API's follow mode); must not block or raise.
        self.listeners: set[Callable[[str], None]] = set()
        if log_dir:
            safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
            self.path = os.path.join(log_dir, f"{safe}.log")

    def append(self, line: str) -> None:
        """Never raises: the ring sits on every state change of the engine, and a full disk
        must not leave an engine marked ready with a dead pid."""
        line = line.rstrip("\n")
        self._lines.append(line)
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # a reader's problem is not the engine's
                listener(line)
        if self.path is None or self._broken:
            return
        try:
            if self._file is None:  # opened while the engine runs, closed when it stops
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)
            self._file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            if self.max_bytes and self._file.tell() >= self.max_bytes:
                self._rotate()
        except (OSError, ValueError) as exc:
            self._broken = True  # keep the ring; stop copying to the file until the next run
            log.error("engine log %s: cannot write (%s); keeping the last lines in memory only",
                      self.path, exc)
            self.close()

    def mark(self, event: str) -> None:
        self.append(f"{MARK}{event} ---")

    def tail(self, n: int = 20) -> str:
        lines = list(self._lines)[-n:]
        return "\n".join(lines)

    def since(self, event: str, n: int) -> list[str]:
        """Of the last ``n`` lines, those after the newest mark whose event starts with
        ``event`` (all of them when there is none): what was said since, e.g., this start."""
        lines = list(self._lines)[-n:]
        head = MARK + event
        marks = [i for i, line in enumerate(lines) if line.startswith(head)]
        return lines[marks[-1] + 1:] if marks else lines

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _rotate(self) -> None:
        """NAME.log -> NAME.log.1 -> … -> NAME.log.KEEP (the oldest is dropped)."""
        assert self.path is not None
        self.close()
        for i in range(self.keep, 0, -1):
            older = f"{self.path}.{i}"
            newer = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(newer):
                os.replace(newer, older)
        if self.keep <= 0:
            os.unlink(self.path)

    def reopen(self) -> None:
        """A new run of the engine: try the file again."""
        self._broken = False
