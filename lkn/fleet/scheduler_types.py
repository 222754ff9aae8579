"""What the scheduler sees and says: engines (``Slot``), variants (``Option``), queued requests
(``Waiter``) and the actions ``decide()`` returns (``Grant``, ``Start``, ``Stop``, ``Recheck``)."""
from __future__ import annotations

from dataclasses import dataclass, field

STARTING, READY, STOPPING, ASLEEP = "starting", "ready", "stopping", "asleep"


@dataclass(frozen=True)
class Slot:
    """An engine as the scheduler sees it."""
    key: str
    model: str
    ctx: int
    vram_mb: int
    state: str
    in_flight: int = 0
    last_used: float = 0.0
    retired: bool = False  # its config changed or vanished (reload): drain, then stop
    capacity: int = 1      # requests it answers at once; more wait in lkn's queue, not the engine's
    pinned: bool = False   # never evicted to make room for another engine
    local: bool = True     # a process on this box; a remote upstream holds no memory or slot
    since: float = 0.0     # when it became ready (its residence counts from here)
    stop_s: float = 0.0    # what stopping it costs (learned; the configured default before)


@dataclass(frozen=True)
class Option:
    """A variant that holds the request: start ``key`` with context ``ctx`` using ``vram_mb``."""
    key: str
    ctx: int
    vram_mb: int
    local: bool = True
    group: str = ""  # the backend it belongs to, for a model with several (else "")
    start_s: float = 0.0  # what starting it costs (learned; the configured default before)


@dataclass(frozen=True)
class Waiter:
    id: int
    model: str
    # ascending ctx (several backends: in the balancer's order, then ascending ctx); all hold
    # the request and fit the budget. Empty while every variant that holds it waits out a
    # failure backoff: it waits, nothing starts for it.
    options: tuple[Option, ...]
    arrived: float
    prefer: tuple[str, ...] = ()  # backends in the balancer's order (several backends only)
    key: str = ""            # the client key it came with (fair share between keys)
    tag: float = 0.0         # its fair-share turn among its model's requests (WaitQueue.add)
    priority: float = 50.0   # planner.BATCH 0 .. INTERACTIVE 50 .. TOP 100


@dataclass(frozen=True)
class Grant:
    waiter: int
    key: str


@dataclass(frozen=True)
class Start:
    key: str


@dataclass(frozen=True)
class Stop:
    key: str
    reason: str = "evict"
    for_key: str = field(default="", compare=False)  # an eviction: the engine it makes room for


@dataclass(frozen=True)
class Recheck:
    """Decide again at ``at`` although nothing happens: a held swap or a residence ends."""
    at: float


Action = Grant | Start | Stop | Recheck


