"""Leases: one holder at a time among replicas sharing a database, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from cleave.data import schema
from cleave.data.database import Database
from cleave.data.lease import Lease, RowLease

meta = sa.MetaData()
jobs = sa.Table(
    "jobs",
    meta,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
)
JOBS = RowLease(
    jobs.c.id, jobs.c.holder, jobs.c.expires, only=jobs.c.state == "open", returning=[jobs.c.id]
)


@pytest.fixture
async def replicas(shared_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two replicas' handles on one database (as two processes would have)."""
    one = Database(meta).bind("t", shared_url, {})
    two = Database(meta).bind("t", shared_url, {})
    await one.start()
    await two.start()
    try:
        yield one, two
    finally:
        await one.stop()
        await two.stop()


async def test_a_named_lease_has_one_holder_at_a_time(
    replicas: tuple[Database, Database],
) -> None:
    one, two = replicas
    a = Lease(one, "job", holder="a", ttl=5.0)
    b = Lease(two, "job", holder="b", ttl=5.0)
    assert await a.acquire()  # first use: the row is inserted
    assert a.held
    assert not await b.acquire()
    assert not b.held
    assert await a.hold()
    await a.release()
    assert not a.held
    assert await b.acquire()  # handed back: no need to wait for the ttl
    assert not await a.acquire()
    async with one.read() as tx:
        rows = (await tx.execute(sa.select(schema.leases.c.name, schema.leases.c.holder))).all()
    assert [tuple(r) for r in rows] == [("job", "b")]


async def test_a_dead_holders_lease_is_taken_once_it_runs_out(
    replicas: tuple[Database, Database],
) -> None:
    one, two = replicas
    a = Lease(one, "job", holder="a", ttl=0.3)
    b = Lease(two, "job", holder="b", ttl=0.3)
    assert await a.acquire()
    assert not await b.acquire()
    # "a" died: it never renews. "b" gets the lease once it runs out, not before.
    deadline = time.monotonic() + 20
    while not await b.acquire():
        assert time.monotonic() < deadline, "the lease never ran out"
        await asyncio.sleep(0.02)
    assert time.time() >= a.until
    assert not await a.acquire()


async def test_hold_renews_only_once_half_the_ttl_is_gone(
    replicas: tuple[Database, Database],
) -> None:
    one, _ = replicas
    a = Lease(one, "job", holder="a", ttl=0.4)
    assert await a.acquire()
    first = a.until
    assert await a.hold()
    if time.time() < first - 0.2:  # still more than half left: nothing written
        assert a.until == first
    deadline = time.monotonic() + 20
    while a.until == first:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
        assert await a.hold()
    assert a.until > first


async def test_replicas_racing_for_a_lease_never_both_win(
    replicas: tuple[Database, Database],
) -> None:
    one, two = replicas
    a = Lease(one, "race", holder="a", ttl=5.0)
    b = Lease(two, "race", holder="b", ttl=5.0)
    for round_ in range(30):
        async with one.transaction() as tx:
            if round_ % 2:  # the holder died
                await tx.execute(schema.leases.update().values(holder="dead", expires_at=0.0))
            else:  # first use: both insert
                await tx.execute(schema.leases.delete())
        won = await asyncio.gather(a.acquire(), b.acquire())
        assert won.count(True) == 1, f"round {round_}: {won}"
        assert [a.held, b.held] == won


async def test_a_row_lease_takes_only_rows_it_may_and_hands_them_back(
    replicas: tuple[Database, Database],
) -> None:
    one, two = replicas
    async with one.transaction() as tx:
        await tx.execute(
            jobs.insert(),
            [
                {"id": "j1", "state": "open", "holder": "", "expires": 0.0},
                {"id": "j2", "state": "done", "holder": "", "expires": 0.0},
            ],
        )
    async with one.transaction() as tx:
        assert await JOBS.take(tx, "j1", "a", 5.0) == ("j1",)
        assert await JOBS.take(tx, "j2", "a", 5.0) is None  # not open: not to be leased
        assert await JOBS.take(tx, "nope", "a", 5.0) is None
    async with two.transaction() as tx:
        assert await JOBS.take(tx, "j1", "b", 5.0) is None  # a's
        assert not await JOBS.release(tx, "j1", "b")
    async with one.transaction() as tx:
        assert await JOBS.take(tx, "j1", "a", 5.0) == ("j1",)  # renewed
        assert await JOBS.release(tx, "j1", "a")
    async with two.transaction() as tx:
        assert await JOBS.take(tx, "j1", "b", 5.0) == ("j1",)
        assert await JOBS.release_all(tx, "b") == 1
    async with one.transaction() as tx:
        assert await JOBS.take(tx, "j1", "a", 5.0) == ("j1",)
        holder = await tx.scalar(sa.select(jobs.c.holder).where(jobs.c.id == "j1"))
    assert holder == "a"


def test_a_lease_needs_a_ttl() -> None:
    with pytest.raises(ValueError, match="needs a ttl above 0 s"):
        Lease(Database(), "job", holder="a", ttl=0)
