"""Per-key request rates and token quotas (pure: the caller passes the time on every call).

A key may be limited in requests per minute, tokens per minute and tokens per UTC day. The
``Ledger`` keeps, per key id, the requests of the last 60 s, the tokens charged in the last 60 s
and the tokens of the current UTC day. ``now`` is wall-clock epoch seconds (``time.time()``),
not the monotonic clock: the day quota resets at UTC midnight, and after a restart the durable
activity log (which stores wall-clock times) restores what was used.

A request's life in the ledger:

1. ``admit(key, limits, now, reserve)`` decides. When it admits, the request is counted and the
   ``reserve`` tokens (the prompt tokens lkn counted before forwarding) are charged at once, so a
   burst of large prompts cannot all pass before the first answer ends. The verdict carries a
   ``Ticket``.
2. ``settle(ticket, actual, now)`` when the answer ends: the reservation is replaced by what the
   engine reported (prompt + completion), charged at ``now``. ``actual=None`` (the engine
   reported nothing, e.g. a stream cut by the client) keeps the reservation; ``actual=0``
   refunds it (the request never reached an engine).

Tokens are charged at the time the answer ended, which is the time the activity log records a
finished request at, so ``restore`` after a restart rebuilds the same sums.

A token limit refuses a request whose reservation does not fit what is left, and one arriving
when nothing is left even with no reservation (each request costs at least one token). A
reservation larger than the limit itself can never fit: the verdict says ``too_large``.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

from lkn.errors import QueueFull

WINDOW_S = 60.0
DAY_S = 86400

REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_MINUTE = "tokens_per_minute"
TOKENS_PER_DAY = "tokens_per_day"


@dataclass(frozen=True)
class Limits:
    """A key's rates and quotas; None: not limited."""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    @property
    def any(self) -> bool:
        return (self.requests_per_minute is not None or self.tokens_per_minute is not None
                or self.tokens_per_day is not None)


@dataclass(eq=False)
class _Charge:
    """Tokens charged into the minute window at ``at``. ``live`` while the window holds it."""
    at: float
    tokens: int
    live: bool = True


@dataclass(eq=False)
class Ticket:
    """An admitted request's claim on the ledger, settled once when its answer ends (a handle
    with state, not a value: settling it twice must not charge twice)."""
    key_id: str
    reserved: int
    day: int  # the UTC day the reservation was charged to
    charge: _Charge | None = field(default=None, repr=False)
    settled: bool = False


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str | None = None  # the limit that refused: one of the three names above
    retry_after_s: int = 0     # >= 1 when refused
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, for set limits only
    ticket: Ticket | None = None  # when ok
    too_large: bool = False    # the reservation alone exceeds the limit: retrying cannot help

    def error(self, key_id: str) -> QueueFull:
        """The 429 a refused request answers, with ``Retry-After`` and the rate-limit headers."""
        what = self.reason or "quota"
        if self.too_large:
            message = (f"key {key_id!r}: this request's prompt alone exceeds its {what} limit "
                       f"({self.headers.get('x-ratelimit-limit-tokens', '?')} tokens)")
        else:
            message = (f"key {key_id!r} reached its {what} limit; "
                       f"retry after {self.retry_after_s} s")
        headers = {"Retry-After": str(self.retry_after_s), **self.headers}
        if self.too_large:
            headers["x-should-retry"] = "false"
        return QueueFull(message, code=what, headers=headers)


