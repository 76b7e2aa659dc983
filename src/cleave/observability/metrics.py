"""Metrics: counted on the call path in plain Python, exposed by prometheus-client.

The call path only adds to counters in a :class:`CallStats` (a few hundred
nanoseconds); a prometheus-client collector turns them into metric families
when ``/metrics`` is scraped. Every worker serves its own ``/metrics``; the
supervisor's serves them all merged, each sample labelled with its worker.
The runtime hands its numbers over (:mod:`cleave.runtime.hostmetrics` reads a
host's counters into these families); this module knows nothing of hosts.

Metrics (all prefixed ``cleave_``):

- ``calls_total{caller,service,method,outcome}`` and
  ``call_duration_seconds`` (histogram): calls made, by the caller's side;
  ``outcome`` is ``ok`` or the error kind.
- ``served_total{service,method,outcome}``, ``served_duration_seconds``,
  ``in_flight{service}``: calls served, by the callee's side (calls from the
  same process are counted once, on the caller's side, and show here too).
- ``bulkhead_in_flight{caller,service}``: calls from one service to another
  in flight now.
- ``breaker_state{caller,service}`` (0 closed, 1 half-open, 2 open),
  ``breaker_opened_total``, ``bulkhead_rejected_total``.
- ``outbox_backlog{service}``, ``events_published_total{service}``.
- ``events_handled_total{consumer,outcome}`` (``ok``, ``duplicate``, ``failed``,
  ``dead_lettered``), ``consumer_pending{consumer}`` (lag),
  ``consumer_redeliveries_total{consumer}``.
- ``sagas_running{kind}``, ``sagas_stuck{kind}`` (a compensation gave up: an
  operator must look); ``process_*`` (CPU seconds, resident memory) from
  prometheus-client's process collector.
- ``spans_exported_total``, ``spans_dropped_total{reason}`` (``queue_full``,
  ``export_failed``): the OTLP export of this process (zero without one).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cleave.observability.otlp import OtlpExport

__all__ = [
    "BUCKETS",
    "CallStats",
    "SpanCollector",
    "merge_snapshots",
    "p99_of",
    "registry_for",
    "render",
]

#: Histogram bounds in seconds (the last bucket is +Inf).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CallStats:
    """Counts and latencies of one kind of call (one caller and method, or one method served)."""

    __slots__ = ("buckets", "count", "failures", "in_flight", "ok", "total")

    def __init__(self) -> None:
        self.count = 0
        self.ok = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.failures: dict[str, int] = {}
        self.in_flight = 0

    def record_ok(self, seconds: float) -> None:
        self.count += 1
        self.ok += 1
        self.total += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1

    def record(self, seconds: float, outcome: str) -> None:
        if outcome == "ok":
            self.record_ok(seconds)
            return
        self.count += 1
        self.total += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.failures[outcome] = self.failures.get(outcome, 0) + 1

    @property
    def outcomes(self) -> dict[str, int]:
        return {"ok": self.ok, **self.failures} if self.ok else dict(self.failures)

    @property
    def errors(self) -> int:
        return self.count - self.ok

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), self.buckets, strict=True):
            running += n
            out.append((bound, float(running)))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "errors": self.errors,
            "buckets": list(self.buckets),
            "total": self.total,
        }


def p99_of(buckets: list[int]) -> float | None:
    """The 99th percentile bound of a histogram's (non-cumulative) bucket counts."""
    total = sum(buckets)
    if not total:
        return None
    target, running = 0.99 * total, 0
    for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=True):
        running += n
        if running >= target:
            return bound
    return float("inf")


class SpanCollector(Collector):
    """Spans this process exported over OTLP, and dropped (by reason), read at scrape time."""

    def __init__(self, export_of: Callable[[], OtlpExport | None] | None = None) -> None:
        # By default the export of this process's tracer, which starts after the registry.
        self.export_of = export_of or _tracer_export

    def collect(self) -> Iterator[Metric]:
        export = self.export_of()
        exported = CounterMetricFamily(
            "cleave_spans_exported", "Spans sent to the OTLP collector and accepted."
        )
        exported.add_metric([], export.exported if export is not None else 0)
        dropped = CounterMetricFamily(
            "cleave_spans_dropped",
            "Spans recorded but never exported: queue_full (the export did not keep up; "
            "raise OTEL_BSP_MAX_QUEUE_SIZE) or export_failed (the collector refused or "
            "could not be reached).",
            labels=["reason"],
        )
        for reason in ("queue_full", "export_failed"):
            dropped.add_metric([reason], export.dropped[reason] if export is not None else 0)
        yield exported
        yield dropped


def _tracer_export() -> OtlpExport | None:
    from cleave.observability.tracing import tracer

    return tracer.export


def registry_for(*collectors: Collector) -> CollectorRegistry:
    """A registry with the process and span collectors and ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(SpanCollector())
    for c in collectors:
        registry.register(c)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for a whole app from its hosts' (replicas' counts add up)."""
    calls: dict[tuple[str, str, str], dict[str, Any]] = {}
    served: dict[tuple[str, str], dict[str, Any]] = {}
    consumers: dict[str, dict[str, Any]] = {}
    merged: dict[str, Any] = {
        "outbox": {},
        "published": {},
        "sagas": {},
        "sagas_stuck": {},
        "breakers": [],
    }

    def add(into: dict[str, Any], row: dict[str, Any], keys: tuple[str, ...]) -> None:
        for k in keys:
            into[k] = into.get(k, 0) + row.get(k, 0)

    for snap in snapshots:
        for row in snap.get("calls", []):
            key = (row["caller"], row["service"], row["method"])
            into = calls.setdefault(
                key,
                {
                    **row,
                    "count": 0,
                    "errors": 0,
                    "total": 0.0,
                    "buckets": [0] * len(row["buckets"]),
                },
            )
            add(into, row, ("count", "errors", "total"))
            into["buckets"] = [a + b for a, b in zip(into["buckets"], row["buckets"], strict=True)]
        for row in snap.get("served", []):
            key2 = (row["service"], row["method"])
            into = served.setdefault(
                key2,
                {
                    **row,
                    "count": 0,
                    "errors": 0,
                    "total": 0.0,
                    "in_flight": 0,
                    "buckets": [0] * len(row["buckets"]),
                },
            )
            add(into, row, ("count", "errors", "total", "in_flight"))
            into["buckets"] = [a + b for a, b in zip(into["buckets"], row["buckets"], strict=True)]
        for row in snap.get("consumers", []):
            into = consumers.setdefault(
                row["name"],
                {
                    **row,
                    "processed": 0,
                    "duplicates": 0,
                    "failures": 0,
                    "dead_lettered": 0,
                    "redeliveries": 0,
                    "pending": 0,
                },
            )
            add(into, row, ("processed", "duplicates", "failures", "dead_lettered", "redeliveries"))
            into["pending"] = max(into["pending"], row.get("pending", 0))  # a shared consumer
        for field in ("outbox", "published", "sagas", "sagas_stuck"):
            for k, v in snap.get(field, {}).items():
                merged[field][k] = max(merged[field].get(k, 0), v)
        merged["breakers"].extend(snap.get("breakers", []))
    merged["calls"] = list(calls.values())
    merged["served"] = list(served.values())
    merged["consumers"] = list(consumers.values())
    return merged
