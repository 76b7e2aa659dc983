"""The relay sees a service's events in commit order, on PostgreSQL too.

PostgreSQL numbers outbox rows from a sequence when they are inserted, and
transactions commit concurrently: without care a transaction that inserted
later could commit first, so the relay would see seq 2 before seq 1 exists.
Here a deferred trigger holds the first transaction inside its COMMIT (on an
advisory lock the test holds) while a second one publishes and commits.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest
import sample_app
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from cleave.data import schema
from cleave.data.database import Database
from cleave.messages import from_msgpack

pytestmark = pytest.mark.postgres

ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
GATE = {"a": 4242, "b": 1}  # the advisory lock (two-int form) that holds a gated commit

meta = sa.MetaData()
gate = sa.Table("gate", meta, sa.Column("id", sa.Integer, primary_key=True))
WAIT_AT_COMMIT = [
    """CREATE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_lock_shared(4242, 1);
        PERFORM pg_advisory_unlock_shared(4242, 1);
        RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT ON gate
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_at_commit()""",
]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    name = f"cleave_test_{os.urandom(3).hex()}"
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    admin = create_async_engine(ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def publish(db: Database, name: str, committed: list[str], *, gated: bool = False) -> None:
    async with db.transaction() as tx:
        if gated:
            await tx.execute(gate.insert().values(id=1))  # its COMMIT waits for the gate
        tx.publish(sample_app.Greeted(name=name))
    committed.append(name)


async def visible(db: Database) -> list[str]:
    """What a relay reading now would publish, in its order."""
    async with db.read() as tx:
        rows = await tx.execute(sa.select(schema.outbox.c.payload).order_by(schema.outbox.c.seq))
        return [from_msgpack(r.payload, sample_app.Greeted).name for r in rows]


async def waiting_for_locks(conn: AsyncConnection) -> int:
    found = await conn.scalar(
        sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    )
    return int(found or 0)


async def test_rows_are_numbered_in_commit_order_and_never_seen_out_of_it(url: str) -> None:
    db = Database(meta).bind("t", url, {sample_app.Greeted: "cleave.evt.t.greeted.v1"})
    await db.start()
    holder = create_async_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        async with db.transaction() as tx:
            for statement in WAIT_AT_COMMIT:
                await tx.execute(sa.text(statement))
        committed: list[str] = []
        async with holder.connect() as lock:
            await lock.execute(sa.text("SELECT pg_advisory_lock(:a, :b)"), GATE)
            first = asyncio.create_task(publish(db, "first", committed, gated=True))
            deadline = time.monotonic() + 20
            while await waiting_for_locks(lock) < 1:  # "first" is inside its COMMIT
                assert time.monotonic() < deadline, "the first transaction never reached COMMIT"
                await asyncio.sleep(0.01)
            second = asyncio.create_task(publish(db, "second", committed))
            # "second" either waits for its turn (a second lock waiter) or, without the
            # ordering, commits before "first".
            while not second.done() and await waiting_for_locks(lock) < 2:
                assert time.monotonic() < deadline, (
                    "the second transaction neither ended nor waited"
                )
                await asyncio.sleep(0.01)
            seen_meanwhile = await visible(db)
            await lock.execute(sa.text("SELECT pg_advisory_unlock(:a, :b)"), GATE)
        await asyncio.wait_for(asyncio.gather(first, second), 20)
        final = await visible(db)
        assert committed == ["first", "second"]
        assert final == committed  # seq order is commit order
        # A relay reading while "first" was committing saw a prefix: nothing to skip or reorder.
        assert seen_meanwhile == final[: len(seen_meanwhile)]
    finally:
        await holder.dispose()
        await db.stop()


async def test_many_concurrent_publishers_are_seen_in_commit_order(url: str) -> None:
    db = Database(meta).bind("t", url, {sample_app.Greeted: "cleave.evt.t.greeted.v1"})
    await db.start()
    try:
        committed: list[str] = []
        snapshots: list[list[str]] = []

        async def relay_reads() -> None:
            while len(committed) < 40:
                snapshots.append(await visible(db))
                await asyncio.sleep(0)

        reader = asyncio.create_task(relay_reads())
        await asyncio.gather(*(publish(db, f"e{i}", committed) for i in range(40)))
        await asyncio.wait_for(reader, 20)
        final = await visible(db)
        assert sorted(final) == sorted(committed)
        for seen in snapshots:
            assert seen == final[: len(seen)], "a relay would have skipped or reordered an event"
    finally:
        await db.stop()
