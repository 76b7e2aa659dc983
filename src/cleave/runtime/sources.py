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
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from cleave.observability.metrics import registry_for, render
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
    """Every worker of a ``cleave up``, through their admin ports."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

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
        return [snap for _, snap in await self._each("/stats")]

    async def spans(self, query: str, limit: int) -> list[dict[str, Any]]:
        path = f"/spans?q={httpx.QueryParams({'q': query})['q']}&limit={limit}"
        return [s for _, spans in await self._each(path) for s in spans]

    async def trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for _, spans in await self._each(f"/spans?trace_id={trace_id}") for s in spans]

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
