"""Metrics: counted on the call path in plain Python, exposed by prometheus-client.

The call path only adds to counters in a :class:`CallStats` (a few hundred
nanoseconds); a prometheus-client collector turns them into metric families
when ``/metrics`` is scraped. Every worker serves its own ``/metrics``; the
supervisor's serves them all merged, each sample labelled with its worker.

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
- ``sagas_running{kind}``; ``process_*`` (CPU seconds, resident memory) from
  prometheus-client's process collector.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cleave.runtime.host import Host

__all__ = [
    "BUCKETS",
    "CallStats",
    "HostCollector",
    "host_snapshot",
    "merge_snapshots",
    "p99_of",
    "refresher",
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


def served_stats(host: Host) -> dict[tuple[str, str], CallStats]:
    """Calls served by the host's services: remote ones (counted by the dispatchers) and
    in-process ones (counted once, by the caller's side, in the router)."""
    out: dict[tuple[str, str], CallStats] = {}
    for name, dispatcher in host.dispatchers.items():
        for method, stats in dispatcher.stats.items():
            out[(name, method)] = _copy(stats)
    for (_caller, qualname), stats in host.router.stats.items():
        service, method = qualname.split(".", 1)
        into = out.get((service, method))
        if into is not None and stats.count:
            into.count += stats.count
            into.ok += stats.ok
            into.total += stats.total
            into.buckets = [a + b for a, b in zip(into.buckets, stats.buckets, strict=True)]
            for k, v in stats.failures.items():
                into.failures[k] = into.failures.get(k, 0) + v
    return out


def _copy(stats: CallStats) -> CallStats:
    c = CallStats()
    c.count, c.ok, c.total, c.in_flight = stats.count, stats.ok, stats.total, stats.in_flight
    c.buckets = list(stats.buckets)
    c.failures = dict(stats.failures)
    return c


class HostCollector(Collector):
    """The metrics of one :class:`~cleave.runtime.host.Host`, read at scrape time."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def collect(self) -> Iterator[Metric]:
        host = self.host
        calls = CounterMetricFamily(
            "cleave_calls",
            "Calls made, by the caller's side.",
            labels=["caller", "service", "method", "outcome"],
        )
        call_time = HistogramMetricFamily(
            "cleave_call_duration_seconds",
            "Duration of calls made, caller's side.",
            labels=["caller", "service", "method"],
        )
        for (caller, qualname), stats in host.router.stats.items():
            service, method = qualname.split(".", 1)
            for outcome, n in stats.outcomes.items():
                calls.add_metric([caller, service, method, outcome], n)
            call_time.add_metric([caller, service, method], stats.cumulative(), stats.total)
        yield calls
        yield call_time

        served = CounterMetricFamily(
            "cleave_served",
            "Calls served, by the callee's side.",
            labels=["service", "method", "outcome"],
        )
        served_time = HistogramMetricFamily(
            "cleave_served_duration_seconds",
            "Duration of calls served.",
            labels=["service", "method"],
        )
        in_flight = GaugeMetricFamily(
            "cleave_in_flight", "Calls being served now.", labels=["service"]
        )
        busy: dict[str, int] = {}
        for (name, method), stats in served_stats(host).items():
            busy[name] = busy.get(name, 0) + stats.in_flight
            for outcome, n in stats.outcomes.items():
                served.add_metric([name, method, outcome], n)
            served_time.add_metric([name, method], stats.cumulative(), stats.total)
        for name, n in busy.items():
            in_flight.add_metric([name], n)
        yield served
        yield served_time
        yield in_flight

        state = GaugeMetricFamily(
            "cleave_breaker_state",
            "Circuit state: 0 closed, 1 half-open, 2 open.",
            labels=["caller", "service"],
        )
        opened = CounterMetricFamily(
            "cleave_breaker_opened", "Times a circuit opened.", labels=["caller", "service"]
        )
        for (caller, target), b in host.router.breakers.items():
            state.add_metric([caller, target], {"closed": 0, "half_open": 1}.get(b.state, 2))
            opened.add_metric([caller, target], b.opened)
        yield state
        yield opened
        rejected = CounterMetricFamily(
            "cleave_bulkhead_rejected",
            "Calls refused because too many were in flight.",
            labels=["caller", "service"],
        )
        active = GaugeMetricFamily(
            "cleave_bulkhead_in_flight",
            "Calls from one service to another in flight now.",
            labels=["caller", "service"],
        )
        for (caller, target), bh in host.router.bulkheads.items():
            rejected.add_metric([caller, target], bh.rejected)
            active.add_metric([caller, target], bh.active)
        yield rejected
        yield active

        backlog = GaugeMetricFamily(
            "cleave_outbox_backlog", "Events waiting in the outbox.", labels=["service"]
        )
        published = CounterMetricFamily(
            "cleave_events_published", "Events relayed to the broker.", labels=["service"]
        )
        for name, relay in host.relays.items():
            backlog.add_metric([name], relay.last_backlog)
            published.add_metric([name], relay.published)
        yield backlog
        yield published

        handled = CounterMetricFamily(
            "cleave_events_handled", "Event deliveries, by outcome.", labels=["consumer", "outcome"]
        )
        pending = GaugeMetricFamily(
            "cleave_consumer_pending",
            "Events not yet handled by a consumer (its lag).",
            labels=["consumer"],
        )
        redelivered = CounterMetricFamily(
            "cleave_consumer_redeliveries",
            "Deliveries that were not the first.",
            labels=["consumer"],
        )
        for c in host.consumers:
            for outcome, n in (
                ("ok", c.processed),
                ("duplicate", c.duplicates),
                ("failed", c.failures),
                ("dead_lettered", c.dead_lettered),
            ):
                handled.add_metric([c.name, outcome], n)
            pending.add_metric([c.name], c.last_pending)
            redelivered.add_metric([c.name], c.redeliveries)
        yield handled
        yield pending
        yield redelivered

        sagas = GaugeMetricFamily(
            "cleave_sagas_running", "Sagas not finished yet.", labels=["kind"]
        )
        for runner in host.sagas:
            sagas.add_metric([runner.kind], runner.last_pending)
        yield sagas


def registry_for(*collectors: Collector) -> CollectorRegistry:
    """A registry with the process collector and ``collectors``."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    for c in collectors:
        registry.register(c)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)


