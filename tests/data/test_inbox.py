from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sample_app
import sqlalchemy as sa

from cleave.data import schema
from cleave.data.database import Database, default_url
from cleave.data.deadletters import DeadLetterStore
from cleave.data.inbox import EventConsumer
from cleave.messages import to_msgpack
from cleave.transport.base import ConsumerPolicy
from cleave.transport.local import MemoryBroker


class FakeDelivery:
    def __init__(self, data: bytes, msg_id: str = "e1", attempt: int = 1) -> None:
        self.subject = "cleave.evt.greeter.greeted.v1"
        self.data = data
        self.headers: dict[str, str] = {}
        self.msg_id = msg_id
        self.attempt = attempt
        self.settled: list[Any] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float) -> None:
        self.settled.append(("nak", delay))

    async def term(self) -> None:
        self.settled.append("term")


meta = sa.MetaData()
log = sa.Table(
    "log",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(20)),
)


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    bound = Database(meta).bind("audit", default_url(tmp_path, "audit"), {})
    await bound.start()
    yield bound  # type: ignore[misc]
    await bound.stop()


def consumer(db: Database, broker: MemoryBroker, fail: int = 0) -> EventConsumer:
    remaining = [fail]

    async def handler(event: sample_app.Greeted) -> None:
        async with db.transaction() as tx:
            await tx.execute(log.insert().values(name=event.name))
        if remaining[0]:
            remaining[0] -= 1
            raise RuntimeError("handler failed")

    return EventConsumer(
        service="audit",
        name="audit-on-greeted",
        event=sample_app.Greeted,
        handler=handler,
        db=db,
        broker=broker,
        policy=ConsumerPolicy(max_deliver=3, backoff=(0.1, 0.5)),
        timeout=5,
    )


async def rows(db: Database, table: sa.Table) -> int:
    async with db.read() as tx:
        return int(await tx.scalar(sa.select(sa.func.count()).select_from(table)))


async def test_a_duplicate_is_acked_and_skipped(db: Database) -> None:
    c = consumer(db, MemoryBroker())
    data = to_msgpack(sample_app.Greeted(name="ann"))
    first, again = FakeDelivery(data), FakeDelivery(data, attempt=2)
    await c.deliver(first)
    await c.deliver(again)
    assert (first.settled, again.settled) == (["ack"], ["ack"])
    assert (c.processed, c.duplicates) == (1, 1)
    assert await rows(db, log) == 1
    assert await rows(db, schema.inbox) == 1


async def test_a_failure_rolls_back_and_naks_with_backoff(db: Database) -> None:
    c = consumer(db, MemoryBroker(), fail=1)
    d = FakeDelivery(to_msgpack(sample_app.Greeted(name="bo")))
    await c.deliver(d)
    assert d.settled == [("nak", 0.1)]
    assert await rows(db, log) == 0  # the handler's write rolled back with the inbox row
    retry = FakeDelivery(d.data, attempt=2)
    await c.deliver(retry)
    assert retry.settled == ["ack"]
    assert await rows(db, log) == 1


async def test_the_last_attempt_dead_letters(db: Database) -> None:
    broker = MemoryBroker()
    c = consumer(db, broker, fail=10)
    d = FakeDelivery(to_msgpack(sample_app.Greeted(name="cy")), msg_id="e9", attempt=3)
    await c.deliver(d)
    assert d.settled == ["term"]
    [letter] = await DeadLetterStore(db, "audit").find()  # kept in the consumer's database
    assert (letter.consumer, letter.event_id, letter.attempts) == ("audit-on-greeted", "e9", 3)
    assert (letter.subject, letter.payload) == (d.subject, d.data)
    assert "handler failed" in letter.error
    assert c.dead_lettered == 1
    assert await rows(db, log) == 0  # the failed attempt's writes rolled back


async def test_a_message_that_cannot_be_decoded_is_dead_lettered_at_once(db: Database) -> None:
    broker = MemoryBroker()
    c = consumer(db, broker)
    d = FakeDelivery(b"\xc1 not msgpack")
    await c.deliver(d)
    assert d.settled == ["term"]
    [letter] = await DeadLetterStore(db, "audit").find()
    assert "cannot decode Greeted" in letter.error
    assert letter.describe()["payload"] == {"undecodable": d.data.hex()}
