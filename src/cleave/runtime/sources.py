"""Where the dashboard's numbers come from, in each placement.

The runtime hands one of these to the dashboard, which knows only its
``Source`` protocol (:mod:`cleave.observability.dashboard`): observability
never imports the runtime.

- :class:`LocalSource`: the monolith's one host, read in-process.
- :class:`FleetSource`: the supervisor of ``cleave up``, asking every worker
  (``/stats``, ``/spans``, ``/metrics`` on their admin ports) and merging.

Dead letters come from the consuming services' databases in both (see
:mod:`cleave.runtime.dlq`): the monolith's host has them open; the
supervisor opens them from the plan, as ``cleave dlq`` does.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from cleave.observability.metrics import merge_snapshots, registry_for, render
from cleave.observability.tracing import tracer
from cleave.runtime.dlq import AppDeadLetters
from cleave.runtime.hostmetrics import HostCollector, host_snapshot, refresher

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from cleave.runtime.host import Host
    from cleave.runtime.supervisor import Child, Supervisor
    from cleave.transport.base import Broker

__all__ = ["FleetSource", "LocalSource"]


class LocalSource:
    """The whole app in this process (``cleave run``)."""

    def __init__(self, host: Host, broker: Broker, *, version: str) -> None:
        self.host = host
        self.broker = broker
        self.version = version
        self.started = time.time()
        self.registry = registry_for(HostCollector(host))
        self.refresh = refresher(host)

    async def processes(self) -> list[dict[str, Any]]:
        status = "ready" if self.host.state.value == "running" else self.host.state.value
        uptime = round(time.time() - self.started, 1)
        names = [*self.host.names, *(["gateway"] if self.host.app.gateway else [])]
        return [
            {
                "service": name,
                "replica": 0,
                "pid": os.getpid(),
                "group": "monolith",
                "status": status,
                "uptime_s": uptime,
                "restarts": 0,
                "version": self.version,
            }
            for name in names
        ]

    async def snapshots(self) -> list[dict[str, Any]]:
        await self.refresh()
        return [host_snapshot(self.host)]

    async def spans(self, query: str, limit: int) -> list[dict[str, Any]]:
        return tracer.recent(query, limit)

    async def trace(self, trace_id: str) -> list[dict[str, Any]]:
        return tracer.trace(trace_id)

    async def dead_letters(self) -> list[dict[str, Any]]:
        return await _dead_letters(AppDeadLetters.of_host(self.host))

    async def replay_dead_letters(
        self, ids: list[str] | None, service: str | None
    ) -> list[dict[str, Any]]:
        return await _replay(AppDeadLetters.of_host(self.host), ids, service)

    async def purge_dead_letters(
        self, ids: list[str] | None, service: str | None
    ) -> list[dict[str, Any]]:
        return await _purge(AppDeadLetters.of_host(self.host), ids, service)

    async def metrics(self) -> bytes:
        await self.refresh()
        return render(self.registry)


class FleetSource:
    """Every worker of a ``cleave up``, through their admin ports.

    A worker that goes (a deploy, a scale down, a crash) takes its counters and
    its spans with it, but the app's history must not go back: the counters it
    last reported stay in the totals (``_retired``, counters only: its backlog
    and in-flight calls are gone with it), and the spans of a worker stopped on
    purpose are fetched just before it stops (``keep``) and kept, bounded, so a
    trace keeps its spans from the old workers.
    """

    def __init__(self, supervisor: Supervisor, *, spans: int = 20_000) -> None:
        self.supervisor = supervisor
        #: The last snapshot of each worker process, by pid.
        self._last: dict[int, dict[str, Any]] = {}
        #: What workers that are gone had counted, merged (counters only).
        self._retired: dict[str, Any] = {}
        #: Spans recorded by workers stopped on purpose.
        self._kept: collections.deque[dict[str, Any]] = collections.deque(maxlen=spans)

    async def keep(self, children: list[Child]) -> None:
        """Fetch the spans of ``children``, about to stop, to keep showing them."""
        client = self.supervisor.admin_http

        async def one(child: Child) -> list[dict[str, Any]]:
            if child.admin_port is None:
                return []
            url = f"http://127.0.0.1:{child.admin_port}/spans?limit={self._kept.maxlen}"
            try:
                resp = await client.get(url, timeout=3)
                resp.raise_for_status()
                spans: list[dict[str, Any]] = resp.json()
                return spans
            except (httpx.HTTPError, ValueError):
                return []

        for spans in await asyncio.gather(*(one(c) for c in children)):
            self._kept.extend(spans)

    def _workers(self) -> list[Child]:
        return [
            c
            for c in self.supervisor.children
            if c.status in ("ready", "draining") and c.admin_port is not None
        ]

    async def _each(self, path: str, *, as_json: bool = True) -> list[tuple[Child, Any]]:
        client = self.supervisor.admin_http

        async def one(child: Child) -> tuple[Child, Any]:
            try:
                resp = await client.get(f"http://127.0.0.1:{child.admin_port}{path}", timeout=3)
                resp.raise_for_status()
                return child, resp.json() if as_json else resp.text
            except (httpx.HTTPError, ValueError):
                return child, None

        answers = await asyncio.gather(*(one(c) for c in self._workers()))
        return [(c, a) for c, a in answers if a is not None]

    async def processes(self) -> list[dict[str, Any]]:
        return self.supervisor.processes()

    async def snapshots(self) -> list[dict[str, Any]]:
        answered: dict[int, dict[str, Any]] = {}
        for _, snap in await self._each("/stats"):
            answered[int(snap.get("process", {}).get("pid", 0))] = snap
        self._last.update(answered)
        running = {c.pid for c in self.supervisor.children if c.pid is not None}
        gone = [pid for pid in self._last if pid not in running]
        if gone:
            counted = [self._retired, *(_counters_only(self._last.pop(pid)) for pid in gone)]
            self._retired = _counters_only(merge_snapshots(counted))
        # A worker that did not answer this time still counts what it last reported.
        return [*self._last.values(), *([self._retired] if self._retired else [])]

    async def spans(self, query: str, limit: int) -> list[dict[str, Any]]:
        path = f"/spans?q={httpx.QueryParams({'q': query})['q']}&limit={limit}"
        live = [s for _, spans in await self._each(path) for s in spans]
        return _unique([*live, *(s for s in self._kept if _matches(s, query))])

    async def trace(self, trace_id: str) -> list[dict[str, Any]]:
        live = [s for _, spans in await self._each(f"/spans?trace_id={trace_id}") for s in spans]
        return _unique([*live, *(s for s in self._kept if s["trace_id"] == trace_id)])

    # Dead letters are in the services' databases: opened for each request, so a
    # service whose database appears later is seen, and nothing stays open.
    async def dead_letters(self) -> list[dict[str, Any]]:
        async with AppDeadLetters.open(self.supervisor.loaded) as letters:
            return await _dead_letters(letters)

    async def replay_dead_letters(
        self, ids: list[str] | None, service: str | None
    ) -> list[dict[str, Any]]:
        async with AppDeadLetters.open(self.supervisor.loaded) as letters:
            return await _replay(letters, ids, service)

    async def purge_dead_letters(
        self, ids: list[str] | None, service: str | None
    ) -> list[dict[str, Any]]:
        async with AppDeadLetters.open(self.supervisor.loaded) as letters:
            return await _purge(letters, ids, service)

    async def metrics(self) -> bytes:
        texts = await self._each("/metrics", as_json=False)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged([(c.label, text) for c, text in texts]))
        return render(registry)

    async def close(self) -> None:
        pass  # nothing is kept open between requests


class _Merged(Collector):
    """Metric families from several workers, each sample labelled with its worker."""

    def __init__(self, texts: list[tuple[str, str]]) -> None:
        self.texts = texts

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        for worker, text in self.texts:
            for family in text_string_to_metric_families(text):
                into = families.get(family.name)
                if into is None:
                    into = families[family.name] = type(family)(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    into.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
        return list(families.values())


#: Dead letters the dashboard lists at most (the most recent failures).
LETTERS_SHOWN = 200
#: Seconds the dashboard waits for a replay's outcome before saying "requested".
REPLAY_WAIT = 5.0


async def _dead_letters(letters: AppDeadLetters) -> list[dict[str, Any]]:
    return [d.describe() for d in (await letters.letters())[-LETTERS_SHOWN:]]


async def _replay(
    letters: AppDeadLetters, ids: list[str] | None, service: str | None
) -> list[dict[str, Any]]:
    done = await letters.replay(ids, service=service, wait=REPLAY_WAIT)
    return [msgspec.to_builtins(r) for r in done]


async def _purge(
    letters: AppDeadLetters, ids: list[str] | None, service: str | None
) -> list[dict[str, Any]]:
    return [d.summary() for d in await letters.purge(ids, service=service)]


def _counters_only(snap: dict[str, Any]) -> dict[str, Any]:
    """The counters of a snapshot: what a worker that is gone still adds to the totals."""
    return {
        "calls": snap.get("calls", []),
        "served": [{**row, "in_flight": 0} for row in snap.get("served", [])],
        "consumers": [{**row, "pending": 0} for row in snap.get("consumers", [])],
    }


def _matches(span: dict[str, Any], query: str) -> bool:
    if not query or span["trace_id"].startswith(query):
        return True
    return any(str(v) == query for v in span["attributes"].values())


def _unique(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for s in spans:
        if s["span_id"] not in seen:
            seen.add(s["span_id"])
            out.append(s)
    return out
