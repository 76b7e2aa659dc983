"""Where the dashboard's numbers come from, in each placement.

- :class:`LocalSource`: the monolith's one host, read in-process.
- :class:`FleetSource`: the supervisor of ``cleave up``, asking every worker
  (``/stats``, ``/spans``, ``/metrics`` on their admin ports) and merging.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from cleave.observability.metrics import (
    HostCollector,
    host_snapshot,
    refresher,
    registry_for,
    render,
)
from cleave.observability.tracing import tracer

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
        return [_letter(d) for d in await self.broker.dead_letters()]

    async def metrics(self) -> bytes:
        await self.refresh()
        return render(self.registry)


class FleetSource:
    """Every worker of a ``cleave up``, through their admin ports."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._broker: Broker | None = None
        self._nc: Any = None

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

    async def dead_letters(self) -> list[dict[str, Any]]:
        if self._broker is None:
            from cleave.transport.jetstream import JetStreamBroker
            from cleave.transport.nats import connect

            self._nc = await connect(self.supervisor.nats_url, "dashboard")
            self._broker = JetStreamBroker(self._nc, prefix=self.supervisor.loaded.plan.nats.prefix)
        return [_letter(d) for d in await self._broker.dead_letters(50)]

    async def metrics(self) -> bytes:
        texts = await self._each("/metrics", as_json=False)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged([(c.label, text) for c, text in texts]))
        return render(registry)

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


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


def _letter(d: Any) -> dict[str, Any]:
    return {
        "subject": d.subject,
        "consumer": d.headers.get("Cleave-Consumer", ""),
        "event_id": d.headers.get("Cleave-Event-Id", ""),
        "attempts": d.headers.get("Cleave-Attempts", ""),
        "error": d.headers.get("Cleave-Error", ""),
    }
