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
from typing import Any

import structlog

from cleave.app import LoadedApp, load
from cleave.observability import otel
from cleave.observability.tracing import tracer
from cleave.runtime.admin import Health, admin_app
from cleave.runtime.guard import Guard, read_token
from cleave.runtime.http import HttpServer
from cleave.runtime.procs import die_with_parent, freeze_heap, run_main

__all__ = ["main"]


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


async def _serve(
    loaded: LoadedApp, args: argparse.Namespace, stop: asyncio.Event, notify: _Notifier
) -> None:
    from cleave.gateway.asgi import build_asgi
    from cleave.gateway.auth import Authenticator
    from cleave.gateway.limits import RateLimiter
    from cleave.runtime.host import Host
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import NatsRpcClient, NatsRpcServer, connect

    app, plan = loaded.app, loaded.plan
    obs = plan.observability
    tracer.configure(enabled=obs.tracing, sample_rate=obs.sample_rate, capacity=obs.spans)
    otel.configure(obs.opentelemetry)
    gateway = args.role == "gateway"
    if gateway and app.gateway is None:
        raise SystemExit(f"app {app.name} has no gateway")
    names = [] if gateway else list(loaded.groups()[args.group])
    label = f"{'gateway' if gateway else args.group}.{args.replica}"
    instance = f"{label}-{os.getpid()}"
    prefix = plan.nats.prefix
    version = code_version(loaded)
    # An external server's URL (which may hold a password) from the plan, not from argv.
    url = plan.nats.url or args.nats
    nc = await connect(url, f"{app.name}.{label}", **_nats_options(loaded, args))
    try:
        server = (
            None
            if gateway
            else NatsRpcServer(nc, instance=instance, version=version, prefix=prefix)
        )
        host = Host(
            app,
            plan,
            names,
            broker=JetStreamBroker(
                nc, prefix=prefix, max_age=plan.events.retention_days * 24 * 3600.0
            ),
            data_dir=loaded.data_dir,
            instance=instance,
            remote=NatsRpcClient(nc, prefix=prefix),
            server=server,
        )
        health = Health()
        # /faults changes the worker: it wants the run's token (cleave.runtime.guard).
        guarded = Guard(admin_app(health, host), read_token(loaded.run_dir))
        admin = HttpServer(guarded, "127.0.0.1", 0)
        await admin.start()
        await host.start()
        http: HttpServer | None = None
        if gateway:
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
            sock = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
            http = HttpServer(asgi, plan.gateway.host, plan.gateway.port, sock=sock)
            await http.start()
        freeze_heap()
        health.ready = True
        structlog.get_logger("cleave.worker").info(
            "worker ready", services=names or ["gateway"], version=version, pid=os.getpid()
        )
        notify.send(
            "ready",
            services=names or ["gateway"],
            version=version,
            majors={n: app.services[n].majors for n in names},
            admin_port=admin.port,
            url=http.url if http else "",
        )
        await stop.wait()
        health.draining = True
        notify.send("draining")
        if http is not None:
            await http.stop()  # no new requests; the ones in flight finish
        await host.stop()
        await admin.stop()
    finally:
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
