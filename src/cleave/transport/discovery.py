"""The NATS micro discovery protocol, so standard NATS tooling sees Cleave services.

Each running service instance answers ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS`` (also with ``.<name>`` and ``.<name>.<id>`` suffixes) with the
JSON documents of the ``io.nats.micro.v1`` schemas: ``nats micro ls`` lists
them, ``nats micro info billing`` shows their endpoints (one per method of
each major served) and ``nats micro stats`` their request counts and timings.
The majors an instance serves are in its metadata (``"majors": "2,1"``), the
major of each endpoint in the endpoint's (``"version": "2"``); an endpoint of
an older major is named ``<method>.v<major>``, so names stay unique.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import nats.errors

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

    from cleave.contracts import MethodSpec
    from cleave.runtime.dispatch import Dispatcher

__all__ = ["Discovery"]

PREFIX = "$SRV"


class _Instance:
    def __init__(
        self,
        name: str,
        instance_id: str,
        description: str,
        endpoints: list[Any],
        majors: list[int],
    ) -> None:
        self.name = name
        self.id = instance_id
        self.description = description
        self.endpoints = endpoints
        self.majors = majors


class Discovery:
    """Answers micro discovery requests for the services of one process."""

    def __init__(
        self,
        nc: NatsClient,
        instance: str,
        version: str,
        dispatchers: Sequence[Dispatcher],
        endpoints: Mapping[str, Any],
    ) -> None:
        self.nc = nc
        self.version = version
        self.started = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        self._subs: list[Any] = []
        self.instances = [
            _Instance(
                d.name,
                f"{instance}-{d.name}",
                d.spec.contract.description.split("\n")[0],
                [e for e in endpoints.values() if e.dispatcher is d],
                d.spec.majors,
            )
            for d in dispatchers
        ]

    async def start(self) -> None:
        for verb, handler in (("PING", self._ping), ("INFO", self._info), ("STATS", self._stats)):
            # One subscription answers for every instance of this process: fewer subjects.
            self._subs.append(await self.nc.subscribe(f"{PREFIX}.{verb}", cb=handler))
            for inst in self.instances:
                for subject in (
                    f"{PREFIX}.{verb}.{inst.name}",
                    f"{PREFIX}.{verb}.{inst.name}.{inst.id}",
                ):
                    self._subs.append(await self.nc.subscribe(subject, cb=handler))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._subs.clear()

    def _targets(self, subject: str) -> list[_Instance]:
        parts = subject.split(".")
        name = parts[2] if len(parts) > 2 else None
        ident = parts[3] if len(parts) > 3 else None
        return [
            i
            for i in self.instances
            if (name is None or i.name == name) and (ident is None or i.id == ident)
        ]

    def _base(self, inst: _Instance, kind: str) -> dict[str, Any]:
        return {
            "type": f"io.nats.micro.v1.{kind}_response",
            "name": inst.name,
            "id": inst.id,
            "version": self.version,
            "metadata": {"framework": "cleave", "majors": ",".join(map(str, inst.majors))},
        }

    async def _answer(self, msg: Msg, documents: list[dict[str, Any]]) -> None:
        if not msg.reply:
            return
        for doc in documents:
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(msg.reply, json.dumps(doc).encode())

    async def _ping(self, msg: Msg) -> None:
        await self._answer(msg, [self._base(i, "ping") for i in self._targets(msg.subject)])

    async def _info(self, msg: Msg) -> None:
        docs = []
        for inst in self._targets(msg.subject):
            doc = self._base(inst, "info")
            doc["description"] = inst.description
            doc["endpoints"] = [
                {
                    "name": _endpoint_name(inst, e.method),
                    "subject": e.subject,
                    "queue_group": inst.name,
                    "metadata": {
                        "idempotent": str(e.method.idempotent).lower(),
                        "version": str(e.method.contract.version),
                    },
                }
                for e in inst.endpoints
            ]
            docs.append(doc)
        await self._answer(msg, docs)

    async def _stats(self, msg: Msg) -> None:
        docs = []
        for inst in self._targets(msg.subject):
            doc = self._base(inst, "stats")
            doc["started"] = self.started
            doc["endpoints"] = [
                {
                    "name": _endpoint_name(inst, e.method),
                    "subject": e.subject,
                    "queue_group": inst.name,
                    "num_requests": e.requests,
                    "num_errors": e.errors,
                    "last_error": e.last_error,
                    "processing_time": e.time_ns,
                    "average_processing_time": e.time_ns // e.requests if e.requests else 0,
                }
                for e in inst.endpoints
            ]
            docs.append(doc)
        await self._answer(msg, docs)


def _endpoint_name(inst: _Instance, method: MethodSpec) -> str:
    """The method's name; ``<method>.v<major>`` for a method of an older major."""
    if method.contract.version == inst.majors[0]:
        return method.name
    return f"{method.name}.v{method.contract.version}"
