"""Measured engine footprints, kept across restarts in the state directory.

One small JSON file, ``<state_dir>/footprints.json``, keyed by what decides an engine's memory:
its identity (command line without the port, environment, kind) and the model file's size and
modification time (a replaced file is measured again). Written atomically (a temporary file
renamed over the old one), re-read before each write so that several lkn sharing the directory
keep each other's entries. A file that cannot be read or written costs the learning, never a
request: lkn goes on with its estimates.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Any

from lkn.engines.footprint import Footprint

log = logging.getLogger("lkn.footprint")
FILE_NAME = "footprints.json"


def footprint_key(identity: str, model_file: str) -> str:
    try:
        st = os.stat(model_file)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return hashlib.sha256(f"{identity}\n{model_file}\n{stamp}".encode()).hexdigest()[:24]


class FootprintStore:
    def __init__(self, state_dir: str | None) -> None:
        self.path = os.path.join(state_dir, FILE_NAME) if state_dir else None
        self._entries: dict[str, dict[str, Any]] = self._read()

    def get(self, key: str) -> Footprint | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        buffers = entry.get("buffers")
        if not isinstance(buffers, dict):
            return None
        try:
            return Footprint({str(d): {str(k): float(v) for k, v in kinds.items()}
                              for d, kinds in buffers.items() if isinstance(kinds, dict)})
        except (TypeError, ValueError):  # an entry edited by hand: measured again
            return None

    def put(self, key: str, footprint: Footprint, **about: Any) -> None:
        entry = {**about, "mib": footprint.mib, "buffers": footprint.buffers,
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._entries = {**self._entries, **self._read(), key: entry}
        if self.path is None:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".footprints-", dir=os.path.dirname(self.path))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": 1, "footprints": self._entries}, f, indent=1,
                              sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("cannot write %s (%s); the measurement is kept until lkn stops",
                        self.path, exc)

    def _read(self) -> dict[str, dict[str, Any]]:
        """The entries on disk (none without a file or when it cannot be read)."""
        if self.path is None:
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); measuring engines again", self.path, exc)
            return {}
        entries = data.get("footprints") if isinstance(data, dict) else None
        return {k: v for k, v in entries.items() if isinstance(v, dict)} \
            if isinstance(entries, dict) else {}
