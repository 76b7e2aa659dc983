"""What a :class:`~cleave.runtime.host.Host` shows: its Prometheus collector and its snapshot.

The runtime owns the numbers (routers, dispatchers, relays, consumers, sagas);
this module reads them into the metric families of
:mod:`cleave.observability.metrics` at scrape time, and into the plain
snapshot the dashboard merges across hosts. Observability depends on neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cleave.observability.metrics import CallStats

if TYPE_CHECKING:
    from cleave.runtime.host import Host

__all__ = ["HostCollector", "host_snapshot", "refresher", "served_stats"]


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

        deprecated = CounterMetricFamily(
            "cleave_deprecated_calls",
            "Uses of deprecated methods (calls) and events (deliveries), by caller or consumer.",
            labels=["kind", "service", "version", "name", "caller"],
        )
        for (kind, service, major, name, caller), n in host.deprecations.counts.items():
            deprecated.add_metric([kind, service, str(major), name, caller], n)
        yield deprecated

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
        stuck = GaugeMetricFamily(
            "cleave_sagas_stuck",
            "Sagas whose compensation failed past its retries; they wait for an operator.",
            labels=["kind"],
        )
        for runner in host.sagas:
            stuck.add_metric([runner.kind], runner.last_stuck)
        yield stuck


def refresher(host: Host) -> Callable[[], Any]:
    """A coroutine function that updates the values read from databases and the broker."""

    async def refresh() -> None:
        for relay in host.relays.values():
            relay.last_backlog = await relay.backlog()
        for c, sub in host.consumer_subscriptions:
            c.last_pending = await sub.pending()
        for runner in host.sagas:
            runner.last_pending = await runner.pending()
            runner.last_stuck = await runner.stuck()

    return refresh


def host_snapshot(host: Host) -> dict[str, Any]:
    """Everything the dashboard needs from one host, as plain data (refresh first)."""
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
        "sagas_stuck": {r.kind: r.last_stuck for r in host.sagas},
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


def _rss() -> int:
    """Resident memory of this process now (Linux), in bytes; 0 if unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
