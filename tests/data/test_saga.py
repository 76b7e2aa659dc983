"""The saga engine: order, compensation, retries, timeouts, crashes, leases."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar, Protocol

import pytest
import sqlalchemy as sa

import cleave
from cleave.context import current
from cleave.data import schema
from cleave.data.saga import SagaRunner
from cleave.testing import build


class Trip(cleave.Message):
    trip_id: str
    booked: tuple[str, ...] = ()


class Ping(cleave.Message):
    pass


@cleave.contract("travel", version=1)
class Travel(Protocol):
    async def ping(self, req: Ping) -> Ping: ...


meta = sa.MetaData()
journal = sa.Table(
    "journal",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("entry", sa.String(100), nullable=False),
)


class TravelService(cleave.Service, implements=Travel):
    db = cleave.Database(meta)
    trip = cleave.Saga(Trip, timeout=2.0, step_timeout=0.5, lease=1.0)

    # Knobs a test turns: how each step behaves, and what happened.
    behaviour: ClassVar[dict[str, list[str]]] = {}
    log: ClassVar[list[str]] = []
    request_ids: ClassVar[list[str]] = []

    async def ping(self, req: Ping) -> Ping:
        return req

    def _act(self, name: str) -> None:
        ctx = current()
        self.request_ids.append(ctx.request_id if ctx else "")
        plan = self.behaviour.get(name, [])
        action = plan.pop(0) if plan else "ok"
        self.log.append(f"{name}:{action}")
        if action == "abort":
            raise cleave.Abort(f"{name} said no")
        if action == "flaky":
            raise cleave.Unavailable(f"{name} is down")
        if action == "typed":
            raise cleave.NotFound(f"{name} found nothing")

    @trip.step
    async def flight(self, s: Trip) -> Trip:
        self._act("flight")
        return Trip(trip_id=s.trip_id, booked=(*s.booked, "flight"))

    @trip.compensation(flight)
    async def cancel_flight(self, s: Trip) -> None:
        self._act("cancel_flight")

    @trip.step
    async def hotel(self, s: Trip) -> Trip:
        self._act("hotel")
        if self.behaviour.get("hotel_sleep"):
            await asyncio.sleep(5)
        return Trip(trip_id=s.trip_id, booked=(*s.booked, "hotel"))

    @trip.compensation(hotel)
    async def cancel_hotel(self, s: Trip) -> None:
        self._act("cancel_hotel")

    @trip.step(local=True)
    async def record(self, s: Trip) -> Trip:
        self._act("record")
        async with self.db.transaction() as tx:
            await tx.execute(journal.insert().values(entry=f"booked {s.trip_id}"))
        return s

    @trip.on_failure
    async def failed(self, s: Trip, reason: str) -> None:
        self.log.append(f"failed:{reason}")
        async with self.db.transaction() as tx:
            await tx.execute(journal.insert().values(entry=f"failed {s.trip_id}"))


@pytest.fixture
async def travel() -> TravelService:
    TravelService.behaviour = {}
    TravelService.log = []
    TravelService.request_ids = []
    async with build(TravelService) as svc:
        yield svc  # type: ignore[misc]


async def entries(svc: TravelService) -> list[str]:
    async with svc.db.read() as tx:
        return list((await tx.execute(sa.select(journal.c.entry))).scalars())


async def test_steps_run_in_order_and_the_saga_is_done(travel: TravelService) -> None:
    outcome = await travel.trip.start("t1", Trip(trip_id="t1"))
    assert outcome.status == "done"
    assert outcome.state.booked == ("flight", "hotel")
    assert travel.log == ["flight:ok", "hotel:ok", "record:ok"]
    assert await entries(travel) == ["booked t1"]
    assert (await travel.trip.get("t1")) == outcome


async def test_an_abort_compensates_in_reverse_then_fails(travel: TravelService) -> None:
    travel.behaviour = {"hotel": ["abort"]}
    outcome = await travel.trip.start("t2", Trip(trip_id="t2"))
    assert (outcome.status, outcome.reason) == ("failed", "hotel said no")
    assert travel.log == [
        "flight:ok",
        "hotel:abort",
        "cancel_hotel:ok",
        "cancel_flight:ok",
        "failed:hotel said no",
    ]
    assert await entries(travel) == ["failed t2"]


async def test_a_typed_error_is_a_no(travel: TravelService) -> None:
    travel.behaviour = {"flight": ["typed"]}
    outcome = await travel.trip.start("t3", Trip(trip_id="t3"))
    assert outcome.status == "failed"
    assert "flight found nothing" in (outcome.reason or "")


async def test_a_flaky_step_is_retried_with_the_same_request_id(travel: TravelService) -> None:
    travel.behaviour = {"hotel": ["flaky", "flaky"]}
    outcome = await travel.trip.start("t4", Trip(trip_id="t4"))
    assert outcome.status == "done"
    assert travel.log.count("hotel:flaky") == 2
    hotel_ids = [
        rid
        for rid, entry in zip(travel.request_ids, travel.log, strict=True)
        if entry.startswith("hotel")
    ]
    assert set(hotel_ids) == {"saga-t4.hotel"}


async def test_time_up_turns_retries_into_compensation(travel: TravelService) -> None:
    travel.behaviour = {"hotel": ["flaky"] * 100}
    started = time.monotonic()
    outcome = await travel.trip.start("t5", Trip(trip_id="t5"), wait=10)
    assert outcome.status == "failed"
    assert outcome.reason is not None
    assert outcome.reason.startswith("timed out after 2s in step hotel")
    assert time.monotonic() - started < 6
    assert travel.log[-3:] == ["cancel_hotel:ok", "cancel_flight:ok", f"failed:{outcome.reason}"]


async def test_a_slow_step_times_out_and_is_retried(travel: TravelService) -> None:
    travel.behaviour = {"hotel_sleep": ["yes"]}
    outcome = await travel.trip.start("t6", Trip(trip_id="t6"), wait=10)
    assert outcome.status == "failed"
    assert "hotel took over" in (outcome.reason or "")


async def test_compensations_are_retried_until_they_succeed(travel: TravelService) -> None:
    travel.behaviour = {"hotel": ["abort"], "cancel_flight": ["flaky", "flaky"]}
    outcome = await travel.trip.start("t7", Trip(trip_id="t7"), wait=10)
    assert outcome.status == "failed"
    assert travel.log.count("cancel_flight:flaky") == 2
    assert travel.log.count("cancel_flight:ok") == 1


async def test_run_returns_running_when_the_wait_is_over(travel: TravelService) -> None:
    travel.behaviour = {"hotel": ["flaky"] * 3}
    outcome = await travel.trip.start("t8", Trip(trip_id="t8"), wait=0.05)
    assert outcome.status == "running"
    final = await travel.trip.run("t8", wait=10)
    assert final.status == "done"


async def test_a_crashed_saga_resumes_where_it_stopped(travel: TravelService) -> None:
    travel.behaviour = {"hotel": ["flaky"] * 2}
    await travel.trip.start("t9", Trip(trip_id="t9"), wait=0.05)
    runner: SagaRunner[Trip] = travel.trip
    await runner.stop()  # the process "dies" after the first step
    assert travel.log[0] == "flight:ok"
    survivor = SagaRunner(
        TravelService.trip, travel, travel.db, service="travel", owner="replica-2"
    )
    survivor.start_recovery(interval=0.05)
    for _ in range(200):
        outcome = await survivor.get("t9")
        if outcome is not None and outcome.status != "running":
            break
        await asyncio.sleep(0.02)
    await survivor.stop()
    assert outcome is not None
    assert outcome.status == "done"
    assert travel.log.count("flight:ok") == 1  # not repeated: it had been recorded


async def test_a_leased_saga_is_left_to_its_owner(travel: TravelService) -> None:
    await travel.trip.create("t10", Trip(trip_id="t10"))
    other = SagaRunner(TravelService.trip, travel, travel.db, service="travel", owner="other")
    outcome = await other.run("t10", wait=1)
    assert outcome.status == "running"  # the creator holds the lease
    assert travel.log == []


async def test_create_is_idempotent_and_typed(travel: TravelService) -> None:
    assert await travel.trip.create("t11", Trip(trip_id="t11"))
    assert not await travel.trip.create("t11", Trip(trip_id="t11"))
    with pytest.raises(cleave.DefinitionError, match="takes Trip, got Ping"):
        await travel.trip.create("t12", Ping())  # type: ignore[arg-type]
    async with travel.db.read() as tx:
        kind = await tx.scalar(sa.select(schema.sagas.c.kind))
    assert kind == "travel.trip"


def test_declaration_mistakes_are_explained() -> None:
    saga = cleave.Saga(Trip)
    with pytest.raises(cleave.DefinitionError, match="must be `async def`"):
        saga.step(lambda self, s: s)
    with pytest.raises(cleave.DefinitionError, match="is not a step of this saga"):
        saga.compensation(TravelService.flight)
    with pytest.raises(cleave.DefinitionError, match="state Message"):
        cleave.Saga(int)  # type: ignore[type-var]

    with pytest.raises(cleave.DefinitionError, match="has no steps"):

        class NoSteps(cleave.Service, implements=Travel):
            db = cleave.Database()
            empty = cleave.Saga(Trip)

            async def ping(self, req: Ping) -> Ping:
                return req


def test_an_unbound_saga_says_how_to_test() -> None:
    with pytest.raises(cleave.LifecycleError, match="is not bound"):
        TravelService().trip  # noqa: B018
