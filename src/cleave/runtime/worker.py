"""A worker process of the processes placement: one service group, or the gateway.

Started by the supervisor (``cleave up``) as::

    python -m cleave.runtime.worker --app DIR --role service --group G --replica N \
        --nats URL --notify-fd FD [--state-dir DIR] [--listen-fd FD]

It tells the supervisor how it is doing by writing JSON lines to the notify
pipe (``{"state": "ready", ...}``, then ``{"state": "draining"}``), and stops
cleanly on SIGTERM: no new calls, calls in progress finish, events in progress
are settled, databases close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from cleave.app import LoadedApp, load
from cleave.runtime.procs import die_with_parent

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


async def _serve_group(
    loaded: LoadedApp, args: argparse.Namespace, stop: asyncio.Event, notify: _Notifier
) -> None:
    from cleave.runtime.host import Host
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import NatsRpcClient, NatsRpcServer, connect

    names = list(loaded.groups()[args.group])
    prefix = loaded.plan.nats.prefix
    label = f"{args.group}.{args.replica}"
    nc = await connect(args.nats, f"{loaded.app.name}.{label}")
    try:
        instance = f"{label}-{os.getpid()}"
        host = Host(
            loaded.app,
            loaded.plan,
            names,
            broker=JetStreamBroker(nc, prefix=prefix),
            data_dir=loaded.data_dir,
            instance=instance,
            remote=NatsRpcClient(nc, prefix=prefix),
            server=NatsRpcServer(
                nc, instance=instance, version=loaded.plan.app.version, prefix=prefix
            ),
        )
        await host.start()
        notify.send("ready", services=names, version=loaded.plan.app.version)
        await stop.wait()
        notify.send("draining")
        await host.stop()
    finally:
        await nc.close()


async def _serve_gateway(
    loaded: LoadedApp, args: argparse.Namespace, stop: asyncio.Event, notify: _Notifier
) -> None:
    from cleave.gateway.asgi import build_asgi
    from cleave.runtime.host import Host
    from cleave.runtime.http import HttpServer
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import NatsRpcClient, connect

    app = loaded.app
    if app.gateway is None:
        raise SystemExit(f"app {app.name} has no gateway")
    nc = await connect(args.nats, f"{app.name}.gateway.{args.replica}")
    try:
        host = Host(
            app,
            loaded.plan,
            [],
            broker=JetStreamBroker(nc, prefix=loaded.plan.nats.prefix),
            data_dir=loaded.data_dir,
            instance=f"gateway.{args.replica}-{os.getpid()}",
            remote=NatsRpcClient(nc, prefix=loaded.plan.nats.prefix),
        )
        await host.start()
        asgi = build_asgi(
            app.gateway, host.router, timeout=loaded.plan.runtime.timeout, app_name=app.name
        )
        gw = loaded.plan.gateway
        sock = socket.socket(fileno=args.listen_fd) if args.listen_fd is not None else None
        server = HttpServer(asgi, gw.host, gw.port, sock=sock)
        await server.start()
        notify.send("ready", services=["gateway"], version=loaded.plan.app.version, url=server.url)
        await stop.wait()
        notify.send("draining")
        await server.stop()
        await host.stop()
    finally:
        await nc.close()


async def _main(args: argparse.Namespace) -> None:
    loaded = load(args.app, state_dir=Path(args.state_dir) if args.state_dir else None)
    notify = _Notifier(args.notify_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.role == "gateway":
        await _serve_gateway(loaded, args, stop, notify)
    else:
        await _serve_group(loaded, args, stop, notify)


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
    args = parser.parse_args(argv)
    die_with_parent()
    from cleave.runtime.logs import configure

    configure(service=args.group or args.role, replica=args.replica, json_lines=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
