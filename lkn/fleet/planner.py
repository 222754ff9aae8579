"""Pure rules for when a swap pays and who is served first (used by ``scheduler.decide``).

A swap (stop the running engine, start another) costs its ``stop_s + start_s``: seconds in which
the box serves nobody. The rules, each a small function tested by a table:

- **Levels** (``level``): a waiter's priority (``BATCH`` 0, ``INTERACTIVE`` 50, or a number) plus
  ``INTERACTIVE`` for every ``max_wait_s`` it has waited: a batch request that reached the wait
  bound ranks with fresh interactive ones, and an overdue interactive one above them when swaps
  are weighed (``urgency``).
- **Order within a queue** (``order``): the highest level first (aging lifts a request to
  ``INTERACTIVE`` at most here: an old backlog must not push a newcomer behind all of it); within
  a level, round robin between client keys, then arrival. The round robin is start-time fair
  queueing: each request gets a *tag* when it queues (``waiters.FairTurns``: one more than the
  later of its key's last tag and the tag of the latest granted request of its model and
  priority: its *lane*), and fewer turns since the lane's first queued request go first, so a
  key with 500 queued requests does not push a key with one behind all of them, a key that was
  just served waits its turn, and the heads of two lanes aged to one level tie (the older goes
  first). Waiters without tags (all 0) fall back to their rank in the queue (a key's n-th
  queued request after every other key's (n-1)-th).
- **Weight** (``weight``): what a waiting request is worth when swaps are compared; it doubles
  every 25 levels (batch 1, interactive 4).
- **Pressure** (``pressure``): the weighted waiting time a model's waiters have piled up
  (request-seconds): what not swapping to it costs so far.
- **Keep value** (``keep_value``): what swapping away from a running engine costs the work that
  is about to reach it: its queued waiters plus its model's expected arrivals during the swap
  (from other keys than those waiting for the swap: nobody waits for their own next request), each
  delayed by (at least) the swap, times ``HOLD``. A swap to a model is *held* while that model's
  pressure is below the keep value of the engines it evicts (``held_until``): an idle engine whose
  model gets a request every few seconds is not thrown out for the first request of a rare model.
  A hold is brief: it ends when the pressure (growing with every second waited) reaches the keep
  value, at the wait bound, and at the latest ``HOLD_MAX`` swap costs after the oldest waiter
  arrived, so a hold never costs a request more than one more swap's time.
- **Residence** (``resident_until``): an engine with work of its own serves at least ``RESIDENCE``
  swap costs (at most ``max_wait_s``) before the wait bound may force it out. Without it the
  forced swaps of an overloaded box each cost capacity, the backlog grows, more waiters become
  overdue and more swaps are forced (the collapse the trace bench showed). An interactive
  request forces out an engine that has only batch work queued after ``OUTRANK_RESIDENCE`` swap
  costs (two batch backlogs do not make every interactive request a pair of swaps).
- **Best swap** (``swap_rank``): among the models waiting for a swap, the one with the highest level
  first, then the one with the higher priority of its own (fresh interactive work before batch work
  aged to the same level), then the most waiting weight per second of swap.

The constants were set on ``bench/scheduler_trace.py``'s seed 7 and checked on other seeds
(bench/RESULTS.md).

With swap costs and arrival rates of zero (``decide``'s defaults) no swap is held and nothing
is resident for long: ``decide`` behaves as collation plus the wait bound. The manager passes
learned costs (``learned.SwapCost``, ``server.swap_cost_s`` before any) and arrival rates.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

from lkn.fleet.scheduler_types import Option, Slot, Waiter

BATCH, INTERACTIVE, TOP = 0.0, 50.0, 100.0
CLASSES = {"batch": BATCH, "interactive": INTERACTIVE}
RESIDENCE = 4.0    # swap costs an engine with work serves before the bound may force it out
OUTRANK_RESIDENCE = 1.0  # ... and this many before a higher class forces it out
DOUBLING = 25.0    # levels over which a waiter's weight doubles
MAX_WEIGHT_LEVEL = 1000.0
HOLD = 3.0         # a swap is held until its waiters' pressure reaches this many keep values
HOLD_MAX = 1.0     # a hold lasts at most this many swap costs from the oldest waiter's arrival
EPS = 1e-6         # seconds: a hold or residence that ends within this has ended (float sums)


def level(w: Waiter, now: float, max_wait_s: float) -> float:
    """The waiter's priority raised by ``INTERACTIVE`` for every ``max_wait_s`` waited."""
    if not max_wait_s > 0 or math.isinf(max_wait_s):
        return w.priority
    return w.priority + INTERACTIVE * math.floor(max(0.0, now - w.arrived) / max_wait_s)


def weight(lvl: float) -> float:
    """2 ** (level / DOUBLING); from ``MAX_WEIGHT_LEVEL`` on it grows no more (a request that
    waited for hours would overflow a float, and is top of the queue anyway)."""
    return 2.0 ** (min(lvl, MAX_WEIGHT_LEVEL) / DOUBLING)


