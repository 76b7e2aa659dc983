"""The monolith placement: every service and the gateway in one process.

A call is a direct await, events go through the same outbox and inbox as in
the processes placement, relayed over the in-process broker: each consumer
has its own delivery and redelivery, as on JetStream, and an outbox row is
deleted only once every consumer has settled its event, so a crash loses
nothing (the rows left are published again; inboxes skip what was handled).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from cleave.gateway.asgi import build_asgi
from cleave.gateway.auth import Authenticator
from cleave.gateway.limits import RateLimiter
from cleave.observability import otel
from cleave.observability.tracing import tracer
from cleave.runtime.guard import Guard
from cleave.runtime.host import Host
from cleave.runtime.http import HttpServer, bind_admin
from cleave.runtime.procs import freeze_heap
from cleave.transport.local import MemoryBroker

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from cleave.app import LoadedApp

__all__ = ["Monolith", "run"]


class Monolith:
    """The whole app in this process: start, use, stop."""

    def __init__(self, loaded: LoadedApp) -> None:
        self.loaded = loaded
        self.broker = MemoryBroker(settle_before_ack=True)
        self.host = Host(
            loaded.app,
            loaded.plan,
            list(loaded.app.services),
            broker=self.broker,
            data_dir=loaded.data_dir,
            instance=f"monolith-{os.getpid()}",
        )

    async def start(self) -> None:
        await self.host.start()

    async def stop(self) -> None:
        await self.host.stop()
        await self.broker.close()

    def asgi(self) -> Starlette:
        app = self.loaded.app
        if app.gateway is None:
            raise LookupError(f"app {app.name} declares no gateway")
        plan = self.loaded.plan
        return build_asgi(
            app.gateway,
            self.host.router,
            timeout=plan.runtime.timeout,
            app_name=app.name,
            auth=Authenticator(
                plan.auth, app_name=app.name, root=self.loaded.root, state_dir=self.loaded.state_dir
            ),
            limiter=RateLimiter(plan.gateway.rate, plan.gateway.burst),
            access_log=plan.observability.access_log,
        )


async def run(
    loaded: LoadedApp,
    *,
    host: str,
    port: int,
    admin_port: int | None = None,
    on_ready: Callable[[str, str], None] = lambda url, dashboard: None,
) -> None:
    """Run the app as a monolith until SIGINT or SIGTERM; the dashboard on ``admin_port``."""
    from cleave.observability.dashboard import Dashboard
    from cleave.runtime.logs import configure as configure_logs
    from cleave.runtime.sources import LocalSource
    from cleave.runtime.worker import code_version

    obs = loaded.plan.observability
    # Like a worker's, but the process is the whole app: colour in a terminal, else JSON lines.
    configure_logs(service=loaded.app.name, replica=0)
    tracer.configure(enabled=obs.tracing, sample_rate=obs.sample_rate, capacity=obs.spans)
    otel.configure(obs.opentelemetry)
    mono = Monolith(loaded)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers: list[HttpServer] = []
    dashboard: Dashboard | None = None
    try:
        await mono.start()
        url = ""
        if loaded.app.gateway is not None:
            servers.append(HttpServer(mono.asgi(), host, port))
            await servers[-1].start()
            url = servers[-1].url
        source = LocalSource(mono.host, mono.broker, version=code_version(loaded))
        # In memory only: nothing but the dashboard's own page changes this run over HTTP.
        token = secrets.token_urlsafe(32)
        dashboard = Dashboard(loaded.app, source, "monolith (one process)", token=token)
        sock = bind_admin(
            obs.admin_port if admin_port is None else admin_port, explicit=admin_port is not None
        )
        guarded = Guard(dashboard.asgi(), token, [loaded.plan.gateway.host])
        servers.append(HttpServer(guarded, "127.0.0.1", 0, sock=sock))
        await servers[-1].start()
        dashboard.start()
        freeze_heap()
        on_ready(url, servers[-1].url)
        await stop.wait()
    finally:
        for server in servers:
            await server.stop()
        if dashboard is not None:
            await dashboard.stop()
        await mono.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
