"""One suite, two brokers: the in-memory one must behave like JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cleave.errors import LifecycleError
from cleave.transport.base import ConsumerPolicy, Outgoing
from cleave.transport.local import MemoryBroker, subject_matches

STREAM = "CLEAVE_SHOP"
SUBJECTS = ["cleave.evt.shop.>"]
FAST = ConsumerPolicy(ack_wait=1.0, max_deliver=5, backoff=(0.05,))


@pytest.fixture(params=["memory", pytest.param("jetstream", marks=pytest.mark.nats)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        b = MemoryBroker()
        yield b
        await b.close()
        return
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import connect

    nc = await connect(request.getfixturevalue("nats_url"), "broker-test")
    yield JetStreamBroker(nc, prefix=f"t{os.urandom(4).hex()}")
    await nc.close()


def out(n: int, topic: str = "placed") -> Outgoing:
    return Outgoing(subject=f"cleave.evt.shop.{topic}.v1", data=str(n).encode(), msg_id=f"id-{n}")


class Recorder:
    """A handler that records deliveries and settles them as told."""

    def __init__(self, action: str = "ack") -> None:
        self.action = action
        self.seen: list[tuple[bytes, int]] = []
        self.changed = asyncio.Event()

    async def __call__(self, delivery: Any) -> None:
        self.seen.append((delivery.data, delivery.attempt))
        if self.action == "ack":
            await delivery.ack()
        elif self.action == "nak":
            await delivery.nak(0.05)
        elif self.action == "term":
            await delivery.term()
        # "none": leave it unsettled
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(self.seen)} of {count} deliveries: {self.seen}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    @property
    def data(self) -> list[bytes]:
        return [d for d, _ in self.seen]


async def test_delivers_in_order_and_acks(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder()
    sub = await broker.subscribe(STREAM, "c1", "cleave.evt.shop.placed.v1", rec, FAST)
    await broker.publish([out(i) for i in range(5)])
    await rec.wait_for(5)
    assert rec.data == [b"0", b"1", b"2", b"3", b"4"]
    await asyncio.sleep(0.1)
    assert await sub.pending() == 0
    await sub.stop()


async def test_messages_published_before_the_consumer_are_delivered(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    await broker.publish([out(1), out(2)])
    rec = Recorder()
    sub = await broker.subscribe(STREAM, "late", "cleave.evt.shop.placed.v1", rec, FAST)
    await rec.wait_for(2)
    await sub.stop()


async def test_the_filter_selects_subjects(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder()
    sub = await broker.subscribe(STREAM, "only-paid", "cleave.evt.shop.paid.v1", rec, FAST)
    await broker.publish([out(1, "placed"), out(2, "paid"), out(3, "placed")])
    await rec.wait_for(1)
    await asyncio.sleep(0.2)
    assert rec.data == [b"2"]
    await sub.stop()


async def test_a_duplicate_message_id_is_stored_once(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder()
    sub = await broker.subscribe(STREAM, "dedupe", "cleave.evt.shop.placed.v1", rec, FAST)
    await broker.publish([out(1), out(1), out(2)])
    await broker.publish([out(1)])
    await rec.wait_for(2)
    await asyncio.sleep(0.2)
    assert rec.data == [b"1", b"2"]
    await sub.stop()


async def test_a_nak_comes_back_with_a_higher_attempt(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder("nak")
    sub = await broker.subscribe(STREAM, "naks", "cleave.evt.shop.placed.v1", rec, FAST)
    await broker.publish([out(7)])
    await rec.wait_for(3)
    assert [a for _, a in rec.seen[:3]] == [1, 2, 3]
    rec.action = "ack"
    await sub.stop()


async def test_an_unsettled_delivery_comes_back_after_ack_wait(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder("none")
    policy = ConsumerPolicy(ack_wait=0.5, max_deliver=5)
    sub = await broker.subscribe(STREAM, "slowpoke", "cleave.evt.shop.placed.v1", rec, policy)
    started = time.monotonic()
    await broker.publish([out(1)])
    await rec.wait_for(2, timeout=5)
    assert time.monotonic() - started >= 0.4
    assert [a for _, a in rec.seen[:2]] == [1, 2]
    rec.action = "ack"
    await sub.stop()


async def test_term_means_never_again(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder("term")
    sub = await broker.subscribe(STREAM, "terms", "cleave.evt.shop.placed.v1", rec, FAST)
    await broker.publish([out(1)])
    await rec.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(rec.seen) == 1
    await sub.stop()


async def test_a_durable_consumer_resumes_where_it_stopped(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    first = Recorder()
    sub = await broker.subscribe(STREAM, "resume", "cleave.evt.shop.placed.v1", first, FAST)
    await broker.publish([out(1), out(2)])
    await first.wait_for(2)
    await sub.stop()
    await broker.publish([out(3)])
    second = Recorder()
    sub = await broker.subscribe(STREAM, "resume", "cleave.evt.shop.placed.v1", second, FAST)
    await second.wait_for(1)
    await asyncio.sleep(0.2)
    assert second.data == [b"3"]
    await sub.stop()


async def test_replicas_share_one_durable(broker: Any) -> None:
    await broker.ensure_stream(STREAM, SUBJECTS)
    a, b = Recorder(), Recorder()
    policy = ConsumerPolicy(ack_wait=1.0, max_in_flight=1)
    sub_a = await broker.subscribe(STREAM, "shared", "cleave.evt.shop.placed.v1", a, policy)
    sub_b = await broker.subscribe(STREAM, "shared", "cleave.evt.shop.placed.v1", b, policy)
    await broker.publish([out(i) for i in range(40)])
    deadline = time.monotonic() + 5
    while len(a.seen) + len(b.seen) < 40 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sorted(a.data + b.data, key=int) == [str(i).encode() for i in range(40)]
    await sub_a.stop()
    await sub_b.stop()


async def test_memory_settle_before_ack_tells_when_every_consumer_settled() -> None:
    broker = MemoryBroker(settle_before_ack=True)
    await broker.ensure_stream(STREAM, SUBJECTS)
    gate = asyncio.Event()

    async def slow(delivery: Any) -> None:
        await gate.wait()
        await delivery.ack()

    quick = Recorder()
    await broker.subscribe(STREAM, "slow", "cleave.evt.shop.placed.v1", slow, FAST)
    await broker.subscribe(STREAM, "quick", "cleave.evt.shop.placed.v1", quick, FAST)
    # Stored at once: publishing does not wait for any consumer.
    [settled] = await asyncio.wait_for(broker.publish([out(1)]), 2)
    await quick.wait_for(1)
    await asyncio.sleep(0.1)
    assert not settled.done()  # the slow consumer has not settled it
    gate.set()
    await asyncio.wait_for(settled, 2)
    await broker.close()


async def test_memory_one_failing_consumer_does_not_hold_back_another() -> None:
    broker = MemoryBroker(settle_before_ack=True)
    await broker.ensure_stream(STREAM, SUBJECTS)
    failing, steady = Recorder("nak"), Recorder()
    naks = ConsumerPolicy(ack_wait=1.0, backoff=(0.5,))
    await broker.subscribe(STREAM, "failing", "cleave.evt.shop.placed.v1", failing, naks)
    await broker.subscribe(STREAM, "steady", "cleave.evt.shop.placed.v1", steady, FAST)
    futures = []
    for n in range(5):
        futures += await asyncio.wait_for(broker.publish([out(n)]), 2)
    await steady.wait_for(5)
    assert steady.data == [b"0", b"1", b"2", b"3", b"4"]  # in publish order
    assert not any(f.done() for f in futures)  # the failing one settled none
    failing.action = "ack"
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert sorted(failing.data[-5:]) == [b"0", b"1", b"2", b"3", b"4"]
    await broker.close()


async def test_memory_a_duplicate_publish_gets_the_stored_message_future() -> None:
    broker = MemoryBroker(settle_before_ack=True)
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder("none")
    await broker.subscribe(STREAM, "c", "cleave.evt.shop.placed.v1", rec, FAST)
    [first] = await asyncio.wait_for(broker.publish([out(1)]), 2)
    [again] = await asyncio.wait_for(broker.publish([out(1)]), 2)
    # Not a done future: that would let the sender forget an unsettled message.
    assert again is first
    assert not again.done()
    await rec.wait_for(1)
    assert broker.pending(STREAM, "c") == 1
    await broker.close()


async def test_memory_close_fails_the_unsettled_futures_without_hanging() -> None:
    broker = MemoryBroker(settle_before_ack=True)
    await broker.ensure_stream(STREAM, SUBJECTS)
    rec = Recorder("none")
    await broker.subscribe(STREAM, "c", "cleave.evt.shop.placed.v1", rec, FAST)
    [settled] = await asyncio.wait_for(broker.publish([out(1)]), 2)
    await rec.wait_for(1)
    await asyncio.wait_for(broker.close(), 5)
    with pytest.raises(LifecycleError, match="closed before every consumer settled"):
        await settled


async def test_memory_without_settle_before_ack_returns_nothing_to_wait_for() -> None:
    broker = MemoryBroker()
    await broker.ensure_stream(STREAM, SUBJECTS)
    await broker.subscribe(STREAM, "c", "cleave.evt.shop.placed.v1", Recorder("none"), FAST)
    assert await asyncio.wait_for(broker.publish([out(1)]), 2) is None
    await broker.close()


def test_subject_matching() -> None:
    assert subject_matches("a.*.c", "a.b.c")
    assert not subject_matches("a.*.c", "a.b.d")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert not subject_matches("a.b", "a.b.c")
