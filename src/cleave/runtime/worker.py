"""A worker process of the processes placement: one service group, or the gateway.

Started by the supervisor (``cleave up``) as::

    python -m cleave.runtime.worker --app DIR --role service --group G --replica N \
        --nats URL --notify-fd FD [--state-dir DIR] [--listen-fd FD] \
        [--nats-identity FILE]

With ``--nats-identity`` it connects as its group's NATS user (the file the
supervisor wrote, :mod:`cleave.runtime.nats_auth`), with replies under that
identity's own inbox prefix; over TLS when the plan says so
(:mod:`cleave.runtime.nats_tls`). No secret is ever on its command line.

It tells the supervisor how it is doing by writing JSON lines to the notify
pipe (``{"state": "ready", ...}``, then ``{"state": "draining"}``), and stops
cleanly on SIGTERM: no new calls, calls in progress finish, events in progress
are settled, databases close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cleave.app import LoadedApp, load
from cleave.errors import ConfigError
from cleave.observability import otel
from cleave.observability.tracing import tracer
from cleave.runtime.admin import Health, admin_app
from cleave.runtime.guard import Guard, read_token
from cleave.runtime.host import Host
from cleave.runtime.http import HttpServer
from cleave.runtime.procs import die_with_parent, freeze_heap, run_main

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Worker", "code_version", "main"]


class _Notifier:
    def __init__(self, fd: int | None) -> None:
        self._file = os.fdopen(fd, "w", buffering=1) if fd is not None else None

    def send(self, state: str, **fields: Any) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps({"state": state, "pid": os.getpid(), **fields}) + "\n")
        except OSError:
            self._file = None  # the supervisor is gone; PDEATHSIG will stop us


def code_version(loaded: LoadedApp) -> str:
    """The app's version and a digest of its code: deploys show which code each worker runs."""
    digest = hashlib.blake2b(digest_size=4)
    for path in sorted(loaded.root.rglob("*.py")):
        parts = path.relative_to(loaded.root).parts
        if any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue
        digest.update(str(path.relative_to(loaded.root)).encode())
        digest.update(path.read_bytes())
    return f"{loaded.plan.app.version}+{digest.hexdigest()}"


class Worker:
    """One group's services (or the gateway) on a NATS connection: what a worker process runs.

    ``cleave up``'s workers (:func:`main`) and ``cleave serve`` / ``cleave
    gateway`` (:mod:`cleave.runtime.serve`) both run one. :meth:`open_admin`
    may come first, before NATS is reachable: the admin port then answers
    liveness (200) and readiness (503) while the process waits. :meth:`start`
    starts the services on ``nc`` and marks the process ready; :meth:`drain`
    marks it not ready at once, stops taking calls, events and requests, lets
    those in progress finish (up to ``grace`` seconds each), publishes what the
    outboxes hold and closes the databases.
    """

    def __init__(
        self,
        loaded: LoadedApp,
        *,
        role: str,
        group: str = "",
        replica: int = 0,
        instance: str = "",
        admin: tuple[str, int] = ("127.0.0.1", 0),
        admin_hosts: tuple[str, ...] = (),
        gateway: tuple[str, int] | None = None,
        listen_fd: int | None = None,
    ) -> None:
        app = loaded.app
        self.loaded = loaded
        self.gateway = role == "gateway"
        if self.gateway and app.gateway is None:
            raise ConfigError(f"app {app.name} has no gateway")
        groups = loaded.groups()
        if not self.gateway and group not in groups:
            raise ConfigError(
                f"app {app.name} has no group {group!r}; its groups: {', '.join(groups)} "
                "(cleave.toml [groups]; a service in none is a group of its own)"
            )
        self.names: list[str] = [] if self.gateway else list(groups[group])
        self.label = f"{'gateway' if self.gateway else group}.{replica}"
        self.instance = instance or f"{self.label}-{os.getpid()}"
        #: The code this process runs (:func:`code_version`), once started.
        self.version = ""
        self.health = Health()
        self.host: Host | None = None
        self.http: HttpServer | None = None
        self.admin: HttpServer | None = None
        self._admin_addr = admin
        self._admin_hosts = admin_hosts
        self._gateway_addr = gateway
        self._listen_fd = listen_fd
        self._admin_app = _Swappable(_waiting_app(self.health))

    @property
    def services(self) -> list[str]:
        """What this process runs, for logs and notes: its services, or ``["gateway"]``."""
        return self.names or ["gateway"]

    async def open_admin(self) -> int:
        """Serve the admin port (liveness now, the rest once started); returns its port."""
        if self.admin is None:
            # /faults changes the worker: it wants the run's token (cleave.runtime.guard).
            guarded = Guard(self._admin_app, read_token(self.loaded.run_dir), self._admin_hosts)
            host, port = self._admin_addr
            self.admin = HttpServer(guarded, host, port)
            await self.admin.start()
        return self.admin.port

    async def start(self, nc: NatsClient, url: str) -> None:
        """Start the services (or the gateway) on ``nc``, connected to ``url``; then it is ready.

        ``url`` (every server of a cluster, comma-separated) sets the streams' default replicas.
        """
        from cleave.gateway.asgi import build_asgi
        from cleave.gateway.auth import Authenticator
        from cleave.gateway.limits import RateLimiter
        from cleave.transport.jetstream import JetStreamBroker
        from cleave.transport.nats import NatsRpcClient, NatsRpcServer

        loaded, app, plan = self.loaded, self.loaded.app, self.loaded.plan
        obs = plan.observability
        tracer.configure(enabled=obs.tracing, sample_rate=obs.sample_rate, capacity=obs.spans)
        otel.configure(obs.opentelemetry)
        prefix = plan.nats.prefix
        self.version = code_version(loaded)
        server = (
            None
            if self.gateway
            else NatsRpcServer(nc, instance=self.instance, version=self.version, prefix=prefix)
        )
        self.host = host = Host(
            app,
            plan,
            self.names,
            broker=JetStreamBroker(
                nc,
                prefix=prefix,
                max_age=plan.events.retention_days * 24 * 3600.0,
                replicas=plan.nats.replicas_for(url),
            ),
            data_dir=loaded.data_dir,
            instance=self.instance,
            remote=NatsRpcClient(nc, prefix=prefix),
            server=server,
        )
        await self.open_admin()
        self._admin_app.app = admin_app(self.health, host)
        await host.start()
        if self.gateway:
            assert app.gateway is not None
            asgi = build_asgi(
                app.gateway,
                host.router,
                timeout=plan.runtime.timeout,
                app_name=app.name,
                auth=Authenticator(
                    plan.auth, app_name=app.name, root=loaded.root, state_dir=loaded.state_dir
                ),
                limiter=RateLimiter(plan.gateway.rate, plan.gateway.burst),
                access_log=obs.access_log,
            )
            fd = self._listen_fd
            sock = socket.socket(fileno=fd) if fd is not None else None
            gw_host, gw_port = self._gateway_addr or (plan.gateway.host, plan.gateway.port)
            self.http = HttpServer(asgi, gw_host, gw_port, sock=sock)
            await self.http.start()
        freeze_heap()
        self.health.ready = True

    async def drain(self, grace: float = 10.0) -> None:
        """Not ready at once; no new work; work in progress finishes; outboxes published."""
        self.health.draining = True
        if self.http is not None:
            await self.http.stop(grace)  # no new requests; the ones in flight finish
        if self.host is not None:
            await self.host.stop(grace=grace)

    def in_progress(self) -> dict[str, int]:
        """Work started and not finished: calls, event deliveries, gateway requests.

        After :meth:`drain`: what was still running when the grace ended.
        """
        host = self.host
        work = {"calls": 0, "events": 0}
        if host is not None:
            work["calls"] = getattr(host.server, "in_flight", 0)
            work["events"] = sum(1 for s in host.subscriptions if getattr(s, "busy", False))
        if self.http is not None:
            work["requests"] = self.http.in_flight
        return work

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None


