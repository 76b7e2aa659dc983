"""A worker's own small HTTP server, on a loopback port: health, status, telemetry, faults.

- ``GET /healthz``: liveness, 200 while the event loop answers.
- ``GET /readyz``: readiness, 200 once the worker's services (or gateway) take
  calls, 503 before that and while it drains.
- ``GET /status``: outbox backlogs, consumers, sagas, calls in flight (JSON).
- ``GET /metrics``: Prometheus metrics of this worker.
- ``GET /stats``: the same numbers as plain data, for the dashboard.
- ``GET /spans?q=&limit=`` and ``/spans?trace_id=``: recorded spans.
- ``POST /faults``: ``{"service", "latency", "drop", "fail"}`` injects faults
  into calls of one of its services (``cleave chaos``); all zero clears them.
  The worker serves this app behind :class:`~cleave.runtime.guard.Guard`:
  ``/faults`` needs the run's token, loopback ``Host``, no foreign ``Origin``.

The supervisor learns the port from the worker's ``ready`` note and uses
these for ``cleave status``, ``cleave chaos``, its health checks and the
dashboard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cleave.errors import CleaveError
from cleave.faults import Faults
from cleave.observability.metrics import registry_for
from cleave.observability.metrics import render as render_metrics
from cleave.observability.tracing import tracer
from cleave.runtime.hostmetrics import HostCollector, host_snapshot, refresher

if TYPE_CHECKING:
    from cleave.runtime.host import Host

__all__ = ["Health", "admin_app"]


class Health:
    """Liveness and readiness of this process, as the worker sets them."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False


class _FaultRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    service: str
    latency: float = 0.0
    drop: float = 0.0
    fail: float = 0.0
    methods: tuple[str, ...] = ()


def admin_app(health: Health, host: Host) -> Starlette:
    registry = registry_for(HostCollector(host))
    refresh = refresher(host)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def readyz(request: Request) -> JSONResponse:
        ready = health.ready and not health.draining
        body = {"ready": ready, "draining": health.draining}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(await host.status())

    async def metrics(request: Request) -> Response:
        await refresh()
        return Response(render_metrics(registry), media_type="text/plain; version=0.0.4")

    async def stats(request: Request) -> JSONResponse:
        await refresh()
        return JSONResponse(host_snapshot(host))

    async def spans(request: Request) -> JSONResponse:
        trace_id = request.query_params.get("trace_id")
        if trace_id:
            return JSONResponse(tracer.trace(trace_id))
        limit = int(request.query_params.get("limit", "50"))
        return JSONResponse(tracer.recent(request.query_params.get("q", ""), limit))

    async def faults(request: Request) -> JSONResponse:
        try:
            body = msgspec.json.decode(await request.body(), type=_FaultRequest)
            wanted = msgspec.structs.asdict(body)
            del wanted["service"]
            host.inject(body.service, msgspec.convert(wanted, Faults))  # checks the ranges
        except (msgspec.DecodeError, CleaveError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(msgspec.to_builtins(body))

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/spans", spans, methods=["GET"]),
            Route("/faults", faults, methods=["POST"]),
        ]
    )
