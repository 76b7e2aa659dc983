"""An HTTP server (uvicorn) run as a part of a bigger process, not as its owner.

uvicorn normally owns the process: it installs signal handlers and exits on
a bind error. Here the socket is bound first (so a busy port is a clear
error, and port 0 picks a free one) and the owner of the process handles
signals and tells the server when to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from cleave.errors import ConfigError

__all__ = ["HttpServer", "bind", "bind_admin"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the process's owner handles signals


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a busy port is a ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # so, and a response written in two parts would otherwise wait for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); is another server using it? "
            "Pick another with --port"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_admin(port: int, *, explicit: bool) -> socket.socket:
    """The admin port on loopback; a busy default port falls back to a free one."""
    try:
        return bind("127.0.0.1", port)
    except ConfigError:
        if explicit or port == 0:
            raise
        return bind("127.0.0.1", 0)


class HttpServer:
    """Serves an ASGI app on ``host:port`` until :meth:`stop`."""

    def __init__(self, app: Any, host: str, port: int, *, sock: socket.socket | None = None):
        self.app = app
        self.host = host
        self._sock = sock or bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="httptools",
            loop="none",
            timeout_graceful_shutdown=10,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.cut_short = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve([self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ConfigError(f"the HTTP server on {self.url} stopped while starting")
            await asyncio.sleep(0.01)

    @property
    def in_flight(self) -> int:
        """Requests being handled now; once stopped, those the grace cut short."""
        return len(self._server.server_state.tasks) if self._task is not None else self.cut_short

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; requests in progress get ``grace`` seconds (default 10) to finish."""
        if self._task is None:
            return
        if grace is not None:
            # Typed int by uvicorn; it is the timeout of an asyncio.wait_for, so a float works.
            self._server.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]
        wait = self._server.config.timeout_graceful_shutdown or 0.0
        self._server.should_exit = True
        # uvicorn cancels what is still running at its own deadline; count it at ours.
        deadline = time.monotonic() + wait
        while self._server.server_state.tasks and time.monotonic() < deadline:  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.05)
        self.cut_short = len(self._server.server_state.tasks)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._sock.close()