class _Swappable:
    """An ASGI app whose target can change while it serves (the admin port, as it starts)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _waiting_app(health: Health) -> Starlette:
    """The admin port before the services start: alive, not ready."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def other(request: Request) -> JSONResponse:
        body = {"ready": False, "draining": health.draining, "starting": True}
        return JSONResponse(body, status_code=503)

    return Starlette(
        routes=[Route("/healthz", healthz, methods=["GET"]), Route("/{rest:path}", other)]
    )


async def _serve(
    loaded: LoadedApp, args: argparse.Namespace, stop: asyncio.Event, notify: _Notifier
) -> None:
    from cleave.transport.nats import connect

    worker = Worker(
        loaded,
        role=args.role,
        group=args.group,
        replica=args.replica,
        listen_fd=args.listen_fd,
    )
    # An external server's URL (which may hold a password) from the plan, not from argv.
    url = loaded.plan.nats.url or args.nats
    nc = await connect(url, f"{loaded.app.name}.{worker.label}", **_nats_options(loaded, args))
    try:
        await worker.start(nc, url)
        assert worker.admin is not None
        structlog.get_logger("cleave.worker").info(
            "worker ready", services=worker.services, version=worker.version, pid=os.getpid()
        )
        notify.send(
            "ready",
            services=worker.services,
            version=worker.version,
            majors={n: loaded.app.services[n].majors for n in worker.names},
            admin_port=worker.admin.port,
            url=worker.http.url if worker.http else "",
        )
        await stop.wait()
        notify.send("draining")
        await worker.drain()
    finally:
        await worker.close()
        await nc.close()


def _nats_options(loaded: LoadedApp, args: argparse.Namespace) -> dict[str, Any]:
    """Who this worker is on NATS, and how it reaches the server."""
    from cleave.runtime.nats_auth import credentials_file, read_identity
    from cleave.runtime.nats_tls import client_context

    options: dict[str, Any] = {"tls": client_context(loaded)}
    if args.nats_identity:
        identity = read_identity(Path(args.nats_identity))
        options.update(
            user=identity.user, password=identity.password, inbox_prefix=identity.inbox_prefix
        )
    elif loaded.plan.nats.credentials:
        options["credentials"] = credentials_file(loaded.plan.nats.credentials)
    return options


async def _main(args: argparse.Namespace) -> None:
    loaded = load(args.app, state_dir=Path(args.state_dir) if args.state_dir else None)
    notify = _Notifier(args.notify_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await _serve(loaded, args, stop, notify)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cleave-worker")
    parser.add_argument("--app", required=True)
    parser.add_argument("--state-dir")
    parser.add_argument("--role", choices=("service", "gateway"), default="service")
    parser.add_argument("--group", default="")
    parser.add_argument("--replica", type=int, default=0)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--notify-fd", type=int)
    parser.add_argument("--listen-fd", type=int)
    parser.add_argument("--nats-identity")
    args = parser.parse_args(argv)
    die_with_parent()
    from cleave.runtime.logs import configure

    configure(service=args.group or args.role, replica=args.replica, json_lines=True)
    with contextlib.suppress(KeyboardInterrupt):
        run_main(_main(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