def order(waiters: Iterable[Waiter], now: float, max_wait_s: float) -> list[Waiter]:
    """Highest level first; within a level and model, fair-share tag, round robin between keys
    in the queue; then arrival."""
    by_arrival = sorted(waiters, key=lambda w: (w.arrived, w.id))
    # within a queue aging lifts batch work to interactive, no further: an old backlog must not
    # push a newcomer of another key behind all of it (the wait bound is about swaps)
    levels = {w.id: min(level(w, now, max_wait_s), max(w.priority, INTERACTIVE))
              for w in by_arrival}
    seen: dict[tuple[str, float, str], int] = defaultdict(int)
    rank = {}
    lane_start: dict[tuple[str, int], float] = {}
    for w in by_arrival:
        group = (w.model, levels[w.id], w.key)
        rank[w.id] = seen[group]
        seen[group] += 1
        lane = (w.model, lane_of(w.priority))
        lane_start[lane] = min(lane_start.get(lane, w.tag), w.tag)
    # tags count turns within a lane (model, priority): compared as turns since the lane's
    # first queued request, so the heads of two lanes aged to one level tie (arrival decides)

    def turn(w: Waiter) -> float:
        return w.tag - lane_start[(w.model, lane_of(w.priority))]
    return sorted(by_arrival, key=lambda w: (-levels[w.id], turn(w), rank[w.id], w.arrived, w.id))


def lane_of(priority: float) -> int:
    """The fair-share lane of a priority (whole levels: at most 101 lanes a model)."""
    return round(priority)


def swap_cost(stopping: Sequence[Slot], option: Option) -> float:
    """Seconds the box serves nobody: the evicted engines' stops, then the start."""
    return sum(s.stop_s for s in stopping) + option.start_s


def pressure(waiters: Iterable[Waiter], now: float, max_wait_s: float) -> float:
    """Weighted request-seconds the waiters have waited."""
    return sum(weight(level(w, now, max_wait_s)) * max(0.0, now - w.arrived) for w in waiters)


def keep_value(queued: Sequence[Waiter], weighted_rate: float, cost_s: float, now: float,
               max_wait_s: float) -> float:
    """Weighted request-seconds a swap of ``cost_s`` away from an engine would add to the work
    that is about to reach it: its queue and the arrivals expected during the swap
    (``weighted_rate``: its model's arrivals per second, each counted by its weight), times
    ``HOLD``."""
    queued_weight = sum(weight(level(w, now, max_wait_s)) for w in queued)
    return HOLD * (queued_weight + weighted_rate * cost_s) * cost_s


def held_until(waiting: Sequence[Waiter], keep: float, now: float, max_wait_s: float,
               cost_s: float = math.inf) -> float | None:
    """When a swap for ``waiting`` stops being held against a keep value of ``keep``; None if it
    is not held now. Pressure grows by the waiters' total weight every second; the wait bound
    ends a hold too."""
    if not waiting or keep <= 0:
        return None
    have = pressure(waiting, now, max_wait_s)
    growth = sum(weight(level(w, now, max_wait_s)) for w in waiting)
    oldest = min(w.arrived for w in waiting)
    until = min(now + (keep - have) / growth, oldest + max_wait_s, oldest + HOLD_MAX * cost_s)
    # a recheck at the time returned must find the hold over, whatever the float sums say
    return until if until > now + EPS else None


def resident_until(slot: Slot, cost_s: float, max_wait_s: float,
                   factor: float = RESIDENCE) -> float:
    """Until when an engine with work of its own may not be forced out: ``factor`` swap costs
    after it became ready, never more than ``max_wait_s`` (a swap of minutes must not push a
    forced waiter past its queue timeout)."""
    return slot.since + min(factor * cost_s, max_wait_s)


def swap_rank(waiting: Sequence[Waiter], cost_s: float, now: float,
              max_wait_s: float) -> tuple[float, float, float]:
    """Sort key (ascending = better) of a model's waiters competing for a swap: top level, then
    top priority of its own (an interactive request before batch work aged to its level), then
    waiting weight per second of swap."""
    top = max(level(w, now, max_wait_s) for w in waiting)
    work = sum(weight(level(w, now, max_wait_s)) for w in waiting)
    return -top, -max(w.priority for w in waiting), -work / max(cost_s, 1e-3)


def urgency(w: Waiter, now: float, max_wait_s: float) -> tuple[float, float, float, int]:
    """Sort key of single waiters competing for a forced swap: level, own priority, arrival."""
    return -level(w, now, max_wait_s), -w.priority, w.arrived, w.id


def rate_of(rates: Mapping[str, Mapping[str, float]], model: str,
            besides: Iterable[str] = ()) -> float:
    """``model``'s weighted arrivals per second from keys other than ``besides`` (a key's
    own coming requests are no reason to make it wait)."""
    skip = set(besides)
    return sum(max(0.0, r) for key, r in rates.get(model, {}).items() if key not in skip)


def priority_of(value: object, default: float, ceiling: float) -> float:
    """A requested priority (a class name or a number) as a level, raised no higher than
    ``ceiling`` (clients may only lower theirs; admin keys may raise it to ``TOP``).
    Raises ValueError for anything else."""
    if isinstance(value, str) and value in CLASSES:
        wanted = CLASSES[value]
    elif (isinstance(value, (int, float)) and not isinstance(value, bool)
          and -1e9 < value < 1e9):  # (an int of 400 digits is no float: range first)
        wanted = float(value)
    else:
        raise ValueError(f"priority must be one of {sorted(CLASSES)} or a number "
                         f"from {BATCH:g} to {TOP:g}")
    if not BATCH <= wanted <= TOP:
        raise ValueError(f"priority {wanted:g} is outside {BATCH:g}..{TOP:g}")
    return min(wanted, max(ceiling, default))
