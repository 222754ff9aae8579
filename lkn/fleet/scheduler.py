"""Pure swap decisions: which waiting request gets which engine, what to start, what to stop.

No I/O and no clock of its own: ``decide()`` takes a snapshot of the engines (``Slot``), the
queue (``Waiter``), the models' arrival rates and ``now``, and returns the actions the engine
manager must carry out. The manager calls it again after every event (arrival, release, engine
ready/stopped/failed) and at the time a ``Recheck`` names. The economics (levels, weights, what a
swap costs and when it pays) are ``planner``'s rules.

Policy, in order:

1. **Forced swaps.** The first waiter (highest level, then oldest) that no running engine holds
   and that has waited ``max_wait_s`` or more (*overdue*), or that outranks every request queued
   for the engines in its way (an interactive request while they have only batch work), is
   *forced*. The engines that would have to go to make room for it are *blocked* for requests
   ranked after it: they queue behind it, the engine's in-flight work drains and the swap
   happens. Without this a busy model starves a waiting one forever (llama-swap's #612/#772).
   An engine is only blocked once it has been ready for ``planner.RESIDENCE`` swap costs, so an
   overloaded box does not spend itself on swaps (the old collapse).
2. **Collation.** Waiters whose model has a ready, unblocked engine with a context that holds
   them are granted, in ``planner.order`` (level, round robin between client keys, arrival),
   while it has free slots (``capacity``: the engine's parallel slots; the rest wait in lkn's
   queue, where they can still be reordered, rather than inside the engine). A running larger
   variant is reused: no reload for a shorter prompt. Queued requests for a ready model are thus
   served before a swap.
3. **Starts and evictions**, the forced waiter first, then the models in ``planner.swap_rank``
   order (top level, then waiting weight per second of swap): join an engine already starting;
   else the smallest variant that fits the VRAM budget (and ``max_engines``) now; else evict idle
   engines, least recently used first, never one with requests in flight, never one starting,
   never a pinned one, and not while the swap is *held* (its waiters' pressure is below what the
   swap would cost the evicted engines' coming work: ``planner.held_until``).
   Stopped memory is only reused once the stop has finished (stopping engines still count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from lkn.fleet import planner
from lkn.fleet.scheduler_types import (ASLEEP, READY, STARTING, STOPPING, Action, Grant, Option,
                                       Recheck, Slot, Start, Stop, Waiter)

__all__ = ["ASLEEP", "READY", "STARTING", "STOPPING", "Action", "Grant", "Option", "Recheck",
           "Slot", "Start", "Stop", "Waiter", "admit", "decide"]

_NONE = Slot("", "", 0, 0, "")


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
    if not mine or any(board.slots.get(o.key, _NONE).state
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
                 and board.slots.get(o.key, _NONE).state not in (STOPPING,))


def _served_by_running(waiter: Waiter, board: _Board) -> bool:
    """Whether a running engine holds ``waiter`` (it is served without a swap, maybe later)."""
    return _ready_engine(waiter, board, set(), free_only=False) is not None


def decide(slots: Sequence[Slot], waiters: Sequence[Waiter], *, budget_mb: int,
           max_engines: int, max_wait_s: float, now: float,
           rates: Mapping[str, Mapping[str, float]] | None = None) -> list[Action]:
    """``rates``: each model's expected arrivals per second by client key, weighted by
    priority (none: no swap is held for them)."""
    board = _Board({s.key: s for s in slots}, budget_mb, max_engines)
    queue = planner.order(waiters, now, max_wait_s)
    by_urgency = sorted(queue, key=lambda w: planner.urgency(w, now, max_wait_s))
    position = {w.id: i for i, w in enumerate(by_urgency)}
    rechecks: list[float] = []

    # Engines whose config is gone are stopped as soon as they are idle.
    for slot in list(board.slots.values()):
        if slot.retired and slot.in_flight == 0 and slot.state in (READY, ASLEEP):
            board.actions.append(Stop(slot.key, "retired"))
            board.slots[slot.key] = replace(slot, state=STOPPING)

    # 1. forced swaps: the wait bound, a higher class
    forced, room, blocked = _forced(by_urgency, board, now, max_wait_s, rechecks)

    # 2. collation: serve everything a ready engine can hold; requests less urgent than the
    #    forced waiter queue behind it on the engines it needs gone
    rest: list[Waiter] = []
    for w in queue:
        behind = forced is not None and position[w.id] > position[forced.id]
        engine = _ready_engine(w, board, blocked if behind else set())
        if engine is None:
            rest.append(w)
            continue
        board.actions.append(Grant(w.id, engine.key))
        board.slots[engine.key] = replace(engine, in_flight=engine.in_flight + 1, last_used=now)
        if not room:  # memory a forced waiter counts on stays free
            _warm_preferred(w, board)

    # 3. starts and evictions: the forced waiter, then the swap that pays best
    rest = _by_swap_rank(rest, forced, now, max_wait_s)
    queued_by_model: dict[str, list[Waiter]] = {}  # still waiting after the grants
    for w in rest:
        queued_by_model.setdefault(w.model, []).append(w)
    seen: set[tuple[Option, ...]] = set()
    for w in rest:
        keys = {o.key for o in w.options}
        if _served_by_running(w, board):
            spare = _spare_backends(w, board)
            if spare and (forced is None or w is forced or not room):
                _start_for(replace(w, options=spare), board)  # another replica, not a copy
            continue  # its engine is busy: wait for a free slot, no second copy
        if w.options in seen:
            continue  # a waiter with the same options went first: the same answer holds
        seen.add(w.options)
        if any(board.slots[k].state == STARTING for k in keys if k in board.slots):
            continue  # join the start already under way
        if any(board.slots[k].state in (READY, STOPPING) for k in keys if k in board.slots):
            continue  # blocked or retiring: wait for it to drain or finish stopping
        if forced is not None and w is not forced and room and any(o.local for o in w.options):
            continue  # the forced waiter's room is being made (or kept); do not take it
        hold = None if w is forced else _Hold(queued_by_model, rates or {}, now, max_wait_s)
        _start_for(w, board, hold, rechecks)
    ahead = [t for t in rechecks if t > now]
    if ahead:
        board.actions.append(Recheck(min(ahead)))
    return board.actions


def _forced(by_urgency: list[Waiter], board: _Board, now: float, max_wait_s: float,
            rechecks: list[float]) -> tuple[Waiter | None, set[str], set[str]]:
    """The waiter a swap is forced for (overdue, or outranking the engines in its way), the
    engines in its way (its room: nobody else evicts them or takes their memory) and those
    blocked for it now (none while they are within their residence)."""
    top = _top_queued(by_urgency)
    lowest = min(top.values(), default=math.inf)
    for w in by_urgency:
        overdue = now - w.arrived >= max_wait_s
        if not w.options or (not overdue and w.priority <= lowest):
            continue  # neither overdue nor above anybody's class
        if _served_by_running(w, board):
            continue
        if any(board.slots.get(o.key, _NONE).state == STARTING for o in w.options):
            continue  # its engine is on its way
        plan = board.eviction_plan(w.options[0], include_busy=True)
        if plan is None:
            continue  # nothing can make room for it (pinned engines): another may be forced
        outranks = _outranks(w, plan, top)
        if plan and not overdue and not outranks:
            continue  # (one that fits now goes first: a less urgent one must not take its room)
        cost = planner.swap_cost(plan, w.options[0])
        factor = planner.OUTRANK_RESIDENCE if outranks else planner.RESIDENCE
        busy = [s for s in plan if s.in_flight or s.key in top]
        until = max((planner.resident_until(s, cost, max_wait_s, factor) for s in busy),
                    default=now)
        room = {s.key for s in plan}
        if until > now + planner.EPS:
            rechecks.append(until)
            return w, room, set()
        return w, room, room
    return None, set(), set()


def _queued_for(slot: Slot, queue: Sequence[Waiter]) -> list[Waiter]:
    return [w for w in queue if any(o.key == slot.key for o in w.options)]


def _top_queued(queue: Sequence[Waiter]) -> dict[str, float]:
    """The highest class queued for each engine (by the keys of the waiters' options)."""
    top: dict[str, float] = {}
    for w in queue:
        for o in w.options:
            top[o.key] = max(top.get(o.key, w.priority), w.priority)
    return top


def _outranks(w: Waiter, plan: list[Slot], top: dict[str, float]) -> bool:
    """Whether ``w``'s class is above that of everything queued for the engines in its way,
    which have some queued work (an interactive request while they have only batch work: it
    need not wait for the bound). Aging does not count here: an overdue waiter is forced by
    the bound, within the engines' residence."""
    theirs = [top[s.key] for s in plan if s.key in top]
    return bool(theirs) and w.priority > max(theirs)


def _by_swap_rank(rest: list[Waiter], forced: Waiter | None, now: float,
                  max_wait_s: float) -> list[Waiter]:
    """The forced waiter first; then model by model, best swap first (each model's waiters keep
    their queue order)."""
    by_model: dict[str, list[Waiter]] = {}
    for w in rest:
        if w is not forced:
            by_model.setdefault(w.model, []).append(w)
    ranked = sorted(by_model.values(), key=lambda ws: planner.swap_rank(
        ws, ws[0].options[0].start_s if ws[0].options else 0.0, now, max_wait_s))
    head = [forced] if forced is not None and forced in rest else []
    return head + [w for ws in ranked for w in ws]


@dataclass
class _Hold:
    """What a swap must beat: the work coming to the engines it evicts."""
    queued_by_model: dict[str, list[Waiter]]
    rates: Mapping[str, Mapping[str, float]]
    now: float
    max_wait_s: float

    def until(self, w: Waiter, evicted: Sequence[Slot], option: Option) -> float | None:
        cost = planner.swap_cost(evicted, option)
        waiting = self.queued_by_model.get(w.model, [w])
        askers = {x.key for x in waiting}  # their own coming requests hold nobody's swap
        keep = sum(planner.keep_value(_queued_for(s, self.queued_by_model.get(s.model, [])),
                                      planner.rate_of(self.rates, s.model, askers), cost,
                                      self.now, self.max_wait_s)
                   for s in evicted)
        return planner.held_until(waiting, keep, self.now, self.max_wait_s, cost)


def _start_for(w: Waiter, board: _Board, hold: _Hold | None = None,
               rechecks: list[float] | None = None) -> None:
    # Prefer the smallest variant that can start now (or after evicting idle engines);
    # fall back to waiting for the smallest one.
    for option in w.options:
        plan = board.eviction_plan(option, include_busy=False)
        if plan is None:
            continue
        if plan:
            until = hold.until(w, plan, option) if hold is not None else None
            if until is not None:
                if rechecks is not None:
                    rechecks.append(until)
                return  # the swap does not pay yet
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
