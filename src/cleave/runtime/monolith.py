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
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from cleave.gateway.asgi import build_asgi
from cleave.gateway.auth import Authenticator
from cleave.gateway.limits import RateLimiter
from cleave.observability import otel
from cleave.observability.tracing import tracer
from cleave.runtime.control import control_app
from cleave.runtime.guard import Guard, make_token
from cleave.runtime.host import Host
from cleave.runtime.http import HttpServer, bind_admin
from cleave.runtime.procs import freeze_heap
from cleave.runtime.runstate import RunLock
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
    """Run the app as a monolith until SIGINT, SIGTERM or `cleave down`; the dashboard on
    ``admin_port``, with the control API that `cleave ps`, `status`, `down` and `chaos` use.
    """
    from cleave.observability.dashboard import Dashboard
    from cleave.runtime.logs import configure as configure_logs
    from cleave.runtime.monolith_ops import MonolithOps, log_dir
    from cleave.runtime.sources import LocalSource
    from cleave.runtime.worker import code_version

    obs = loaded.plan.observability
    lock = RunLock(loaded)
    lock.acquire()  # one `cleave run` or `cleave up` of an app (of its data) at a time
    log_file = log_dir(loaded) / "monolith.0.log"
    # Like a worker's, but the process is the whole app: colour in a terminal, else JSON
    # lines; JSON lines in the log folder either way, for `cleave logs`.
    configure_logs(service=loaded.app.name, replica=0, also_to=log_file)
    tracer.configure(enabled=obs.tracing, sample_rate=obs.sample_rate, capacity=obs.spans)
    otel.configure(obs.opentelemetry)
    mono = Monolith(loaded)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers: list[HttpServer] = []
    dashboard: Dashboard | None = None
    ops = MonolithOps(loaded, mono.host, stop, code_version(loaded))
    try:
        await mono.start()
        if loaded.app.gateway is not None:
            servers.append(HttpServer(mono.asgi(), host, port))
            await servers[-1].start()
            ops.gateway_url = servers[-1].url
        source = LocalSource(mono.host, mono.broker, version=ops.version)
        token = make_token(loaded.run_dir)
        dashboard = Dashboard(loaded.app, source, "monolith (one process)", token=token)
        sock = bind_admin(
            obs.admin_port if admin_port is None else admin_port, explicit=admin_port is not None
        )
        guarded = Guard(control_app(ops, dashboard.routes()), token, [loaded.plan.gateway.host])
        servers.append(HttpServer(guarded, "127.0.0.1", 0, sock=sock))
        await servers[-1].start()
        ops.dashboard_url = servers[-1].url
        dashboard.start()
        ops.write_state(log_file)
        structlog.get_logger("cleave.monolith").info(
            "monolith ready",
            services=list(loaded.app.services),
            gateway=ops.gateway_url,
            dashboard=ops.dashboard_url,
            pid=os.getpid(),
        )
        freeze_heap()
        on_ready(ops.gateway_url, ops.dashboard_url)
        await stop.wait()
    finally:
        ops.clear_state()
        for server in servers:
            await server.stop()
        if dashboard is not None:
            await dashboard.stop()
        await mono.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        lock.release()
