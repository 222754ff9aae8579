"""When a failing engine variant may start again (pure; no I/O, the caller passes ``now``).

Failures are kept per engine record, that is per variant of the running config, so a 32k variant
that runs out of memory never blocks the healthy 4k variant of the same model.

Policy (Supervisor's, with a backoff):

- a failed start, or a crash before or after ready, is one failure. A crash of an engine that
  had answered a request since it became ready, or had been up for ``STABLE_S`` or longer,
  starts a new count: an engine killed while in service (the OOM killer, an operator) or a
  daily crash is not a crash loop; an engine that dies before it answers anything is;
- after the n-th consecutive failure the variant may start again on demand after a backoff of
  ``base * 2**(n-1)`` seconds, capped at ``cap``: 1, 2, 4, 8 … s;
- at ``max_failures`` consecutive failures the variant is FAILED: requests for it get a fast 503
  with the engine's last log lines and ``Retry-After``. After ``failed_retry_s`` one more start
  is allowed (a single try, not a loop);
- a successful start clears FAILED; a reload that changes the variant replaces its record and so
  its history.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

STABLE_S = 30.0


@dataclass(frozen=True)
class FailurePolicy:
    base_s: float = 1.0
    cap_s: float = 30.0
    max_failures: int = 5
    failed_retry_s: float = 60.0


@dataclass(frozen=True)
class FailureHistory:
    consecutive: int = 0
    last_failure: float | None = None
    last_error: str = ""
    ready_at: float | None = None   # when the engine last became ready
    served: bool = False            # it answered a request since then

    def failed(self, policy: FailurePolicy) -> bool:
        return self.consecutive >= policy.max_failures

    def retry_at(self, policy: FailurePolicy) -> float:
        """The earliest time a start may be tried (0.0: now)."""
        if self.consecutive == 0 or self.last_failure is None:
            return 0.0
        if self.failed(policy):
            return self.last_failure + policy.failed_retry_s
        return self.last_failure + min(policy.cap_s, policy.base_s * 2 ** (self.consecutive - 1))

    def may_start(self, policy: FailurePolicy, now: float) -> bool:
        return now >= self.retry_at(policy)


def record_failure(history: FailureHistory, error: str, now: float) -> FailureHistory:
    proven = history.ready_at is not None and (history.served
                                               or now - history.ready_at >= STABLE_S)
    count = 1 if proven else history.consecutive + 1
    return replace(history, consecutive=count, last_failure=now, last_error=error,
                   ready_at=None, served=False)


def record_served(history: FailureHistory) -> FailureHistory:
    """The engine answered a request; only an answer since it last became ready counts."""
    if history.ready_at is None or history.served:
        return history
    return replace(history, served=True)


def record_ready(history: FailureHistory, policy: FailurePolicy, now: float) -> FailureHistory:
    """A successful start clears FAILED at once (one failure short of it), but the count only
    resets once the engine has stayed up for ``STABLE_S`` (see ``record_failure``), so that a
    crash loop after ready is still caught."""
    return replace(history, ready_at=now, served=False,
                   consecutive=min(history.consecutive, policy.max_failures - 1))
