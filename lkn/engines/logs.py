"""A bounded ring of an engine's output lines, mirrored to a log file.

The child's stdout/stderr are always drained into this ring: a child whose pipe fills up blocks
on write and looks hung. The ring keeps the last lines for error messages (an engine that exits
before ready is reported with its log tail); the file keeps everything for the operator.
"""
from __future__ import annotations

import collections
import os
import time
from typing import IO


class LogRing:
    def __init__(self, name: str, *, max_lines: int = 400, log_dir: str | None = None) -> None:
        self.name = name
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._file: IO[str] | None = None
        self.path: str | None = None
        if log_dir:
            safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
            self.path = os.path.join(log_dir, f"{safe}.log")

    def append(self, line: str) -> None:
        line = line.rstrip("\n")
        self._lines.append(line)
        if self.path is not None:
            if self._file is None:  # opened while the engine runs, closed when it stops
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)
            self._file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def mark(self, event: str) -> None:
        self.append(f"--- lkn: {event} ---")

    def tail(self, n: int = 20) -> str:
        lines = list(self._lines)[-n:]
        return "\n".join(lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
