"""Every metric lkn keeps, defined in one place, exposed with prometheus-client.

Counters and histograms are updated by the handler; what describes live objects (engine states,
queue length, requests in flight, failures) is read at scrape time by ``LiveCollector`` from a
snapshot function the server registers, so it can never drift from the objects themselves.
Each ``Metrics`` has its own registry: several gateways in one process (the tests) never share
series. Process metrics (CPU, RSS, open files) come from prometheus-client's own collector.

The names are stable and listed in the README.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lkn.ops.usage import Usage

# No *_created series: they double every counter and nobody here reads them.
prometheus_client.disable_created_metrics()

# The classic text format: every Prometheus (and every other scraper) reads it, and lkn's metric
# names need none of the newer format's escaping.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ENTROPY = tuple(round(0.05 * i, 2) for i in range(1, 21))
TOKENS_PER_SECOND = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)


class Counter:
    """A labelled counter called with positional label values, as lkn's code does."""

    def __init__(self, registry: CollectorRegistry, name: str, help: str,
                 labels: tuple[str, ...] = ()) -> None:
        self._registry, self.name, self.label_names = registry, name, labels
        self._metric = prometheus_client.Counter(name, help, labels, registry=registry)
        self._children: dict[tuple[str, ...], Any] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        _child(self._metric, self._children, labels).inc(amount)

    def value(self, *labels: str) -> float:
        sample = self._registry.get_sample_value(
            self.name if self.name.endswith("_total") else f"{self.name}_total",
            dict(zip(self.label_names, labels)))
        return sample or 0.0

    def total(self) -> float:
        return sum(s.value for m in self._metric.collect() for s in m.samples
                   if s.name.endswith("_total"))


