"""Pure swap decisions: which waiting request gets which engine, what to start, what to stop.

No I/O and no clock of its own: ``decide()`` takes a snapshot of the engines (``Slot``) and the
queue (``Waiter``) plus ``now`` and returns the actions the engine manager must carry out. The
manager calls it again after every event (arrival, release, engine ready/stopped/failed, timer).

Policy, in order:

1. **Wait bound.** The oldest waiter that cannot be served by a ready engine and has waited
   ``max_wait_s`` or more is *overdue*. The engines that would have to go to make room for it are
   *blocked* for requests that arrived after it: they queue behind it, the engine's in-flight
   work drains and the swap happens. Without this a busy model starves a waiting one forever
   (llama-swap's #612/#772). Older requests are still served, so the bound never makes two
   models take turns evicting each other.
2. **Collation.** Waiters whose model has a ready, unblocked engine with a context that holds
   them are granted, oldest first, while it has free slots (``capacity``: the engine's parallel
   slots; the rest wait in lkn's queue, where they can still be reordered, rather than inside
   the engine). A running larger variant is reused: no reload for a shorter prompt. Queued
   requests for a ready model are thus served before a swap.
3. **Starts and evictions**, overdue waiter first, then FIFO: join an engine already starting;
   else the smallest variant that fits the VRAM budget (and ``max_engines``) now; else evict idle
   engines, least recently used first, never one with requests in flight, never one starting,
   never a pinned one.
   Stopped memory is only reused once the stop has finished (stopping engines still count).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

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


@dataclass(frozen=True)
class Option:
    """A variant that holds the request: start ``key`` with context ``ctx`` using ``vram_mb``."""
    key: str
    ctx: int
    vram_mb: int
    local: bool = True
    group: str = ""  # the backend it belongs to, for a model with several (else "")


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


Action = Grant | Start | Stop


@dataclass
class _Board:
    slots: dict[str, Slot]
    budget_mb: int
    max_engines: int
    actions: list[Action] = field(default_factory=list)

    def used_mb(self) -> int:
        return sum(0 if s.state == ASLEEP else s.vram_mb for s in self.slots.values())

    def resident(self) -> int:
        return sum(1 for s in self.slots.values() if s.state != ASLEEP and s.local)

    def fits(self, option: Option, freed_mb: int = 0, freed_count: int = 0,
             waking: Slot | None = None) -> bool:
        awake = waking is not None and waking.state != ASLEEP
        extra_count = 0 if awake or not option.local else 1
        if self.used_mb() - freed_mb + option.vram_mb > self.budget_mb:
            return False
        count = self.resident() - freed_count + extra_count
        return self.max_engines <= 0 or count <= self.max_engines

    def eviction_plan(self, option: Option, *, include_busy: bool) -> list[Slot] | None:
        """Engines to stop so that ``option`` fits, LRU first; None if impossible."""
        target = self.slots.get(option.key)
        if self.fits(option, waking=target):
            return []
        # An asleep engine holds (almost) no memory and no engine slot: evicting it frees nothing.
        candidates = sorted(
            (s for s in self.slots.values()
             if s.key != option.key and s.state == READY and not s.pinned and s.local
             and (include_busy or s.in_flight == 0)),
            key=lambda s: s.last_used)
        plan: list[Slot] = []
        freed_mb = freed_count = 0
        for slot in candidates:
            plan.append(slot)
            freed_mb += slot.vram_mb
            freed_count += 1
            if self.fits(option, freed_mb, freed_count, waking=target):
                return plan
        return None


def _ready_engine(waiter: Waiter, board: _Board, blocked: set[str], *,
                  free_only: bool = True) -> Slot | None:
    """The ready engine that should serve ``waiter`` (smallest context first); with
    ``free_only`` only one that has a free slot now."""
    groups = {o.key: o.group for o in waiter.options}
    ready = [s for s in board.slots.values()
             if s.key in groups and s.state == READY and not s.retired and s.key not in blocked]
    if free_only:
        ready = [s for s in ready if s.in_flight < s.capacity]

    def rank(s: Slot) -> tuple[int, int, int]:
        # Several backends: the balancer's order first (each holds the request), then the
        # smallest context within a backend. One backend: the smallest context.
        group = groups[s.key]
        order = waiter.prefer.index(group) if group in waiter.prefer else len(waiter.prefer)
        return order, s.ctx, s.in_flight
    return min(ready, key=rank) if ready else None


def _warm_preferred(waiter: Waiter, board: _Board) -> None:
    """A request granted to another backend than the balancer's first choice, because that
    one runs nothing yet: start it (if it fits without evicting anything), so the balancing
    holds from the next request on."""
    if not waiter.prefer:
        return
    first = waiter.prefer[0]
    mine = [o for o in waiter.options if o.group == first]
    if not mine or any(board.slots.get(o.key, Slot("", "", 0, 0, "")).state
                       in (READY, STARTING, STOPPING) for o in mine):
        return
    option = mine[0]
    if board.eviction_plan(option, include_busy=False) == []:
        board.actions.append(Start(option.key))
        board.slots[option.key] = Slot(option.key, waiter.model, option.ctx, option.vram_mb,
                                       STARTING, local=option.local)


def _spare_backends(waiter: Waiter, board: _Board) -> tuple[Option, ...]:
    """Options of backends with no engine running or starting: started when the running ones
    are full (replicas scale out; one backend never gets a second copy)."""
    busy = {o.group for o in waiter.options
            if o.key in board.slots and board.slots[o.key].state in (READY, STARTING)}
    return tuple(o for o in waiter.options
                 if o.group and o.group not in busy
                 and board.slots.get(o.key, Slot("", "", 0, 0, "")).state not in (STOPPING,))


def _served_by_running(waiter: Waiter, board: _Board) -> bool:
    """Whether a running engine holds ``waiter`` (it is served without a swap, maybe later)."""
    return _ready_engine(waiter, board, set(), free_only=False) is not None


def decide(slots: Sequence[Slot], waiters: Sequence[Waiter], *, budget_mb: int,
           max_engines: int, max_wait_s: float, now: float) -> list[Action]:
    board = _Board({s.key: s for s in slots}, budget_mb, max_engines)
    queue = sorted(waiters, key=lambda w: (w.arrived, w.id))

    # Engines whose config is gone are stopped as soon as they are idle.
    for slot in list(board.slots.values()):
        if slot.retired and slot.in_flight == 0 and slot.state in (READY, ASLEEP):
            board.actions.append(Stop(slot.key, "retired"))
            board.slots[slot.key] = replace(slot, state=STOPPING)

    # 1. wait bound
    blocked: set[str] = set()
    overdue: Waiter | None = None
    for w in queue:
        if now - w.arrived < max_wait_s:
            break
        if w.options and not _served_by_running(w, board):
            overdue = w
            break
    if overdue is not None and not any(
            board.slots.get(o.key, Slot("", "", 0, 0, "")).state == STARTING
            for o in overdue.options):
        plan = board.eviction_plan(overdue.options[0], include_busy=True)
        if plan:
            blocked = {s.key for s in plan}

    # 2. collation: serve everything a ready engine can hold; requests that arrived after the
    #    overdue waiter queue behind it on the engines it needs gone
    rest: list[Waiter] = []
    for w in queue:
        behind = overdue is not None and (w.arrived, w.id) > (overdue.arrived, overdue.id)
        engine = _ready_engine(w, board, blocked if behind else set())
        if engine is None:
            rest.append(w)
            continue
        board.actions.append(Grant(w.id, engine.key))
        board.slots[engine.key] = replace(engine, in_flight=engine.in_flight + 1, last_used=now)
        if not blocked:  # memory an overdue waiter's eviction counts on stays free
            _warm_preferred(w, board)

    # 3. starts and evictions
    if overdue is not None and overdue in rest:
        rest.remove(overdue)
        rest.insert(0, overdue)
    for w in rest:
        keys = {o.key for o in w.options}
        if _served_by_running(w, board):
            spare = _spare_backends(w, board)
            if spare and (overdue is None or w is overdue or not blocked):
                _start_for(replace(w, options=spare), board)  # another replica, not a copy
            continue  # its engine is busy: wait for a free slot, no second copy
        if any(board.slots[k].state == STARTING for k in keys if k in board.slots):
            continue  # join the start already under way
        if any(board.slots[k].state in (READY, STOPPING) for k in keys if k in board.slots):
            continue  # blocked or retiring: wait for it to drain or finish stopping
        if overdue is not None and w is not overdue and blocked:
            continue  # the overdue waiter's room is being made; do not take it
        _start_for(w, board)
    return board.actions


def _start_for(w: Waiter, board: _Board) -> None:
    # Prefer the smallest variant that can start now (or after evicting idle engines);
    # fall back to waiting for the smallest one.
    for option in w.options:
        plan = board.eviction_plan(option, include_busy=False)
        if plan is None:
            continue
        if plan:
            for slot in plan:
                board.actions.append(Stop(slot.key, for_key=option.key))
                board.slots[slot.key] = replace(slot, state=STOPPING)
            return  # start once the memory is really free
        board.actions.append(Start(option.key))
        current = board.slots.get(option.key)
        board.slots[option.key] = Slot(option.key, w.model, option.ctx, option.vram_mb, STARTING,
                                       last_used=current.last_used if current else 0.0,
                                       capacity=current.capacity if current else 1,
                                       local=option.local)
        return


def admit(queued_for_model: int, cap: int) -> bool:
    """Whether one more request may queue for a model (the rest get 429)."""
    return queued_for_model < cap
