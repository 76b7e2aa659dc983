from __future__ import annotations

from pathlib import Path

import pytest
import sample_app
import sqlalchemy as sa

import cleave
from cleave.data import schema
from cleave.data.database import Database, default_url

meta = sa.MetaData()
things = sa.Table(
    "things",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False),
)


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    subjects = {sample_app.Greeted: "cleave.evt.t.greeted.v1"}
    bound = Database(meta).bind("t", default_url(tmp_path, "t"), subjects)
    await bound.start()
    yield bound  # type: ignore[misc]
    await bound.stop()


async def count(db: Database, table: sa.Table = things) -> int:
    async with db.read() as tx:
        return int(await tx.scalar(sa.select(sa.func.count()).select_from(table)))


async def test_commit_and_rollback(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute(things.insert().values(id=1, name="a"))

    async def failing() -> None:
        async with db.transaction() as tx:
            await tx.execute(things.insert().values(id=2, name="b"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing()
    assert await count(db) == 1


async def test_nested_transactions_commit_once_with_the_outer_one(db: Database) -> None:
    async def nested() -> None:
        async with db.transaction() as outer:
            async with db.transaction() as inner:
                assert inner is not outer  # a savepoint of it (see test_savepoints.py)
                await inner.execute(things.insert().values(id=1, name="a"))
            async with db.read() as reader:
                assert reader is outer  # reads see the transaction's own writes
                assert await reader.scalar(sa.select(sa.func.count()).select_from(things)) == 1
            raise RuntimeError("the outer block fails: the inner write goes too")

    with pytest.raises(RuntimeError):
        await nested()
    assert await count(db) == 0


async def test_writers_queue_instead_of_failing(db: Database) -> None:
    import asyncio

    async def add(i: int) -> None:
        async with db.transaction() as tx:
            n = await tx.scalar(sa.select(sa.func.count()).select_from(things))
            await asyncio.sleep(0)
            await tx.execute(things.insert().values(id=i, name=str(n)))

    await asyncio.gather(*(add(i) for i in range(30)))
    assert await count(db) == 30


async def test_publish_writes_the_outbox_on_commit_only(db: Database) -> None:
    async def failing() -> None:
        async with db.transaction() as tx:
            tx.publish(sample_app.Greeted(name="lost"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await failing()
    assert await count(db, schema.outbox) == 0
    woken = []
    db.on_events_committed(lambda: woken.append(1))
    async with db.transaction() as tx:
        tx.publish(sample_app.Greeted(name="kept"))
        tx.publish(sample_app.Greeted(name="kept too"))
    assert await count(db, schema.outbox) == 2
    assert woken == [1]


async def test_publishing_an_undeclared_event_is_explained(db: Database) -> None:
    class Other(cleave.Event):
        x: int

    async with db.transaction() as tx:
        with pytest.raises(cleave.DefinitionError, match="does not declare"):
            tx.publish(Other(x=1))


async def test_no_publish_from_a_read(db: Database) -> None:
    async with db.read() as tx:
        with pytest.raises(cleave.LifecycleError, match="read-only"):
            tx.publish(sample_app.Greeted(name="x"))


async def test_misuse_is_explained(tmp_path: Path) -> None:
    with pytest.raises(cleave.LifecycleError, match="call bind"):
        await Database(meta).start()
    with pytest.raises(cleave.ConfigError, match="Cleave supports"):
        await Database(meta).bind("t", "mysql://x/y", {}).start()
    with pytest.raises(cleave.ConfigError, match="not valid"):
        await Database(meta).bind("t", "::nonsense::", {}).start()
    bad = sa.MetaData()
    sa.Table("cleave_outbox", bad, sa.Column("id", sa.Integer, primary_key=True))
    with pytest.raises(cleave.DefinitionError, match="reserved for Cleave"):
        await Database(bad).bind("t", default_url(tmp_path, "x"), {}).start()
    with pytest.raises(cleave.LifecycleError, match="not started"):
        async with Database(meta).bind("t", default_url(tmp_path, "y"), {}).transaction():
            pass


@pytest.mark.postgres
async def test_postgres_database_is_created_and_used() -> None:
    import os

    name = f"cleave_test_{os.urandom(3).hex()}"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    db = Database(meta).bind("t", url, {sample_app.Greeted: "cleave.evt.t.greeted.v1"})
    await db.start()
    try:
        async with db.transaction() as tx:
            await tx.execute(things.insert().values(id=1, name="pg"))
            tx.publish(sample_app.Greeted(name="pg"))
        assert await count(db) == 1
        assert await count(db, schema.outbox) == 1
    finally:
        await db.stop()
        admin = sa.ext.asyncio.create_async_engine(
            "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
        )
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}"'))
        await admin.dispose()


async def test_postgres_unreachable_is_a_config_error() -> None:
    db = Database(meta).bind("t", "postgresql+asyncpg://postgres@127.0.0.1:1/x", {})
    with pytest.raises(cleave.ConfigError, match="cannot reach PostgreSQL"):
        await db.start()
