"""A bounded ring of an engine's output lines, mirrored to a log file.

The child's stdout/stderr are always drained into this ring: a child whose pipe fills up blocks
on write and looks hung. The ring keeps the last lines for admins (``/status`` shows the tail of
a failed engine, the admin log API any); never for clients' errors. The file keeps everything.

Engine output is the operator's to read, not the host's: files are 0640 in a 0750 directory,
and lkn's own ``start:`` line shows no argument that looks like a secret (``redact_argv``).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import time
from typing import IO, Callable, Iterable

log = logging.getLogger("lkn.engine")

MARK = "--- lkn: "  # how lkn's own lines in an engine's log begin
FILE_MODE = 0o640
DIR_MODE = 0o750
REDACTED = "***"
# Words of a flag's name that say its value is a secret; a flag whose last word names a place
# (--api-key-file, --ssl-key-file) takes a path, which is not.
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "auth",
                           "credential", "credentials"})
_PATH_WORDS = frozenset({"file", "path", "dir"})


def redact_argv(argv: Iterable[str]) -> list[str]:
    """``argv`` with the value of every secret-looking flag (``--api-key K``,
    ``--hf-token=T``) replaced by ``***``, for lkn's own log lines."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("-") and _secret_flag(arg.split("=", 1)[0]):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
                continue
            hide_next = True
        out.append(arg)
    return out


def _secret_flag(flag: str) -> bool:
    words = [w for w in re.split(r"[-_.]+", flag.lower()) if w]
    return bool(words) and words[-1] not in _PATH_WORDS and \
        any(w in _SECRET_WORDS for w in words)


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
        # Never written as they are: shown as *** (an engine may print its own key)
        self.hidden: tuple[str, ...] = ()
        if log_dir:
            safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
            self.path = os.path.join(log_dir, f"{safe}.log")

    def append(self, line: str) -> None:
        """Never raises: the ring sits on every state change of the engine, and a full disk
        must not leave an engine marked ready with a dead pid."""
        line = line.rstrip("\n")
        for secret in self.hidden:
            line = line.replace(secret, REDACTED)
        self._lines.append(line)
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # a reader's problem is not the engine's
                listener(line)
        if self.path is None or self._broken:
            return
        try:
            if self._file is None:  # opened while the engine runs, closed when it stops
                self._file = _open_private(self.path)
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


def _open_private(path: str) -> IO[str]:
    """``path`` opened for appending, 0640 (a file an older lkn made wider is tightened), in
    a directory lkn makes 0750 (one that exists is the operator's: left as it is)."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
        _tighten(folder, DIR_MODE)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        _tighten(fd, FILE_MODE)
        return open(fd, "a", encoding="utf-8", buffering=1)
    except BaseException:
        os.close(fd)
        raise


def _tighten(target: str | int, most: int) -> None:
    st = os.stat(target)
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~most:
        mode = st.st_mode & most
        if isinstance(target, int):
            os.fchmod(target, mode)
        else:
            os.chmod(target, mode)