class Histogram:
    def __init__(self, registry: CollectorRegistry, name: str, help: str,
                 buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        self._registry, self.name, self.label_names = registry, name, labels
        self._metric = prometheus_client.Histogram(name, help, labels, buckets=buckets,
                                                   registry=registry)
        self._children: dict[tuple[str, ...], Any] = {}

    def observe(self, value: float, *labels: str) -> None:
        _child(self._metric, self._children, labels).observe(value)

    def count(self, *labels: str) -> int:
        sample = self._registry.get_sample_value(f"{self.name}_count",
                                                 dict(zip(self.label_names, labels)))
        return int(sample or 0)


def _child(metric: Any, children: dict[tuple[str, ...], Any], labels: tuple[str, ...]) -> Any:
    """The labelled series, looked up once per label set: prometheus-client's ``labels()``
    validates and locks on every call, a cost paid per request otherwise."""
    if not labels:
        return metric
    child = children.get(labels)
    if child is None:
        child = children[labels] = metric.labels(*labels)
    return child


Snapshot = Callable[[], dict[str, Any]]


class LiveCollector(Collector):
    """Gauges (and the manager's own counters) read from the live objects at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        engines = [e for e in snap["engines"] if not e["retired"]]
        up = GaugeMetricFamily("lkn_engine_up", "Engine state (1 for the current state)",
                               labels=["engine", "state"])
        failed = GaugeMetricFamily("lkn_engine_failed", "Engine variants that are FAILED "
                                   "(fast 503 until retried)", labels=["engine"])
        crashes = CounterMetricFamily("lkn_engine_crashes", "Engine exits nobody asked for",
                                      labels=["engine"])
        for e in snap["engines"]:
            up.add_metric([e["key"], e["state"]], 1)
        for e in engines:
            failed.add_metric([e["key"]], int(e["failures"]["failed"]))
            crashes.add_metric([e["key"]], e["crashes"])
        yield up
        yield failed
        yield crashes
        yield GaugeMetricFamily("lkn_in_flight", "Requests being answered",
                                value=snap["in_flight"])
        yield GaugeMetricFamily("lkn_queued", "Requests waiting for an engine",
                                value=snap["queued"])
        yield CounterMetricFamily("lkn_engine_starts", "Engine process starts (wakes from "
                                  "sleep not counted)", value=snap["starts"])
        yield CounterMetricFamily("lkn_engine_start_failures", "Engine starts that failed",
                                  value=snap["start_failures"])
        yield from _cache_metrics(snap.get("cache", []), snap.get("cache_dropped", {}))
        yield from _activity_metrics(snap.get("activity"))
        yield GaugeMetricFamily("lkn_config_generation", "Config generation (1 at start, +1 "
                                "per reload)", value=snap["generation"])


def _activity_metrics(activity: dict[str, Any] | None) -> Iterable[Metric]:
    """The activity log's health: a full or read-only disk costs rows, never requests."""
    if activity is None:
        return
    yield GaugeMetricFamily("lkn_activity_available", "The activity log can be written (1) "
                            "or not (0: its rows are dropped)", value=int(activity["available"]))
    yield GaugeMetricFamily("lkn_activity_pending", "Activity rows waiting for the writer",
                            value=activity["pending"])
    yield CounterMetricFamily("lkn_activity_rows_written", "Activity rows written",
                              value=activity["written"])
    yield CounterMetricFamily("lkn_activity_rows_dropped", "Activity rows lost (a failed "
                              "write, a full batch, an unavailable log)",
                              value=activity["dropped"])
    yield CounterMetricFamily("lkn_activity_write_errors", "Failed activity writes",
                              value=activity["write_errors"])


def _cache_metrics(stores: list[dict[str, Any]], dropped: dict[str, int]) -> Iterable[Metric]:
    held = GaugeMetricFamily("lkn_cache_bytes", "Bytes the response cache holds (answers, keys "
                             "and a fixed overhead per entry)", labels=["model"])
    entries = GaugeMetricFamily("lkn_cache_entries", "Answers in the response cache",
                                labels=["model"])
    evictions = CounterMetricFamily("lkn_cache_evictions", "Cache entries removed: size (LRU), "
                                    "ttl (expired) or reload (the model's config changed)",
                                    labels=["model", "reason"])
    for s in stores:
        held.add_metric([s["model"]], s["bytes"])
        entries.add_metric([s["model"]], s["entries"])
        for reason, n in s["evictions"].items():
            evictions.add_metric([s["model"], reason], n)
    for model, n in dropped.items():
        evictions.add_metric([model, "reload"], n)
    yield held
    yield entries
    yield evictions


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter(r, "lkn_requests_total", "Requests answered, by model, route, "
                                "HTTP status, the client's API (openai, responses, "
                                "anthropic, ollama; llamacpp: llama-server's own endpoints) "
                                "and the client key's id", ("model", "route", "status", "api",
                                                            "key"))
        self.request_seconds = Histogram(r, "lkn_request_seconds", "Time from arrival to the end "
                                         "of the answer", LATENCY, ("model", "route", "api"))
        self.ttft_seconds = Histogram(r, "lkn_time_to_first_token_seconds", "Time from arrival "
                                      "to the first streamed event", LATENCY, ("model",))
        self.queue_seconds = Histogram(r, "lkn_queue_wait_seconds", "Time a request waited for "
                                       "an engine", LATENCY, ("model",))
        self.probes = Counter(r, "lkn_probe_total", "Entropy probes by model and resulting mode",
                              ("model", "mode"))
        self.probe_entropy = Histogram(r, "lkn_probe_entropy", "Normalized entropy of the probe "
                                       "token", ENTROPY, ("model",))
        self.probe_seconds = Histogram(r, "lkn_probe_seconds", "Time spent in the probe",
                                       LATENCY, ("model",))
        self.probe_tokens = Counter(r, "lkn_probe_tokens_total", "Tokens the probe had the "
                                    "engine evaluate (prefill), generate (decode), and of those "
                                    "the answers kept instead of generating them again (kept)",
                                    ("model", "phase"))
        self.interventions = Counter(r, "lkn_interventions_total", "ANALYTIC interventions "
                                     "applied", ("model", "intervention"))
        self.backend_requests = Counter(r, "lkn_backend_requests_total", "Answers of each "
                                        "backend before the first byte: ok, or failed (connect "
                                        "error, timeout, 5xx, 429)", ("model", "backend",
                                                                      "outcome"))
        self.retries = Counter(r, "lkn_backend_retries_total", "Requests retried on another "
                               "backend after one failed before the first byte", ("model",))
        self.fallbacks = Counter(r, "lkn_fallbacks_total", "Requests another model answered "
                                 "because the asked one failed before the first byte",
                                 ("model", "to"))
        self.escalations = Counter(r, "lkn_escalations_total", "Requests the homeostat "
                                   "escalated, by the model asked for and the model that "
                                   "answered", ("model", "to"))
        self.cache_requests = Counter(r, "lkn_cache_requests_total", "Response cache lookups "
                                      "by model and result (hit, miss, bypass)",
                                      ("model", "result"))
        self.token_counts = Counter(r, "lkn_token_count_total", "Prompt token counts by method",
                                    ("method",))
        self.prompt_tokens = Counter(r, "lkn_prompt_tokens_total", "Prompt tokens of answered "
                                     "requests, from the engine's usage", ("model", "key"))
        self.completion_tokens = Counter(r, "lkn_completion_tokens_total", "Completion tokens "
                                         "generated, from the engine's usage", ("model", "key"))
        self.tokens_per_second = Histogram(r, "lkn_tokens_per_second", "Completion tokens per "
                                           "second of generation, per answer", TOKENS_PER_SECOND,
                                           ("model",))
        self.client_stalls = Counter(r, "lkn_client_stalls_total", "Clients dropped because "
                                     "they took no data for stream_idle_timeout_s (they "
                                     "stopped reading)", ("model",))

    def observe_usage(self, model: str, usage: Usage | None, key: str = "") -> None:
        """An answer's usage, by model and by the client key's id ('' for none)."""
        if usage is None:
            return
        if usage.prompt_tokens:
            self.prompt_tokens.inc(model, key, amount=usage.prompt_tokens)
        if usage.completion_tokens:
            self.completion_tokens.inc(model, key, amount=usage.completion_tokens)
        if usage.tokens_per_second is not None:
            self.tokens_per_second.observe(usage.tokens_per_second, model)

    def watch(self, snapshot: Snapshot) -> None:
        """Read the live gauges from ``snapshot()`` at every scrape."""
        self.registry.register(LiveCollector(snapshot))

    def expose(self) -> bytes:
        return generate_latest(self.registry)
