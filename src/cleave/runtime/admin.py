"""A worker's own small HTTP server, on a loopback port: health, status, faults.

- ``GET /healthz``: liveness, 200 while the event loop answers.
- ``GET /readyz``: readiness, 200 once the worker's services (or gateway) take
  calls, 503 before that and while it drains.
- ``GET /status``: outbox backlogs, consumers, sagas, calls in flight (JSON).
- ``POST /faults``: ``{"service", "latency", "drop", "fail"}`` injects faults
  into calls of one of its services (``cleave chaos``); all zero clears them.

The supervisor learns the port from the worker's ``ready`` note and uses
these for ``cleave status``, ``cleave chaos`` and its health checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cleave.errors import CleaveError
from cleave.faults import Faults

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


def admin_app(
    health: Health,
    status: Callable[[], Awaitable[dict[str, Any]]],
    inject: Callable[[str, Faults | None], None] | None = None,
) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def readyz(request: Request) -> JSONResponse:
        ready = health.ready and not health.draining
        body = {"ready": ready, "draining": health.draining}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def status_route(request: Request) -> JSONResponse:
        return JSONResponse(await status())

    async def faults(request: Request) -> JSONResponse:
        if inject is None:
            return JSONResponse({"error": "this worker runs no services"}, status_code=400)
        try:
            body = msgspec.json.decode(await request.body(), type=_FaultRequest)
            wanted = msgspec.structs.asdict(body)
            del wanted["service"]
            inject(body.service, msgspec.convert(wanted, Faults))  # checks the ranges
        except (msgspec.DecodeError, CleaveError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(msgspec.to_builtins(body))

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/status", status_route, methods=["GET"]),
            Route("/faults", faults, methods=["POST"]),
        ]
    )
