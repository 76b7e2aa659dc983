"""A transaction inside a transaction is a savepoint; a closed transaction takes no events.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sample_app
import sqlalchemy as sa

import cleave
from cleave.data import schema
from cleave.data.database import Database, default_url
from cleave.data.inbox import EventConsumer
from cleave.messages import from_msgpack, to_msgpack
from cleave.transport.base import ConsumerPolicy
from cleave.transport.local import MemoryBroker

meta = sa.MetaData()
things = sa.Table(
    "things",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False),
)
SUBJECTS = {sample_app.Greeted: "cleave.evt.t.greeted.v1"}


class Boom(Exception):
    pass


async def _drop_pg(name: str) -> None:
    admin = sa.ext.asyncio.create_async_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    name = f"cleave_test_{os.urandom(3).hex()}"
    url = (
        default_url(tmp_path, "t")
        if request.param == "sqlite"
        else f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    )
    bound = Database(meta).bind("t", url, SUBJECTS)
    await bound.start()
    try:
        yield bound
    finally:
        await bound.stop()
        if request.param == "postgres":
            await _drop_pg(name)


async def names(db: Database) -> list[str]:
    async with db.read() as tx:
        return list((await tx.execute(sa.select(things.c.name).order_by(things.c.id))).scalars())


async def published(db: Database) -> list[str]:
    async with db.read() as tx:
        rows = await tx.execute(sa.select(schema.outbox.c.payload).order_by(schema.outbox.c.seq))
        return [from_msgpack(r.payload, sample_app.Greeted).name for r in rows]


def greet(tx: cleave.Transaction, name: str) -> None:
    tx.publish(sample_app.Greeted(name=name))


async def add(tx: cleave.Transaction, id: int, name: str) -> None:
    await tx.execute(things.insert().values(id=id, name=name))


async def test_a_failed_inner_transaction_undoes_only_its_own_writes_and_events(
    db: Database,
) -> None:
    async with db.transaction() as outer:
        await add(outer, 1, "before")
        greet(outer, "before")
        try:
            async with db.transaction() as inner:
                await add(inner, 2, "inner")
                greet(inner, "inner")
                raise Boom
        except Boom:
            pass
        await add(outer, 3, "after")
        greet(outer, "after")
    assert await names(db) == ["before", "after"]
    assert await published(db) == ["before", "after"]


async def test_an_inner_transaction_that_succeeds_commits_with_the_outer_one(
    db: Database,
) -> None:
    async with db.transaction() as outer:
        async with db.transaction() as inner:
            await add(inner, 1, "inner")
            greet(inner, "inner")
        async with db.read() as reader:
            assert reader is outer  # a read joins the open transaction and sees the inner write
            assert await reader.scalar(sa.select(sa.func.count()).select_from(things)) == 1
    assert await names(db) == ["inner"]
    assert await published(db) == ["inner"]


async def test_a_database_error_caught_inside_leaves_the_outer_transaction_usable(
    db: Database,
) -> None:
    async with db.transaction() as outer:
        await add(outer, 1, "first")
        with pytest.raises(sa.exc.IntegrityError):
            async with db.transaction() as inner:
                await add(inner, 1, "clash")  # the same key: the statement fails
        # On PostgreSQL the failed statement aborts the transaction; the savepoint undoes that.
        await add(outer, 2, "second")
    assert await names(db) == ["first", "second"]


async def test_savepoints_nest(db: Database) -> None:
    async with db.transaction() as outer:
        await add(outer, 1, "outer")
        try:
            async with db.transaction() as middle:
                await add(middle, 2, "middle")
                async with db.transaction() as inner:
                    await add(inner, 3, "inner")
                    greet(inner, "inner")
                raise Boom  # after the innermost one ended well: both go
        except Boom:
            pass
        async with db.transaction() as sibling:
            await add(sibling, 4, "sibling")
            try:
                async with db.transaction() as deepest:
                    await add(deepest, 5, "deepest")
                    raise Boom
            except Boom:
                pass
    assert await names(db) == ["outer", "sibling"]
    assert await published(db) == []


async def test_callbacks_of_a_failed_inner_transaction_are_dropped(db: Database) -> None:
    called: list[str] = []
    async with db.transaction() as outer:
        outer.after_commit(lambda: called.append("outer"))
        try:
            async with db.transaction() as inner:
                inner.after_commit(lambda: called.append("failed"))
                raise Boom
        except Boom:
            pass
        async with db.transaction() as inner:
            inner.after_commit(lambda: called.append("kept"))
        assert called == []
    assert called == ["outer", "kept"]


async def test_publishing_after_the_block_ended_is_refused_with_the_way_out(
    db: Database,
) -> None:
    async with db.transaction() as committed:
        pass
    with pytest.raises(cleave.LifecycleError, match=r"closed.*publish inside the `async with"):
        greet(committed, "late")
    with pytest.raises(Boom):
        async with db.transaction() as rolled_back:
            raise Boom
    with pytest.raises(cleave.LifecycleError, match="block ended"):
        greet(rolled_back, "late")
    async with db.transaction() as outer:
        async with db.transaction() as inner:
            pass
        with pytest.raises(cleave.LifecycleError, match="block ended"):
            greet(inner, "late")  # the outer one is open, but this block is over
        greet(outer, "in time")
    assert await published(db) == ["in time"]


async def test_an_event_handler_can_recover_from_its_own_failed_transaction(
    db: Database,
) -> None:
    # The consumer runs the handler inside its inbox transaction: the handler's own
    # transactions are nested in it.
    async def handler(event: sample_app.Greeted) -> None:
        async with db.transaction() as tx:
            await add(tx, 1, event.name)
        try:
            async with db.transaction() as tx:
                await add(tx, 2, "optional")
                raise Boom
        except Boom:
            pass  # the optional part failed; the event is still handled

    consumer = EventConsumer(
        service="t",
        name="t-on-greeted",
        event=sample_app.Greeted,
        handler=handler,
        db=db,
        broker=MemoryBroker(),
        policy=ConsumerPolicy(max_deliver=3, backoff=(0.1,)),
        timeout=5,
    )
    delivery = Delivery(to_msgpack(sample_app.Greeted(name="ann")))
    await consumer.deliver(delivery)
    assert delivery.settled == ["ack"]
    assert await names(db) == ["ann"]
    async with db.read() as tx:
        assert await tx.scalar(sa.select(sa.func.count()).select_from(schema.inbox)) == 1


class Delivery:
    def __init__(self, data: bytes) -> None:
        self.subject = "cleave.evt.t.greeted.v1"
        self.data = data
        self.headers: dict[str, str] = {}
        self.msg_id = "e1"
        self.attempt = 1
        self.settled: list[Any] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float) -> None:
        self.settled.append(("nak", delay))

    async def term(self) -> None:
        self.settled.append("term")
