"""3. Durable events, end to end: outbox -> JetStream -> handler with an inbox.

A producer service writes events in its transactions (100 per commit, the
outbox rows committed with them); its relay publishes them to JetStream; a
consumer service in another process handles each one in a transaction that
records it in its inbox and writes a row of its own. Both databases are
SQLite files; the NATS server syncs every write (``sync_interval: always``).
The figure is events per second from the first commit to the last handled
event, and the latency from an event's commit to its handling.

The peer is raw JetStream from nats-py (async publish with message ids, a
pull consumer with explicit acks, nothing stored), with the same server
setting and with JetStream's default (a sync every two minutes).

Usage: python -m bench.events consumer|producer SYSTEM URL COUNT DIR
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

import cleave
from bench.common import emit, percentile, ready


class Happened(cleave.Event):
    n: int
    at: float  # when its transaction committed (wall clock)
    note: str


class Nothing(cleave.Message):
    """No fields: the consumer's contract takes and returns nothing of interest."""


@cleave.contract("producer", version=1, events=[Happened])
class Producer(Protocol):
    async def noop(self, req: Nothing) -> Nothing: ...


@cleave.contract("consumer", version=1)
class Consumer(Protocol):
    async def noop(self, req: Nothing) -> Nothing: ...


class ProducerService(cleave.Service, implements=Producer):
    db = cleave.Database()

    async def noop(self, req: Nothing) -> Nothing:
        return req


consumed = sa.MetaData()
seen = sa.Table(
    "seen",
    consumed,
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("latency", sa.Float, nullable=False),
)


class ConsumerService(cleave.Service, implements=Consumer):
    db = cleave.Database(consumed)
    handled = 0
    latencies: list[float] = []  # noqa: RUF012 - one instance per process
    done = asyncio.Event()
    expected = 0

    async def noop(self, req: Nothing) -> Nothing:
        return req

    @cleave.subscribe(Happened)
    async def on_happened(self, event: Happened) -> None:
        latency = time.time() - event.at
        async with self.db.transaction() as tx:
            await tx.execute(seen.insert(), {"n": event.n, "latency": latency})
        cls = type(self)
        cls.handled += 1
        cls.latencies.append(latency)
        if cls.handled >= cls.expected:
            cls.done.set()


APP = cleave.App("events", services=[ProducerService, ConsumerService])
NOTE = "x" * 120


async def _host(url: str, names: list[str], folder: Path) -> Any:
    from cleave.config import Plan
    from cleave.observability.tracing import tracer
    from cleave.runtime.host import Host
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import NatsRpcClient, NatsRpcServer, connect

    tracer.configure(enabled=True)
    nc = await connect(url, "-".join(names))
    host = Host(
        APP,
        Plan(),
        names,
        broker=JetStreamBroker(nc),
        data_dir=folder,
        instance=names[0],
        remote=NatsRpcClient(nc),
        server=NatsRpcServer(nc, instance=names[0], version="0.0.0"),
    )
    await host.start()
    return host, nc


async def cleave_consumer(url: str, count: int, folder: Path) -> None:
    ConsumerService.expected = count
    host, nc = await _host(url, ["consumer"], folder)
    cpu = time.process_time()
    ready()
    await ConsumerService.done.wait()
    finished = time.time()
    emit(
        {
            "finished": finished,
            "cpu_s": round(time.process_time() - cpu, 3),
            "handled": ConsumerService.handled,
            "p50_ms": round(percentile(ConsumerService.latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(ConsumerService.latencies, 0.99) * 1000, 2),
        }
    )
    await host.stop()
    await nc.close()


async def cleave_producer(url: str, count: int, folder: Path) -> None:
    host, nc = await _host(url, ["producer"], folder)
    db = host.databases["producer"]
    ready()
    started = time.time()
    for first in range(0, count, 100):
        async with db.transaction() as tx:
            now = time.time()
            for n in range(first, min(count, first + 100)):
                tx.publish(Happened(n=n, at=now, note=NOTE))
    emit({"started": started, "committed": time.time()})
    relay = host.relays["producer"]
    while await relay.backlog():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    await host.stop()
    await nc.close()


async def raw_consumer(url: str, count: int, folder: Path) -> None:
    import msgspec
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="RAW", subjects=["raw.>"])
    psub = await js.pull_subscribe(
        "raw.happened",
        durable="raw-consumer",
        stream="RAW",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    decoder = msgspec.msgpack.Decoder(Happened)
    latencies: list[float] = []
    cpu = time.process_time()
    ready()
    while len(latencies) < count:
        try:
            msgs = await psub.fetch(256, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            event = decoder.decode(msg.data)
            latencies.append(time.time() - event.at)
            await msg.ack()
    emit(
        {
            "finished": time.time(),
            "cpu_s": round(time.process_time() - cpu, 3),
            "handled": len(latencies),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        }
    )
    await nc.close()


async def raw_producer(url: str, count: int, folder: Path) -> None:
    import msgspec
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    encode = msgspec.msgpack.Encoder().encode
    ready()
    started = time.time()
    for first in range(0, count, 256):
        acks = [
            await js.publish_async(
                "raw.happened",
                encode(Happened(n=n, at=time.time(), note=NOTE)),
                headers={"Nats-Msg-Id": f"raw-{n}"},
            )
            for n in range(first, min(count, first + 256))
        ]
        await asyncio.gather(*acks)
    emit({"started": started, "committed": time.time()})
    await nc.close()


ROLES = {
    ("cleave", "consumer"): cleave_consumer,
    ("cleave", "producer"): cleave_producer,
    ("raw", "consumer"): raw_consumer,
    ("raw", "producer"): raw_producer,
}


def run(tmp: Path, *, runs: int = 3, count: int = 10_000) -> dict[str, Any]:
    from bench.common import Worker, median_of, nats_server

    results: dict[str, Any] = {}
    for system, sync_always in (("cleave", True), ("raw", True), ("raw", False)):
        label = (
            system
            if system == "cleave"
            else f"raw-jetstream-{'fsync' if sync_always else 'default-sync'}"
        )
        measured = []
        for i in range(runs):
            folder = tmp / f"{label}-{i}"
            folder.mkdir(parents=True)
            with nats_server(folder, sync_always=sync_always) as url:
                consumer = Worker(
                    "bench.events", "consumer", system, url, str(count), str(folder / "c")
                )
                consumer.wait_ready()
                producer = Worker(
                    "bench.events", "producer", system, url, str(count), str(folder / "p")
                )
                producer.wait_ready()
                sent = producer.result()
                got = consumer.result()
                seconds = got["finished"] - sent["started"]
                measured.append(
                    {
                        "events": got["handled"],
                        "seconds": round(seconds, 3),
                        "per_second": round(got["handled"] / seconds, 1),
                        "p50_ms": got["p50_ms"],
                        "p99_ms": got["p99_ms"],
                        # Measured by the consumer itself: it has exited by now.
                        "consumer_cpu_s": got["cpu_s"],
                    }
                )
                producer.stop()
                consumer.stop()
        results[label] = median_of(measured)
        print(
            f"  events {label:<28} {results[label]['per_second']:>8.0f}/s "
            f"p50 {results[label]['p50_ms']:>7.1f}ms p99 {results[label]['p99_ms']:>7.1f}ms",
            flush=True,
        )
    return results


def main(argv: list[str]) -> None:
    role, system, url, count, folder = argv
    Path(folder).mkdir(parents=True, exist_ok=True)
    asyncio.run(ROLES[(system, role)](url, int(count), Path(folder)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
