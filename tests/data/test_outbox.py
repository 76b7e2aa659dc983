from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
import sample_app

from cleave.data.database import Database, default_url
from cleave.data.outbox import OutboxRelay
from cleave.transport.base import Outgoing
from cleave.transport.local import MemoryBroker

SUBJECT = "cleave.evt.t.greeted.v1"


class FlakyBroker(MemoryBroker):
    """Fails the first ``failures`` publishes, then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.batches: list[list[str]] = []

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.batches.append([m.msg_id for m in messages])
        await super().publish(messages)


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
