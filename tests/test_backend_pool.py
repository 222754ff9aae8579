"""BackendPool by tables: breakers fed by reports at given times, balancing per model.

No processes and no sleeps: a fake clock, configs built in memory, in-flight counts from a dict.
"""
from __future__ import annotations

import random
from typing import Any

import pytest

from lkn.config import Config, ModelConfig, build_config
from lkn.fleet.backend_pool import BackendPool
from lkn.ops.events import EventBus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def config(balance: str = "round_robin") -> Config:
    breaker = {"failures": 2, "open_s": 10, "successes": 2}

    def model(name: str) -> dict[str, Any]:
        return {"name": name, "balance": balance, "breaker": breaker,
                "backends": [{"id": "a", "upstream": {"url": f"http://{name}-a/v1"}},
                             {"id": "b", "upstream": {"url": f"http://{name}-b/v1"}},
                             {"id": "c", "upstream": {"url": f"http://{name}-c/v1"}}]}
    return build_config({"models": [model("m"), model("n"),
                                    {"name": "solo", "upstream": {"url": "http://s/v1"}}]})


def backend(cfg: Config, name: str) -> ModelConfig:
    model = cfg.require(name.split("/")[0])
    return next(b for b in model.backends if b.name == name)


# (reports as (time, backend, ok, active), time asked, allowed backends of m, circuit changes)
BREAKER_TABLE = [
    ([], 100, {"m/a", "m/b", "m/c"}, []),
    # one failure: still closed
    ([(100, "m/a", False, False)], 101, {"m/a", "m/b", "m/c"}, [False]),
    # two in a row: open
    ([(100, "m/a", False, False), (101, "m/a", False, False)], 102, {"m/b", "m/c"},
     [False, True]),
    # a success between the failures resets the count
    ([(100, "m/a", False, False), (101, "m/a", True, False), (102, "m/a", False, False)],
     103, {"m/a", "m/b", "m/c"}, [False, False, False]),
    # open for open_s, then half-open: requests flow again as probes
    ([(100, "m/b", False, False), (101, "m/b", False, False)], 110.9, {"m/a", "m/c"},
     [False, True]),
    ([(100, "m/b", False, False), (101, "m/b", False, False)], 111, {"m/a", "m/b", "m/c"},
     [False, True]),
    # half-open and a failure: open again, for another open_s from then
    ([(100, "m/b", False, False), (101, "m/b", False, False), (112, "m/b", False, False)],
     121, {"m/a", "m/c"}, [False, True, True]),
    # half-open and two successes: closed
    ([(100, "m/b", False, False), (101, "m/b", False, False), (112, "m/b", True, False),
      (113, "m/b", True, False)], 114, {"m/a", "m/b", "m/c"}, [False, True, False, True]),
    # an active check that answers counts for nothing; one that fails counts
    ([(100, "m/c", False, True), (101, "m/c", True, True), (102, "m/c", False, True)],
     103, {"m/a", "m/b"}, [False, False, True]),
    # answers while open (requests already under way) change nothing
    ([(100, "m/a", False, False), (101, "m/a", False, False), (102, "m/a", True, False)],
     103, {"m/b", "m/c"}, [False, True, False]),
    # another model's backend of the same id is another breaker
    ([(100, "n/a", False, False), (101, "n/a", False, False)], 102, {"m/a", "m/b", "m/c"},
     [False, True]),
]


@pytest.mark.parametrize("reports,asked,allowed,changes", BREAKER_TABLE)
def test_breakers_by_table(reports: list[tuple[float, str, bool, bool]], asked: float,
                           allowed: set[str], changes: list[bool]) -> None:
    cfg, clock = config(), Clock()
    pool = BackendPool(clock=clock)
    got = []
    for t, name, ok, active in reports:
        clock.now = t
        got.append(pool.report(backend(cfg, name), ok, active=active))
    assert got == changes
    m = cfg.require("m")
    assert {b.name for b in m.backends if pool.allowed(b.name, m.breaker, asked)} == allowed


def test_a_model_with_one_server_has_no_breaker() -> None:
    cfg = config()
    pool = BackendPool(clock=Clock())
    solo = cfg.require("solo")
    assert [pool.report(solo, False) for _ in range(5)] == [False] * 5
    assert pool.breakers == {}


def test_circuit_changes_go_on_the_bus_and_answers_to_the_metrics_hook() -> None:
    cfg, clock, bus = config(), Clock(), EventBus()
    pool = BackendPool(clock=clock, bus=bus)
    seen: list[tuple[str, str, bool]] = []
    pool.on_backend = lambda model, name, ok: seen.append((model, name, ok))
    a = backend(cfg, "m/a")
    pool.report(a, True)
    pool.report(a, False, active=True)  # an active check: not a request, not counted
    pool.report(a, False)               # the second failure in a row: open
    assert seen == [("m", "m/a", True), ("m", "m/a", False)]
    assert [(e["backend"], e["model"], e["state"]) for e in bus.recent(kinds={"breaker"})] == \
        [("m/a", "m", "open")]
    clock.now += 10
    status = {s["backend"]: s["breaker"]["state"]
              for s in pool.status(cfg.require("m"), lambda b: 0)}
    assert status == {"m/a": "half_open", "m/b": "closed", "m/c": "closed"}


def test_round_robin_turns_are_kept_per_model() -> None:
    cfg = config("round_robin")
    pool = BackendPool(clock=Clock())
    m, n = cfg.require("m"), cfg.require("n")
    idle = lambda b: 0  # noqa: E731
    firsts = [(pool.prefer(m, idle)[0], pool.prefer(n, idle)[0]) for _ in range(4)]
    assert firsts == [("m/a", "n/a"), ("m/b", "n/b"), ("m/c", "n/c"), ("m/a", "n/a")]
    assert pool.prefer(m, idle) == ("m/b", "m/c", "m/a")  # the whole order rotates
    assert pool.prefer(cfg.require("solo"), idle) == ()   # one server: nothing to order
    assert pool.prefer(m, idle) == ("m/c", "m/a", "m/b")  # solo took no turn of m's


@pytest.mark.parametrize("load,order", [
    ({"m/a": 0, "m/b": 0, "m/c": 0}, ("m/a", "m/b", "m/c")),
    ({"m/a": 3, "m/b": 1, "m/c": 2}, ("m/b", "m/c", "m/a")),
    ({"m/a": 1, "m/b": 2, "m/c": 1}, ("m/a", "m/c", "m/b")),  # ties: list order
])
def test_least_connections_reads_the_load_it_is_given(load: dict[str, int],
                                                       order: tuple[str, ...]) -> None:
    cfg = config("least_connections")
    pool = BackendPool(clock=Clock())
    assert pool.prefer(cfg.require("m"), lambda b: load[b.name]) == order
    in_flight = {s["backend"]: s["in_flight"]
                 for s in pool.status(cfg.require("m"), lambda b: load[b.name])}
    assert in_flight == load


def test_random_orders_come_from_the_pools_rng() -> None:
    cfg = config("random")
    orders = [BackendPool(clock=Clock(), rng=random.Random(7)).prefer(cfg.require("m"),
                                                                      lambda b: 0)
              for _ in range(2)]
    assert orders[0] == orders[1] and sorted(orders[0]) == ["m/a", "m/b", "m/c"]