def refresher(host: Host) -> Callable[[], Any]:
    """A coroutine function that updates the values read from databases and the broker."""

    async def refresh() -> None:
        for relay in host.relays.values():
            relay.last_backlog = await relay.backlog()
        for c, sub in host.consumer_subscriptions:
            c.last_pending = await sub.pending()
        for runner in host.sagas:
            runner.last_pending = await runner.pending()

    return refresh


def host_snapshot(host: Host) -> dict[str, Any]:
    """Everything the dashboard needs from one host, as plain data (refresh first)."""
    import os

    times = os.times()
    calls = []
    for (caller, qualname), stats in host.router.stats.items():
        service, method = qualname.split(".", 1)
        calls.append({"caller": caller, "service": service, "method": method, **stats.snapshot()})
    served = [
        {"service": name, "method": method, "in_flight": stats.in_flight, **stats.snapshot()}
        for (name, method), stats in served_stats(host).items()
    ]
    consumers = [
        {
            "name": c.name,
            "service": c.service,
            "event": c.event.__topic__,
            "source": host.app.event_sources[c.event].name,
            "processed": c.processed,
            "duplicates": c.duplicates,
            "failures": c.failures,
            "dead_lettered": c.dead_lettered,
            "redeliveries": c.redeliveries,
            "pending": c.last_pending,
        }
        for c in host.consumers
    ]
    return {
        "services": host.names,
        "calls": calls,
        "served": served,
        "consumers": consumers,
        "outbox": {name: relay.last_backlog for name, relay in host.relays.items()},
        "published": {name: relay.published for name, relay in host.relays.items()},
        "sagas": {r.kind: r.last_pending for r in host.sagas},
        "breakers": [
            {"caller": caller, "service": target, "state": b.state, "opened": b.opened}
            for (caller, target), b in host.router.breakers.items()
        ],
        "process": {
            "pid": os.getpid(),
            "cpu_seconds": times.user + times.system,
            "rss_bytes": _rss(),
        },
    }


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot for a whole app from its hosts' (replicas' counts add up)."""
    calls: dict[tuple[str, str, str], dict[str, Any]] = {}
    served: dict[tuple[str, str], dict[str, Any]] = {}
    consumers: dict[str, dict[str, Any]] = {}
    merged: dict[str, Any] = {"outbox": {}, "published": {}, "sagas": {}, "breakers": []}

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
        for field in ("outbox", "published", "sagas"):
            for k, v in snap.get(field, {}).items():
                merged[field][k] = max(merged[field].get(k, 0), v)
        merged["breakers"].extend(snap.get("breakers", []))
    merged["calls"] = list(calls.values())
    merged["served"] = list(served.values())
    merged["consumers"] = list(consumers.values())
    return merged


def _rss() -> int:
    """Resident memory of this process now (Linux), in bytes; 0 if unknown."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
