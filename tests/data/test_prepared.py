"""cleave.Prepared: compiled once, run on the driver, same results as tx.execute."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

import cleave
from cleave.data.database import SQLITE_MAX_OPEN, Database, default_url

meta = sa.MetaData()
things = sa.Table(
    "things",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False, server_default="0"),
)

INSERT = cleave.Prepared(
    things.insert().values(
        id=sa.bindparam("id"), name=sa.bindparam("name"), qty=sa.bindparam("qty")
    )
)
BY_ID = cleave.Prepared(
    sa.select(things.c.id, things.c.name).where(things.c.id == sa.bindparam("id"))
)
FIRST_THREE = cleave.Prepared(sa.select(things.c.id).order_by(things.c.id).limit(3))
ADD = cleave.Prepared(
    things.update().where(things.c.qty >= sa.bindparam("floor")).values(qty=things.c.qty + 1)
)


async def _drop_pg(name: str) -> None:
    admin = sa.ext.asyncio.create_async_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    await admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    name = f"cleave_test_{os.urandom(3).hex()}"
    url = (
        default_url(tmp_path, "t")
        if request.param == "sqlite"
        else f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    )
    bound = Database(meta).bind("t", url, {})
    await bound.start()
    try:
        yield bound
    finally:
        await bound.stop()
        if request.param == "postgres":
            await _drop_pg(name)


async def test_rows_come_back_as_named_tuples(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.run_many(INSERT, [{"id": i, "name": f"n{i}", "qty": i} for i in range(1, 6)])
    async with db.read() as tx:
        row = await tx.fetch_one(BY_ID, {"id": 2})
        assert row is not None
        assert (row.id, row.name) == (2, "n2")
        assert await tx.fetch_one(BY_ID, {"id": 99}) is None
        assert [r.id for r in await tx.fetch(FIRST_THREE)] == [1, 2, 3]  # LIMIT from the statement


async def test_run_counts_changed_rows(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.run_many(INSERT, [{"id": i, "name": "x", "qty": i} for i in range(1, 6)])
        assert await tx.run(ADD, {"floor": 3}) == 3
        assert await tx.run(ADD, {"floor": 100}) == 0
    async with db.read() as tx:
        assert await tx.scalar(sa.select(sa.func.sum(things.c.qty))) == 1 + 2 + 4 + 5 + 6


async def test_prepared_and_execute_share_one_transaction(db: Database) -> None:
    async def fails_after_both() -> None:
        async with db.transaction() as tx:
            await tx.run(INSERT, {"id": 1, "name": "prepared", "qty": 0})
            await tx.execute(things.insert().values(id=2, name="core"))
            assert await tx.scalar(sa.select(sa.func.count()).select_from(things)) == 2
            raise RuntimeError("roll both back")

    with pytest.raises(RuntimeError):
        await fails_after_both()
    async with db.transaction() as tx:
        await tx.execute(things.insert().values(id=2, name="core"))
        await tx.run(INSERT, {"id": 1, "name": "prepared", "qty": 0})
    async with db.read() as tx:
        assert [r.name for r in await tx.fetch(BY_ID, {"id": 1})] == ["prepared"]
        assert await tx.scalar(sa.select(sa.func.count()).select_from(things)) == 2


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.run(INSERT, {"id": 1, "name": "a", "qty": 0})

    async def duplicate() -> None:
        async with db.transaction() as tx:
            await tx.run(INSERT, {"id": 2, "name": "b", "qty": 0})
            await tx.run(INSERT, {"id": 1, "name": "again", "qty": 0})

    with pytest.raises(sa.exc.IntegrityError):
        await duplicate()
    async with db.read() as tx:  # the failed transaction left nothing behind
        assert await tx.fetch_one(BY_ID, {"id": 2}) is None


async def test_a_missing_parameter_is_named(db: Database) -> None:
    async with db.read() as tx:
        with pytest.raises(TypeError, match="missing parameter 'id'"):
            await tx.fetch(BY_ID, {"ID": 1})


def test_an_in_list_is_refused_with_the_way_out() -> None:
    prepared = cleave.Prepared(
        sa.select(things.c.id).where(things.c.id.in_(sa.bindparam("ids", expanding=True)))
    )
    with pytest.raises(TypeError, match=r"IN list \(ids\).*tx\.execute"):
        prepared.compiled(sqlite.dialect())


def test_only_statements_can_be_prepared() -> None:
    with pytest.raises(TypeError, match=r"takes a SQLAlchemy statement.*got str"):
        cleave.Prepared("SELECT 1")  # type: ignore[arg-type]


def test_compiled_once_per_dialect() -> None:
    prepared = cleave.Prepared(
        sa.select(things.c.name).where(things.c.id == sa.bindparam("id"), things.c.qty > 0)
    )
    lite = prepared.compiled(sqlite.dialect())
    assert prepared.compiled(sqlite.dialect()) is lite
    assert "?" in lite[0]
    assert lite[1][0] == "id"
    pg = prepared.compiled(postgresql.asyncpg.dialect())
    assert "$1" in pg[0]
    assert pg[1][0] == "id"


async def test_sqlite_connections_are_reused_and_bounded(tmp_path: Path) -> None:
    db = Database(meta).bind("t", default_url(tmp_path, "t"), {})
    await db.start()
    try:
        for i in range(20):
            async with db.transaction() as tx:
                await tx.run(INSERT, {"id": i, "name": "x", "qty": 0})
        assert len(db._idle) == 1  # one connection served them all

        async def slow_read() -> int:
            async with db.read() as tx:
                await asyncio.sleep(0.01)
                return len(await tx.fetch(FIRST_THREE))

        # More readers at once than connections kept, and than transactions allowed open:
        # the extra ones wait their turn without blocking the loop.
        many = SQLITE_MAX_OPEN + 16
        assert await asyncio.gather(*(slow_read() for _ in range(many))) == [3] * many
        assert len(db._idle) <= 8  # the rest were closed, not hoarded
    finally:
        await db.stop()