def duration(seconds: float) -> str:
    """Seconds the way OpenAI writes its reset headers: ``0s``, ``12s``, ``1m0s``, ``1h2m3s``."""
    s = max(0, math.ceil(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def utc_day(now: float) -> int:
    return int(now // DAY_S)


def to_midnight(now: float) -> int:
    """Whole seconds to the next UTC midnight (at least 1)."""
    return max(1, math.ceil((utc_day(now) + 1) * DAY_S - now))


def _wait(until: float, now: float) -> int:
    return max(1, math.ceil(until - now))


class _KeyUsage:
    def __init__(self, now: float) -> None:
        self.requests: collections.deque[float] = collections.deque()
        self.charges: collections.deque[_Charge] = collections.deque()
        self.minute_tokens = 0
        self.day = utc_day(now)
        self.day_tokens = 0

    def advance(self, now: float) -> None:
        """Drop what left the 60 s window (``at <= now - 60``); a new UTC day starts at zero."""
        edge = now - WINDOW_S
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.charges and self.charges[0].at <= edge:
            gone = self.charges.popleft()
            gone.live = False
            self.minute_tokens -= gone.tokens
        if utc_day(now) > self.day:  # a clock stepped back over midnight resets nothing
            self.day, self.day_tokens = utc_day(now), 0

    def charge(self, tokens: int, now: float) -> _Charge | None:
        if tokens <= 0:
            return None
        entry = _Charge(now, tokens)
        self.charges.append(entry)
        self.minute_tokens += tokens
        self.day_tokens += tokens
        return entry

    def uncharge(self, entry: _Charge | None) -> None:
        """Take a reservation back out of the minute window (the day is the caller's)."""
        if entry is not None and entry.live:
            self.minute_tokens -= entry.tokens
            entry.tokens = 0

    def minute_reset(self, now: float) -> int:
        """Seconds until the minute window holds no tokens (0: it holds none)."""
        newest = next((c.at for c in reversed(self.charges) if c.tokens > 0), None)
        return 0 if newest is None else _wait(newest + WINDOW_S, now)

    def requests_reset(self, now: float) -> int:
        return 0 if not self.requests else _wait(self.requests[-1] + WINDOW_S, now)


@dataclass(frozen=True)
class _Refusal:
    reason: str
    retry_after_s: int
    too_large: bool = False


class Ledger:
    def __init__(self) -> None:
        self._keys: dict[str, _KeyUsage] = {}

    def _usage(self, key_id: str, now: float) -> _KeyUsage:
        usage = self._keys.get(key_id)
        if usage is None:
            usage = self._keys[key_id] = _KeyUsage(now)
        usage.advance(now)
        return usage

    def admit(self, key_id: str, limits: Limits, now: float, reserve: int = 0) -> Verdict:
        """Count the request and charge ``reserve`` tokens, or refuse it (counting nothing)."""
        reserve = max(0, reserve)
        usage = self._usage(key_id, now)
        refusals = _refusals(usage, limits, now, reserve)
        if refusals:
            # Every refusing limit must clear before a retry can pass: answer the longest wait.
            worst = max(refusals, key=lambda r: r.retry_after_s)
            return Verdict(False, worst.reason, worst.retry_after_s,
                           _headers(usage, limits, now), too_large=worst.too_large)
        usage.requests.append(now)
        entry = usage.charge(reserve, now)
        ticket = Ticket(key_id, reserve, usage.day, entry)
        return Verdict(True, headers=_headers(usage, limits, now), ticket=ticket)

    def settle(self, ticket: Ticket, actual: int | None, now: float) -> None:
        """Replace the ticket's reservation by the engine's real usage (prompt + completion),
        charged at ``now``. ``None``: the engine reported nothing, the reservation stands.
        A second settle of the same ticket does nothing."""
        if ticket.settled:
            return
        ticket.settled = True
        usage = self._keys.get(ticket.key_id)
        if usage is None or actual is None:
            return  # a key dropped by a reload; or nothing reported: the reservation stays
        usage.advance(now)
        usage.uncharge(ticket.charge)
        if ticket.day == usage.day:
            usage.day_tokens = max(0, usage.day_tokens - ticket.reserved)
        usage.charge(max(0, actual), now)

    def restore(self, key_id: str, day_tokens: int, minute_tokens: int, now: float, *,
                minute_requests: int = 0) -> None:
        """After a restart, what the durable log says this key used: the tokens of answers that
        ended today (UTC) and in the last 60 s, and (optionally) the requests of the last 60 s.
        They are charged at ``now``, so they hold a full window: a conservative restart."""
        usage = self._keys[key_id] = _KeyUsage(now)
        usage.requests.extend([now] * max(0, minute_requests))
        minute = max(0, minute_tokens)
        if minute:
            usage.charges.append(_Charge(now, minute))
            usage.minute_tokens = minute
        usage.day_tokens = max(0, day_tokens)

    def forget(self, keep: set[str]) -> None:
        """Drop the usage of key ids no longer configured."""
        for key_id in [k for k in self._keys if k not in keep]:
            for entry in self._keys.pop(key_id).charges:
                entry.live = False

    def snapshot(self, key_id: str, limits: Limits, now: float) -> dict[str, Any]:
        """Used and left per limit, for the dashboard and ``/admin/usage``; ``limit`` and
        ``left`` are None for a limit that is not set, ``reset_s`` is when the window is clear."""
        usage = self._usage(key_id, now)
        rows = (
            (REQUESTS_PER_MINUTE, limits.requests_per_minute, len(usage.requests),
             usage.requests_reset(now)),
            (TOKENS_PER_MINUTE, limits.tokens_per_minute, usage.minute_tokens,
             usage.minute_reset(now)),
            (TOKENS_PER_DAY, limits.tokens_per_day, usage.day_tokens,
             to_midnight(now) if usage.day_tokens else 0),
        )
        return {name: {"limit": limit, "used": used,
                       "left": None if limit is None else max(0, limit - used),
                       "reset_s": reset}
                for name, limit, used, reset in rows}


def _refusals(usage: _KeyUsage, limits: Limits, now: float, reserve: int) -> list[_Refusal]:
    found: list[_Refusal] = []
    rpm = limits.requests_per_minute
    if rpm is not None and len(usage.requests) >= rpm:
        # One more request fits once all but rpm - 1 of the window's requests have left it.
        leaving = len(usage.requests) - rpm
        found.append(_Refusal(REQUESTS_PER_MINUTE,
                              _wait(usage.requests[leaving] + WINDOW_S, now)
                              if rpm > 0 else int(WINDOW_S), too_large=rpm <= 0))
    cost = max(reserve, 1)  # a request costs at least one token: none left refuses it
    tpm = limits.tokens_per_minute
    if tpm is not None and usage.minute_tokens + cost > tpm:
        if cost > tpm:
            found.append(_Refusal(TOKENS_PER_MINUTE, int(WINDOW_S), too_large=True))
        else:
            found.append(_Refusal(TOKENS_PER_MINUTE, _minute_fits(usage, tpm - cost, now)))
    tpd = limits.tokens_per_day
    if tpd is not None and usage.day_tokens + cost > tpd:
        found.append(_Refusal(TOKENS_PER_DAY, to_midnight(now), too_large=cost > tpd))
    return found


def _minute_fits(usage: _KeyUsage, allowed: int, now: float) -> int:
    """Seconds until the minute window holds at most ``allowed`` tokens."""
    held = usage.minute_tokens
    for entry in usage.charges:
        held -= entry.tokens
        if held <= allowed:
            return _wait(entry.at + WINDOW_S, now)
    return int(WINDOW_S)  # not reached: the window's total is the sum of its entries


def _headers(usage: _KeyUsage, limits: Limits, now: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    rpm = limits.requests_per_minute
    if rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, rpm - len(usage.requests)))
        headers["x-ratelimit-reset-requests"] = duration(usage.requests_reset(now))
    token_limits = []  # (left, limit, reset): the tighter one is what a client must respect
    if limits.tokens_per_minute is not None:
        token_limits.append((max(0, limits.tokens_per_minute - usage.minute_tokens),
                             limits.tokens_per_minute, usage.minute_reset(now)))
    if limits.tokens_per_day is not None:
        token_limits.append((max(0, limits.tokens_per_day - usage.day_tokens),
                             limits.tokens_per_day,
                             to_midnight(now) if usage.day_tokens else 0))
    if token_limits:
        left, limit, reset = min(token_limits, key=lambda t: t[0])
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(left)
        headers["x-ratelimit-reset-tokens"] = duration(reset)
    return headers
