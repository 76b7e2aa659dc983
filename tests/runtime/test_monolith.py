"""The monolith's events: each consumer has its own delivery, and a crash loses nothing.

A tiny app of its own: ``pinger`` publishes ``Ping(n)``; ``tally`` consumes it
twice, with a steady handler and a flaky one that fails on the events a test
names until it is told to recover.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar, Protocol

import pytest
import sqlalchemy as sa

import cleave
from cleave.testing import Harness


class Ping(cleave.Event):
    n: int


class Emit(cleave.Message):
    n: int


class Applied(cleave.Message):
    consumer: str
    events: tuple[int, ...] = ()


@cleave.contract("pinger", version=1, events=[Ping])
class Pinger(Protocol):
    async def emit(self, req: Emit) -> Emit: ...


@cleave.contract("tally", version=1)
class Tally(Protocol):
    @cleave.readonly
    async def applied(self, req: Applied) -> Applied:
        """The events ``req.consumer`` applied, in the order it applied them."""
        ...


class PingerService(cleave.Service, implements=Pinger):
    db = cleave.Database()

    async def emit(self, req: Emit) -> Emit:
        async with self.db.transaction() as tx:
            tx.publish(Ping(n=req.n))
        return req


tally_meta = sa.MetaData()
applied = sa.Table(
    "applied",
    tally_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("consumer", sa.String(20), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
)


class TallyService(cleave.Service, implements=Tally):
    db = cleave.Database(tally_meta)
    #: Events the flaky handler fails on, until a test empties the set.
    failing: ClassVar[set[int]] = set()
    #: How many times the flaky handler failed.
    failures = 0

    async def applied(self, req: Applied) -> Applied:
        async with self.db.read() as tx:
            rows = await tx.execute(
                sa.select(applied.c.n)
                .where(applied.c.consumer == req.consumer)
                .order_by(applied.c.id)
            )
            return Applied(consumer=req.consumer, events=tuple(r.n for r in rows))

    @cleave.subscribe(Ping)
    async def on_ping_steady(self, event: Ping) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(applied.insert().values(consumer="steady", n=event.n))

    @cleave.subscribe(Ping)
    async def on_ping_flaky(self, event: Ping) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(applied.insert().values(consumer="flaky", n=event.n))
        if event.n in self.failing:
            type(self).failures += 1
            raise RuntimeError(f"flaky fails on ping {event.n} (after writing: rolled back)")


app = cleave.App("pings", services=[PingerService, TallyService])


@pytest.fixture(autouse=True)
def _reset() -> None:
    TallyService.failing = set()
    TallyService.failures = 0


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` did not happen in time."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def events(h: Harness, consumer: str) -> tuple[int, ...]:
    return (await h.client(Tally).applied(Applied(consumer=consumer))).events


async def test_a_failing_consumer_does_not_hold_back_the_others(tmp_path: Path) -> None:
    TallyService.failing = {1}
    async with Harness(app, tmp_path) as h:
        pinger = h.client(Pinger)
        await pinger.emit(Emit(n=1))

        async def flaky_failed() -> bool:
            return TallyService.failures >= 1

        await until(flaky_failed, 20, "the flaky handler failed on ping 1")
        for n in range(2, 6):
            await pinger.emit(Emit(n=n))

        async def steady_has_all() -> bool:
            return await events(h, "steady") == (1, 2, 3, 4, 5)

        # On its own delivery, while the flaky consumer still retries ping 1.
        await until(steady_has_all, 5, "the steady consumer applied pings 1 to 5")
        assert 1 not in await events(h, "flaky")

        TallyService.failing.clear()  # it recovers: its next redelivery of ping 1 works
        await h.settle(timeout=30)
        flaky = await events(h, "flaky")
        assert sorted(flaky) == [1, 2, 3, 4, 5], flaky  # each once
        assert await events(h, "steady") == (1, 2, 3, 4, 5)  # each once, in publish order
        assert sum([await r.backlog() for r in h.host.relays.values()]) == 0


def outbox_rows(state_dir: Path, service: str) -> int:
    with sqlite3.connect(state_dir / "data" / f"{service}.db") as conn:
        (count,) = conn.execute("SELECT count(*) FROM cleave_outbox").fetchone()
    return int(count)


async def test_an_unsettled_event_is_kept_and_applied_once_after_a_restart(
    tmp_path: Path,
) -> None:
    TallyService.failing = {1}
    async with Harness(app, tmp_path) as h:
        await h.client(Pinger).emit(Emit(n=1))

        async def steady_applied_flaky_failed() -> bool:
            return TallyService.failures >= 1 and await events(h, "steady") == (1,)

        await until(steady_applied_flaky_failed, 20, "steady applied ping 1, flaky failed on it")
    # Stopped (nothing in memory survives): the flaky consumer never settled ping 1,
    # so its outbox row is still there.
    assert outbox_rows(tmp_path, "pinger") == 1

    TallyService.failing.clear()
    async with Harness(app, tmp_path) as h:
        await h.settle(timeout=20)  # published again, to both consumers
        assert await events(h, "flaky") == (1,)
        assert await events(h, "steady") == (1,)  # its inbox skipped the replay
        steady = next(c for c in h.host.consumers if c.name == "tally-on-ping-steady")
        assert steady.duplicates == 1
    assert outbox_rows(tmp_path, "pinger") == 0
