"""The monolith placement: every service and the gateway in one process.

A call is a direct await, events go through the same outbox and inbox as in
the processes placement, relayed over the in-process broker (which holds an
outbox row until every consumer has settled it, so a crash loses nothing).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from cleave.gateway.asgi import build_asgi
from cleave.runtime.host import Host
from cleave.runtime.http import HttpServer
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
        return build_asgi(
            app.gateway,
            self.host.router,
            timeout=self.loaded.plan.runtime.timeout,
            app_name=app.name,
        )


async def run(
    loaded: LoadedApp,
    *,
    host: str,
    port: int,
    on_ready: Callable[[str], None] = lambda url: None,
) -> None:
    """Run the app as a monolith until SIGINT or SIGTERM."""
    mono = Monolith(loaded)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server: HttpServer | None = None
    try:
        await mono.start()
        if loaded.app.gateway is not None:
            server = HttpServer(mono.asgi(), host, port)
            await server.start()
            on_ready(server.url)
        else:
            on_ready("")
        await stop.wait()
    finally:
        if server is not None:
            await server.stop()
        await mono.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
