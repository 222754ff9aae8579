"""Which backend of a model a request should go to first (pure; tested by tables).

``order()`` returns the backends in the order to try: the scheduler grants the first one with a
free slot, a retry moves down the list.

- ``round_robin``: each request starts one further along the list.
- ``least_connections``: the fewest requests in flight first (ties: list order).
- ``random``: a shuffle.
- ``weighted``: a weighted shuffle (``weight`` per backend): a backend of weight 2 comes first
  twice as often as one of weight 1.
- ``sticky``: rendezvous hashing of the request's key (its ``user`` field or a configured
  header): the same key always prefers the same backend, and losing a backend moves only the
  keys it had; without a key, round robin.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Backend:
    name: str
    weight: int = 1
    in_flight: int = 0


def _score(key: str, backend: Backend) -> float:
    """Rendezvous (highest random weight) score, weighted: -w / ln(u) with u in (0, 1)."""
    import math
    digest = hashlib.sha256(f"{key}\0{backend.name}".encode()).digest()
    u = (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 2)
    return -backend.weight / math.log(u)


def order(strategy: str, backends: Sequence[Backend], *, turn: int, rng: random.Random,
          key: str | None = None) -> list[str]:
    names = [b.name for b in backends]
    if not names:
        return []
    if strategy == "least_connections":
        return [b.name for b in sorted(backends, key=lambda b: b.in_flight)]
    if strategy == "random":
        rng.shuffle(names)
        return names
    if strategy == "weighted":
        # Efraimidis-Spirakis: sort by u ** (1 / w), descending.
        keyed = sorted(backends, key=lambda b: rng.random() ** (1.0 / max(b.weight, 1)),
                       reverse=True)
        return [b.name for b in keyed]
    if strategy == "sticky" and key:
        return [b.name for b in sorted(backends, key=lambda b: _score(key, b), reverse=True)]
    start = turn % len(names)  # round_robin, and sticky without a key
    return names[start:] + names[:start]
