"""Every metric lkn keeps, defined in one place, with Prometheus text exposition.

Counters and histograms are updated by the handler and the manager; gauges (engine states, queue
length, requests in flight) are read at scrape time from the live objects.
"""
from __future__ import annotations

import bisect
import threading
from typing import Iterable


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def expose(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {v:g}"


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...],
                 labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts, acc = self._data.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            acc[0] += value

    def count(self, *labels: str) -> int:
        data = self._data.get(labels)
        return sum(data[0]) if data else 0

    def expose(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, acc) in sorted(self._data.items()):
            running = 0
            for bound, c in zip((*self.buckets, float("inf")), counts):
                running += c
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                names = (*self.label_names, "le")
                yield f"{self.name}_bucket{_labels(names, (*labels, le))} {running}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {acc[0]:g}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {running}"


LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ENTROPY = tuple(round(0.05 * i, 2) for i in range(1, 21))


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("lkn_requests_total", "Requests answered, by model, route and "
                                "HTTP status", ("model", "route", "status"))
        self.request_seconds = Histogram("lkn_request_seconds", "Time from arrival to the end "
                                         "of the answer", LATENCY, ("model", "route"))
        self.ttft_seconds = Histogram("lkn_time_to_first_token_seconds", "Time from arrival to "
                                      "the first streamed event", LATENCY, ("model",))
        self.queue_seconds = Histogram("lkn_queue_wait_seconds", "Time a request waited for an "
                                       "engine", LATENCY, ("model",))
        self.probes = Counter("lkn_probe_total", "Entropy probes by model and resulting mode",
                              ("model", "mode"))
        self.probe_entropy = Histogram("lkn_probe_entropy", "Normalized entropy of the probe "
                                       "token", ENTROPY, ("model",))
        self.probe_seconds = Histogram("lkn_probe_seconds", "Time spent in the probe", LATENCY,
                                       ("model",))
        self.interventions = Counter("lkn_interventions_total", "ANALYTIC interventions applied",
                                     ("model", "intervention"))
        self.token_counts = Counter("lkn_token_count_total", "Prompt token counts by method",
                                    ("method",))

    def all(self) -> list[Counter | Histogram]:
        return [v for v in vars(self).values() if isinstance(v, (Counter, Histogram))]

    def expose(self, gauges: Iterable[str] = ()) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.expose())
        lines.extend(gauges)
        return "\n".join(lines) + "\n"
