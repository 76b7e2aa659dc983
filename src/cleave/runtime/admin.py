"""A worker's own small HTTP server, on a loopback port: health and status.

- ``GET /healthz``: liveness, 200 while the event loop answers.
- ``GET /readyz``: readiness, 200 once the worker's services (or gateway) take
  calls, 503 before that and while it drains.
- ``GET /status``: outbox backlogs, consumers, sagas, calls in flight (JSON).

The supervisor learns the port from the worker's ``ready`` note and reads
these for ``cleave status`` and its health checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["Health", "admin_app"]


class Health:
    """Liveness and readiness of this process, as the worker sets them."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False


def admin_app(health: Health, status: Callable[[], Awaitable[dict[str, Any]]]) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def readyz(request: Request) -> JSONResponse:
        ready = health.ready and not health.draining
        body = {"ready": ready, "draining": health.draining}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def status_route(request: Request) -> JSONResponse:
        return JSONResponse(await status())

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/status", status_route, methods=["GET"]),
        ]
    )
