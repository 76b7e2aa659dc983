"""1. Remote call: one small request/response between two processes.

Server and client are separate processes on loopback. The client makes calls
in a closed loop for a fixed time, one at a time ("sequential") or from 64
tasks ("64 in flight"), and records each call's latency.

Peers, each in the configuration its documentation recommends for speed:

- ``nats``: raw nats-py request/reply (the floor for Cleave's transport);
- ``cleave``: Cleave's processes placement (a service calling another's
  method over NATS: typed client, context, policy, metrics; tracing on, as
  shipped) and ``cleave-notrace`` (tracing off); ``cleave-tls``: the same
  over TLS (``[nats] tls = true``: a nats-server with a certificate from its
  own CA, P-256, every client verifying it), to show what TLS costs a call;
- ``fastapi``: FastAPI on uvicorn (asyncio loop, httptools) with an httpx
  client, shared (what most services do) and one per task (its best);
- ``grpc``: grpcio ``grpc.aio`` unary calls with a generic bytes handler;
- ``faststream``: FastStream's NATS RPC, logging off, an async handler.

Usage: python -m bench.remote server SYSTEM TARGET | client SYSTEM TARGET MODE SECONDS
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import cleave
from bench.common import PAYLOAD, UVICORN, emit, ready, summary

SUBJECT = "bench.echo"


class Blob(cleave.Message):
    id: str
    body: str


@cleave.contract("echo", version=1)
class Echo(Protocol):
    async def echo(self, req: Blob) -> Blob: ...


class EchoService(cleave.Service, implements=Echo):
    async def echo(self, req: Blob) -> Blob:
        return req


APP = cleave.App("bench", services=[EchoService])
# A Blob of this size encodes to 217 bytes of MessagePack, the payload of the other peers.
BLOB = Blob(id="req-0000001", body="x" * (PAYLOAD - 26))


# -- servers ---------------------------------------------------------------------------------


async def serve_nats(url: str) -> None:
    import nats

    nc = await nats.connect(url)

    async def handler(msg: Any) -> None:
        await nc.publish(msg.reply, msg.data)

    await nc.subscribe(SUBJECT, queue="echo", cb=handler)
    await nc.flush()
    ready()
    await asyncio.Event().wait()


async def serve_cleave(url: str) -> None:
    from cleave.config import Plan
    from cleave.runtime.host import Host
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import NatsRpcClient, NatsRpcServer, connect

    _tracing()
    nc = await connect(url, "bench-server", tls=_tls())
    host = Host(
        APP,
        Plan(),
        ["echo"],
        broker=JetStreamBroker(nc),
        data_dir=_tmp(),
        instance="server",
        remote=NatsRpcClient(nc),
        server=NatsRpcServer(nc, instance="server", version="0.0.0"),
    )
    await host.start()
    ready()
    await asyncio.Event().wait()


async def serve_fastapi(port: str) -> None:
    import uvicorn
    from fastapi import FastAPI, Request, Response

    api = FastAPI()

    @api.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    config = uvicorn.Config(api, port=int(port), **UVICORN)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    ready()
    await task


async def serve_grpc(port: str) -> None:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready()
    await server.wait_for_termination()


async def serve_faststream(url: str) -> None:
    from faststream.nats import NatsBroker

    broker = NatsBroker(url, logger=None, log_level=0)

    @broker.subscriber(SUBJECT + ".fs", queue="echo")
    async def echo(body: bytes) -> bytes:
        return body

    await broker.start()
    ready()
    await asyncio.Event().wait()


# -- clients ---------------------------------------------------------------------------------


Call = Callable[[], Awaitable[Any]]
#: Which of the client's concurrent callers is running (0..63), for per-caller clients.
CALLER: contextvars.ContextVar[int] = contextvars.ContextVar("caller", default=0)


async def client_nats(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import nats

    nc = await nats.connect(url)
    data = b"x" * PAYLOAD

    async def call() -> Any:
        return await nc.request(SUBJECT, data, timeout=10)

    return call, nc.close


async def client_cleave(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from cleave.config import Plan
    from cleave.context import CallContext, _current
    from cleave.runtime.host import Host
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import NatsRpcClient, connect

    _tracing()
    nc = await connect(url, "bench-client", tls=_tls())
    host = Host(
        APP,
        Plan(),
        [],
        broker=JetStreamBroker(nc),
        data_dir=_tmp(),
        instance="client",
        remote=NatsRpcClient(nc),
    )
    await host.start()
    echo: Any = host.client(Echo, caller="orders")
    # As inside a service's handler: a caller's context is current (no timer per call).
    _current.set(
        CallContext(
            time.time() + 3600,
            "bench",
            "orders",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
    )

    async def call() -> Any:
        return await echo.echo(BLOB)

    async def close() -> None:
        await host.stop()
        await nc.close()

    return call, close


def client_fastapi(shared: bool) -> Callable[[str], Awaitable[tuple[Call, Any]]]:
    async def make(port: str) -> tuple[Call, Any]:
        import httpx

        url = f"http://127.0.0.1:{port}/echo"
        data = b"x" * PAYLOAD
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        clients: list[httpx.AsyncClient] = []
        common = httpx.AsyncClient(limits=limits) if shared else None
        own: dict[int, httpx.AsyncClient] = {}  # by caller: made while warming up, then kept

        async def call() -> Any:
            client = common
            if client is None:
                caller = CALLER.get()
                client = own.get(caller)
                if client is None:
                    client = own[caller] = httpx.AsyncClient()
                    clients.append(client)
            resp = await client.post(url, content=data)
            return resp.content

        async def close() -> None:
            for c in [*clients, *([common] if common else [])]:
                await c.aclose()

        return call, close

    return make


async def client_grpc(port: str) -> tuple[Call, Any]:
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = channel.unary_unary("/bench.Echo/Echo")
    data = b"x" * PAYLOAD

    async def call() -> Any:
        return await stub(data)

    return call, channel.close


async def client_faststream(url: str) -> tuple[Call, Any]:
    from faststream.nats import NatsBroker

    broker = NatsBroker(url, logger=None, log_level=0)
    await broker.start()
    data = b"x" * PAYLOAD

    async def call() -> Any:
        return await broker.request(data, SUBJECT + ".fs", timeout=10)

    return call, broker.stop


SERVERS: dict[str, Callable[[str], Awaitable[None]]] = {
    "nats": serve_nats,
    "cleave": serve_cleave,
    "cleave-notrace": serve_cleave,
    "cleave-tls": serve_cleave,
    "fastapi": serve_fastapi,
    "fastapi-own-client": serve_fastapi,
    "grpc": serve_grpc,
    "faststream": serve_faststream,
}

CLIENTS: dict[str, Callable[[str], Awaitable[tuple[Call, Any]]]] = {
    "nats": client_nats,
    "cleave": client_cleave,
    "cleave-notrace": client_cleave,
    "cleave-tls": client_cleave,
    "fastapi": client_fastapi(shared=True),
    "fastapi-own-client": client_fastapi(shared=False),
    "grpc": client_grpc,
    "faststream": client_faststream,
}


def _tracing() -> None:
    from cleave.observability.tracing import tracer

    tracer.configure(enabled=os.environ.get("CLEAVE_TRACING", "1") == "1")


def _tls() -> Any:
    """The client TLS context for ``cleave-tls`` (CLEAVE_BENCH_CA names the CA), else None."""
    import ssl

    ca = os.environ.get("CLEAVE_BENCH_CA")
    return ssl.create_default_context(cafile=ca) if ca else None


@contextlib.contextmanager
def tls_nats_server(tmp: Any) -> Iterator[tuple[str, str]]:
    """A nats-server like ``nats_server``'s, over TLS; yields its URL and CA file."""
    from cleave.runtime.nats_tls import make_certificates, server_block
    from cleave.runtime.natsd import EmbeddedNats

    folder = make_certificates(tmp / "nats-tls")
    server = EmbeddedNats(tmp / "nats-tls-store", name="bench_tls", tls=server_block(folder))
    server.launch()
    try:
        yield server.url, str(folder / "ca.pem")
    finally:
        server.shutdown()


