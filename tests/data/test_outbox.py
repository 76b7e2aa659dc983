from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sample_app

from cleave.data.database import Database, default_url
from cleave.data.outbox import OutboxRelay
from cleave.messages import from_msgpack
from cleave.transport.base import ConsumerPolicy, Outgoing
from cleave.transport.local import MemoryBroker

SUBJECT = "cleave.evt.t.greeted.v1"


class FlakyBroker(MemoryBroker):
    """Fails the first ``failures`` publishes, then works."""

    def __init__(self, failures: int, *, settle_before_ack: bool = False) -> None:
        super().__init__(settle_before_ack=settle_before_ack)
        self.failures = failures
        self.batches: list[list[str]] = []

    async def publish(self, messages: Sequence[Outgoing]) -> list[asyncio.Future[None]] | None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.batches.append([m.msg_id for m in messages])
        return await super().publish(messages)


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    bound = Database().bind("t", default_url(tmp_path, "t"), {sample_app.Greeted: SUBJECT})
    await bound.start()
    yield bound  # type: ignore[misc]
    await bound.stop()


async def publish(db: Database, *names: str) -> None:
    async with db.transaction() as tx:
        for n in names:
            tx.publish(sample_app.Greeted(name=n))


async def wait_empty(relay: OutboxRelay, timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.02)):
        if await relay.backlog() == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"outbox not drained: {await relay.backlog()} rows")


async def test_rows_are_relayed_in_order_then_deleted(db: Database) -> None:
    broker = FlakyBroker(0)
    await broker.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
    relay = OutboxRelay(db, broker, holder="r1")
    await publish(db, "a", "b")
    await publish(db, "c")
    relay.start()
    await wait_empty(relay)
    await relay.stop()
    names = [m for batch in broker.batches for m in batch]
    assert len(names) == 3
    assert relay.published == 3


async def test_an_unreachable_broker_keeps_the_rows_until_it_acks(db: Database) -> None:
    broker = FlakyBroker(3)
    await broker.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
    relay = OutboxRelay(db, broker, holder="r1", poll=0.05)
    await publish(db, "a")
    relay.start()
    await asyncio.sleep(0.05)
    assert await relay.backlog() == 1
    await wait_empty(relay, timeout=10)
    await relay.stop()
    assert broker.failures == 0
    assert len(broker.batches) == 1


async def test_one_relay_per_database(db: Database) -> None:
    broker = FlakyBroker(0)
    await broker.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
    first = OutboxRelay(db, broker, holder="first", lease_ttl=0.5)
    second = OutboxRelay(db, broker, holder="second", lease_ttl=0.5)
    assert await first._hold_lease()
    assert not await second._hold_lease()
    await first.stop()  # releases the lease
    assert await second._hold_lease()


async def test_a_dead_holder_loses_its_lease(db: Database) -> None:
    broker = FlakyBroker(0)
    first = OutboxRelay(db, broker, holder="first", lease_ttl=0.2)
    second = OutboxRelay(db, broker, holder="second", lease_ttl=0.2)
    assert await first._hold_lease()
    assert not await second._hold_lease()
    await asyncio.sleep(0.25)  # first "died": it never renews
    assert await second._hold_lease()


def name_of(delivery: Any) -> str:
    return from_msgpack(delivery.data, sample_app.Greeted).name


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


LONG_ACK_WAIT = ConsumerPolicy(ack_wait=60.0, backoff=(0.05,))


async def test_an_unsettled_event_keeps_its_row_while_newer_rows_go_on(db: Database) -> None:
    broker = FlakyBroker(0, settle_before_ack=True)
    await broker.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
    holding = True
    steady: list[str] = []

    async def picky(delivery: Any) -> None:
        if holding and name_of(delivery) == "a":
            await delivery.nak(0.05)
        else:
            await delivery.ack()

    async def keen(delivery: Any) -> None:
        steady.append(name_of(delivery))
        await delivery.ack()

    await broker.subscribe("CLEAVE_T", "picky", SUBJECT, picky, LONG_ACK_WAIT)
    await broker.subscribe("CLEAVE_T", "keen", SUBJECT, keen, LONG_ACK_WAIT)
    relay = OutboxRelay(db, broker, holder="r1", poll=0.05)
    relay.start()
    await publish(db, "a")
    await publish(db, "b")
    await publish(db, "c")

    async def b_and_c_settled() -> bool:
        return steady == ["a", "b", "c"] and await relay.backlog() == 1

    # The picky consumer still retries "a": only its row stays.
    await until(b_and_c_settled, "b and c delivered and deleted while a is unsettled", 5)
    holding = False
    await wait_empty(relay)
    await relay.stop()
    await broker.close()
    sent = [m for batch in broker.batches for m in batch]
    assert len(sent) == len(set(sent)) == 3  # "a" was not published again while in flight


async def test_stop_keeps_the_rows_of_unsettled_events(db: Database) -> None:
    broker = MemoryBroker(settle_before_ack=True)
    await broker.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
    seen: list[str] = []

    async def forgetful(delivery: Any) -> None:
        seen.append(name_of(delivery))  # and never settles it

    await broker.subscribe("CLEAVE_T", "c", SUBJECT, forgetful, LONG_ACK_WAIT)
    relay = OutboxRelay(db, broker, holder="r1", poll=0.05)
    relay.start()
    await publish(db, "a")

    async def delivered() -> bool:
        return seen == ["a"]

    await until(delivered, "a delivered")
    await asyncio.wait_for(relay.stop(), 5)
    await asyncio.wait_for(broker.close(), 5)
    assert await relay.backlog() == 1  # a restart publishes it again

    again = MemoryBroker(settle_before_ack=True)
    await again.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
    rec: list[str] = []

    async def ack(delivery: Any) -> None:
        rec.append(name_of(delivery))
        await delivery.ack()

    await again.subscribe("CLEAVE_T", "c", SUBJECT, ack, LONG_ACK_WAIT)
    relay = OutboxRelay(db, again, holder="r1", poll=0.05)
    relay.start()
    await wait_empty(relay)
    await relay.stop()
    await again.close()
    assert rec == ["a"]


async def test_the_relay_waits_once_too_many_events_are_unsettled(db: Database) -> None:
    broker = FlakyBroker(0, settle_before_ack=True)
    await broker.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
    holding = True

    async def slow(delivery: Any) -> None:
        await delivery.nak(0.05) if holding else await delivery.ack()

    policy = ConsumerPolicy(ack_wait=60.0, backoff=(0.05,), max_in_flight=4)
    await broker.subscribe("CLEAVE_T", "slow", SUBJECT, slow, policy)
    relay = OutboxRelay(db, broker, holder="r1", poll=0.05, batch=1, max_unsettled=2)
    relay.start()
    await publish(db, "a", "b", "c")

    async def two_sent() -> bool:
        return sum(map(len, broker.batches)) == 2

    await until(two_sent, "two events published")
    await asyncio.sleep(0.3)  # the relay polls meanwhile: it must not send the third
    assert sum(map(len, broker.batches)) == 2
    assert await relay.backlog() == 3
    holding = False
    await wait_empty(relay)
    await relay.stop()
    await broker.close()
    assert sum(map(len, broker.batches)) == 3
