"""The call path's promises on paths the shop never takes, in both placements.

A small app of its own: ``ledger`` books entries in its database and has
each stamped by ``notary``; ``ledger.ping`` touches nothing. Each test
breaks ``notary`` (refusing calls, or absent) and checks what the gateway
and ``ledger`` make of it:

- an ``@idempotent`` method never remembers a transient failure, and a
  failing method's writes never commit, decorated or not;
- ``ran=False`` ("provably did not run") describes one hop only;
- breakers: slowness opens them in process too, a cancelled probe frees
  its place, and a dependency's failure does not shut off a healthy callee.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import httpx
import pytest
import sqlalchemy as sa

import cleave
from cleave.config import Plan
from cleave.resilience import ResilienceSettings
from cleave.testing import Harness, NatsHarness


class Entry(cleave.Message):
    note: str
    nap: float = 0.0


class Booked(cleave.Message):
    note: str
    entries: int


class Stamp(cleave.Message):
    note: str
    nap: float = 0.0


class Stamped(cleave.Message):
    note: str


class Ping(cleave.Message):
    pass


class Pong(cleave.Message):
    entries: int


@cleave.contract("notary", version=1)
class Notary(Protocol):
    @cleave.readonly
    async def stamp(self, req: Stamp) -> Stamped: ...


@cleave.contract("ledger", version=1)
class Ledger(Protocol):
    @cleave.idempotent
    async def book(self, req: Entry) -> Booked: ...

    async def tick(self, req: Entry) -> Stamped:
        """Not safe to retry: counts its runs."""
        ...

    @cleave.readonly
    async def ping(self, req: Ping) -> Pong:
        """Never touches the notary."""
        ...


class NotaryService(cleave.Service, implements=Notary):
    async def stamp(self, req: Stamp) -> Stamped:
        if req.nap:
            await asyncio.sleep(req.nap)
        return Stamped(note=req.note)


meta = sa.MetaData()
entries = sa.Table(
    "entries",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("note", sa.String(64), nullable=False),
)


class LedgerService(cleave.Service, implements=Ledger):
    db = cleave.Database(meta)
    notary = cleave.use(Notary)
    runs: ClassVar[dict[str, int]] = {}

    def _ran(self, what: str) -> None:
        self.runs[what] = self.runs.get(what, 0) + 1

    async def book(self, req: Entry) -> Booked:
        self._ran("book")
        async with self.db.transaction() as tx:
            await tx.execute(entries.insert().values(note=req.note))
            if req.note == "refuse":
                raise cleave.InvalidArgument("refused on purpose (after writing)")
            await self.notary.stamp(Stamp(note=req.note, nap=req.nap))
            count = await tx.scalar(sa.select(sa.func.count()).select_from(entries))
        return Booked(note=req.note, entries=int(count))

    async def tick(self, req: Entry) -> Stamped:
        self._ran("tick")
        return await self.notary.stamp(Stamp(note=req.note, nap=req.nap))

    async def ping(self, req: Ping) -> Pong:
        async with self.db.read() as tx:
            count = await tx.scalar(sa.select(sa.func.count()).select_from(entries))
        return Pong(entries=int(count))


gateway = cleave.Gateway(title="Promises", version="1.0.0")
gateway.post("/book", Ledger.book, idempotency_key=True, auth="public")
gateway.post("/tick", Ledger.tick, auth="public")
gateway.get("/ping", Ledger.ping, auth="public")
app = cleave.App("promises", services=[LedgerService, NotaryService], gateway=gateway)

PLACEMENTS = ["monolith", pytest.param("nats", marks=pytest.mark.nats)]


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    LedgerService.runs.clear()


def plan(**resilience: Any) -> Plan:
    settings = {"backoff": 0.01, **resilience}
    return Plan(resilience=ResilienceSettings(**settings))


@asynccontextmanager
async def running(
    request: pytest.FixtureRequest,
    placement: str,
    tmp_path: Path,
    the_plan: Plan | None = None,
    groups: dict[str, list[str]] | None = None,
) -> AsyncIterator[Any]:
    the_plan = the_plan or plan()
    if placement == "monolith":
        async with Harness(app, tmp_path, plan=the_plan) as h:
            yield h
    else:
        url = request.getfixturevalue("nats_url")
        async with NatsHarness(app, url, tmp_path, plan=the_plan, groups=groups) as h:
            yield h


@asynccontextmanager
async def http(h: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=h.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


async def booked(h: Any) -> int:
    return (await h.client(Ledger).ping(Ping())).entries


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s")
        await asyncio.sleep(0.05)


# -- 1. idempotency remembers only deliberate outcomes -------------------------------------------


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_an_idempotent_call_forgets_a_transient_failure_and_succeeds_once_later(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path) as h, http(h) as gw:
        key = {"Idempotency-Key": "order-7"}
        h.inject("notary", fail=1.0)
        down = await gw.post("/book", json={"note": "seven"}, headers=key)
        assert down.status_code == 503, down.text
        assert await booked(h) == 0, "the failed call's write committed"

        h.inject("notary")  # back
        failed_runs = LedgerService.runs["book"]  # the gateway retried it: it is safe to
        first = await gw.post("/book", json={"note": "seven"}, headers=key)
        assert first.status_code == 200, first.text
        again = await gw.post("/book", json={"note": "seven"}, headers=key)
        assert again.json() == first.json() == {"note": "seven", "entries": 1}
        assert await booked(h) == 1
        assert LedgerService.runs["book"] == failed_runs + 1  # ran once more, then replayed


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_a_deliberate_error_is_replayed_and_its_writes_roll_back(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path) as h, http(h) as gw:
        key = {"Idempotency-Key": "refuse-1"}
        for _ in range(2):
            answer = await gw.post("/book", json={"note": "refuse"}, headers=key)
            assert answer.status_code == 422, answer.text
            assert "refused on purpose" in answer.text
        assert LedgerService.runs["book"] == 1  # the second answer was replayed
        assert await booked(h) == 0, "a failing method's writes committed"


# -- 2. ran=False describes one hop ---------------------------------------------------------------


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_not_run_downstream_is_not_not_run_upstream(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path) as h, http(h) as gw:
        h.inject("notary", fail=1.0)  # refuses before running: ran=False on that hop
        answer = await gw.post("/tick", json={"note": "once"})
        assert answer.status_code == 503, answer.text
        assert LedgerService.runs["tick"] == 1, "the gateway retried a call that had run"


@pytest.mark.nats
async def test_a_callee_with_no_replica_does_not_make_its_caller_retried(
    nats_url: str, tmp_path: Path
) -> None:
    # notary scaled to zero: ledger's call gets "no responders" (ran=False), ledger ran.
    async with NatsHarness(
        app, nats_url, tmp_path, plan=plan(), groups={"ledger": ["ledger"]}
    ) as h:
        async with http(h) as gw:
            answer = await gw.post("/tick", json={"note": "once"})
        assert answer.status_code == 503, answer.text
        assert LedgerService.runs["tick"] == 1


# -- 3. breakers ----------------------------------------------------------------------------------

BREAKER = {
    "timeout": 0.2,
    "retries": 0,
    "breaker_min_calls": 3,
    "breaker_failure_rate": 0.5,
    "breaker_open_for": 0.3,
    "breaker_probes": 1,
}


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_a_slow_dependency_opens_the_breaker_in_every_placement(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path, plan(**BREAKER)) as h:
        notary = h.client(Notary)
        for _ in range(3):
            with pytest.raises(
                cleave.DeadlineExceeded, match=r"within (its attempt timeout of )?0\.2"
            ):
                await notary.stamp(Stamp(note="slow", nap=2.0))
        started = time.monotonic()
        with pytest.raises(cleave.CircuitOpen):
            await notary.stamp(Stamp(note="slow", nap=2.0))
        assert time.monotonic() - started < 0.15  # failed fast, not sent


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_a_cancelled_probe_gives_its_place_back(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    settings = {**BREAKER, "timeout": 5.0}
    async with running(request, placement, tmp_path, plan(**settings)) as h:
        notary = h.client(Notary)
        h.inject("notary", fail=1.0)
        for _ in range(3):
            with pytest.raises(cleave.Unavailable):
                await notary.stamp(Stamp(note="x"))
        with pytest.raises(cleave.CircuitOpen):
            await notary.stamp(Stamp(note="x"))
        h.inject("notary", latency=3.0)
        # Probes cancelled by their callers (a gateway or saga timeout would do the same).
        for _ in range(3):
            await asyncio.sleep(BREAKER["breaker_open_for"] + 0.05)
            probe = asyncio.ensure_future(notary.stamp(Stamp(note="probe")))
            await asyncio.sleep(0.05)
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
        h.inject("notary")  # healthy again

        async def answers() -> bool:
            try:
                await notary.stamp(Stamp(note="ok"))
            except cleave.CircuitOpen:
                return False
            return True

        await eventually(answers)


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_a_broken_dependency_does_not_shut_off_a_healthy_callee(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path, plan(**BREAKER)) as h, http(h) as gw:
        h.inject("notary", fail=1.0)
        for i in range(8):
            answer = await gw.post("/tick", json={"note": f"t{i}"})
            assert answer.status_code == 503, answer.text
        # ledger's breaker to notary is open; the gateway's to ledger must not be.
        ping = await gw.get("/ping")
        assert ping.status_code == 200, ping.text