def _tmp() -> Any:
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="cleave-bench-"))


async def measure(call: Call, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = 0.0

    async def worker(index: int) -> None:
        CALLER.set(index)
        clock = time.perf_counter
        while True:
            started = clock()
            await call()
            ended = clock()
            if ended > stop_at:
                return
            latencies.append(ended - started)

    stop_at = time.perf_counter() + 0.5  # warm up: connections, caches
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.clear()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return summary(latencies, time.perf_counter() - started, len(latencies))


async def run_client(system: str, target: str, concurrency: int, seconds: float) -> None:
    call, close = await CLIENTS[system](target)
    result = await measure(call, concurrency, seconds)
    await close()
    emit(result)


def run(tmp: Any, *, runs: int = 3, seconds: float = 2.0) -> dict[str, Any]:
    """Every system, sequential and 64 in flight, ``runs`` times each; medians."""
    from bench.common import Worker, free_port, median_of, nats_server

    results: dict[str, Any] = {}
    with nats_server(tmp) as url, tls_nats_server(tmp) as (tls_url, ca):
        for system in CLIENTS:
            target = (
                url
                if system in ("nats", "cleave", "cleave-notrace", "faststream")
                else tls_url
                if system == "cleave-tls"
                else str(free_port())
            )
            env = {"CLEAVE_TRACING": "0" if system == "cleave-notrace" else "1"}
            if system == "cleave-tls":
                env["CLEAVE_BENCH_CA"] = ca
            server = Worker("bench.remote", "server", system, target, env=env)
            try:
                server.wait_ready()
                results[system] = {}
                for mode, concurrency in (("sequential", 1), ("in_flight_64", 64)):
                    measured = []
                    for _ in range(runs):
                        client = Worker(
                            "bench.remote",
                            "client",
                            system,
                            target,
                            str(concurrency),
                            str(seconds),
                            env=env,
                        )
                        measured.append(client.result())
                    results[system][mode] = median_of(measured)
                    print(
                        f"  remote {system:<20} {mode:<13} "
                        f"{results[system][mode]['per_second']:>9.0f}/s "
                        f"p50 {results[system][mode]['p50_us']:>7.0f}us "
                        f"p99 {results[system][mode]['p99_us']:>7.0f}us",
                        flush=True,
                    )
            finally:
                server.stop()
    return results


def main(argv: list[str]) -> None:
    role, system, target = argv[0], argv[1], argv[2]
    if role == "server":
        asyncio.run(SERVERS[system](target))
    else:
        asyncio.run(run_client(system, target, int(argv[3]), float(argv[4])))


if __name__ == "__main__":
    main(sys.argv[1:])
