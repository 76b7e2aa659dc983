"""The saga engine: order, compensation, retries, timeouts, crashes, leases, stuck sagas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

import cleave
from cleave.context import current
from cleave.data import schema
from cleave.data.database import Transaction, _ambient
from cleave.data.saga import SagaOutcome, SagaRunner
from cleave.messages import to_msgpack
from cleave.observability.dashboard import Dashboard
from cleave.observability.metrics import registry_for, render
from cleave.runtime.hostmetrics import HostCollector, refresher
from cleave.runtime.sources import LocalSource
from cleave.testing import Harness, build


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
    trip = cleave.Saga(Trip, timeout=2.0, step_timeout=0.5, lease=1.0, compensation_retries=3)

    # Knobs a test turns: how each step behaves, and what happened.
    behaviour: ClassVar[dict[str, list[str]]] = {}
    log: ClassVar[list[str]] = []
    request_ids: ClassVar[list[str]] = []
    # The transaction each step and compensation ran in (None: none).
    transactions: ClassVar[list[Transaction | None]] = []

    async def ping(self, req: Ping) -> Ping:
        return req

    def _act(self, name: str) -> None:
        ctx = current()
        self.request_ids.append(ctx.request_id if ctx else "")
        self.transactions.append(_ambient.get())
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


class Tour(cleave.Message):
    tour_id: str
    seen: tuple[str, ...] = ()


@cleave.contract("tours", version=1)
class Tours(Protocol):
    async def ping(self, req: Ping) -> Ping: ...


class ToursService(cleave.Service, implements=Tours):
    """Slow steps that note when two of one saga's steps run at the same time."""

    db = cleave.Database()
    tour = cleave.Saga(Tour, timeout=60.0, step_timeout=1.0, lease=2.0)

    running: ClassVar[dict[str, int]] = {}
    overlaps: ClassVar[list[str]] = []
    visits: ClassVar[list[str]] = []

    async def ping(self, req: Ping) -> Ping:
        return req

    async def _visit(self, s: Tour, place: str) -> Tour:
        self.running[s.tour_id] = self.running.get(s.tour_id, 0) + 1
        if self.running[s.tour_id] > 1:
            self.overlaps.append(f"{s.tour_id}.{place}")
        self.visits.append(f"{s.tour_id}.{place}")
        try:
            await asyncio.sleep(0.005)
        finally:
            self.running[s.tour_id] -= 1
        return Tour(tour_id=s.tour_id, seen=(*s.seen, place))

    @tour.step
    async def museum(self, s: Tour) -> Tour:
        return await self._visit(s, "museum")

    @tour.step
    async def castle(self, s: Tour) -> Tour:
        return await self._visit(s, "castle")

    @tour.step
    async def harbour(self, s: Tour) -> Tour:
        return await self._visit(s, "harbour")


@pytest.fixture
async def travel() -> TravelService:
    reset()
    async with build(TravelService) as svc:
        yield svc  # type: ignore[misc]


def reset() -> None:
    TravelService.behaviour = {}
    TravelService.log = []
    TravelService.request_ids = []
    TravelService.transactions = []


async def put_saga(
    db: cleave.Database, saga_id: str, state: cleave.Message, *, owner: str, lease: float
) -> None:
    """A saga's record as another replica left it: leased by ``owner`` for ``lease`` s more."""
    now = time.time()
    kind = "tours.tour" if isinstance(state, Tour) else "travel.trip"
    async with db.transaction() as tx:
        await tx.execute(
            schema.sagas.insert().values(
                saga_id=saga_id,
                kind=kind,
                state="running",
                step=0,
                data=to_msgpack(state),
                attempts=0,
                next_attempt_at=now,
                deadline_at=now + 60,
                owner=owner,
                lease_until=now + lease,
                traceparent="",
                created_at=now,
                updated_at=now,
            )
        )


async def expire(db: cleave.Database, saga_id: str, owner: str | None = None) -> None:
    """The lease on ``saga_id`` ran out (and, with ``owner``, was last held by it)."""
    values: dict[str, Any] = {"lease_until": 0.0}
    if owner is not None:
        values["owner"] = owner
    async with db.transaction() as tx:
        await tx.execute(
            schema.sagas.update().where(schema.sagas.c.saga_id == saga_id).values(**values)
        )


async def until(
    read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = 20.0
) -> Any:
    """Poll ``read()`` until ``ok`` says its value will do; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        await asyncio.sleep(0.02)


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
    await put_saga(travel.db, "t10", Trip(trip_id="t10"), owner="elsewhere", lease=60.0)
    outcome = await travel.trip.run("t10", wait=1)
    assert outcome.status == "running"  # another replica holds the lease
    assert travel.log == []
    await expire(travel.db, "t10")  # that replica died
    outcome = await travel.trip.run("t10", wait=10)
    assert outcome.status == "done"
    assert travel.log == ["flight:ok", "hotel:ok", "record:ok"]


async def test_running_a_saga_that_does_not_exist_says_so(travel: TravelService) -> None:
    with pytest.raises(cleave.LifecycleError, match="there is no saga 'nope'"):
        await travel.trip.run("nope", wait=1)


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
    with pytest.raises(cleave.DefinitionError, match="give 0 or more"):
        cleave.Saga(Trip, compensation_retries=-1)

    with pytest.raises(cleave.DefinitionError, match="has no steps"):

        class NoSteps(cleave.Service, implements=Travel):
            db = cleave.Database()
            empty = cleave.Saga(Trip)

            async def ping(self, req: Ping) -> Ping:
                return req


def test_an_unbound_saga_says_how_to_test() -> None:
    with pytest.raises(cleave.LifecycleError, match="is not bound"):
        TravelService().trip  # noqa: B018


# -- two replicas, one database: the lease (finding 9a) ---------------------------------------


async def test_two_replicas_racing_for_a_saga_never_both_take_it(shared_url: str) -> None:
    reset()
    async with (
        build(TravelService, database_url=shared_url) as one,
        build(TravelService, database_url=shared_url) as two,
    ):
        first = SagaRunner(TravelService.trip, one, one.db, service="travel", owner="replica-1")
        second = SagaRunner(TravelService.trip, two, two.db, service="travel", owner="replica-2")
        await put_saga(one.db, "race", Trip(trip_id="race"), owner="dead", lease=0.0)
        winners = []
        for round_ in range(40):
            await expire(one.db, "race", owner="dead")  # its driver died: both go for it
            rows = await asyncio.gather(first._claim("race"), second._claim("race"))
            won = [row.owner for row in rows if row is not None]
            assert len(won) == 1, f"round {round_}: {won or 'nobody'} took the saga"
            winners.extend(won)
            # While the winner's lease lasts, the other cannot take it.
            loser = second if won == ["replica-1"] else first
            assert await loser._claim("race") is None
        async with one.db.read() as tx:
            owner = await tx.scalar(sa.select(schema.sagas.c.owner))
        assert owner == winners[-1]
    assert TravelService.log == []  # claiming is not driving


async def test_two_replicas_never_run_a_sagas_steps_twice(shared_url: str) -> None:
    ToursService.running, ToursService.overlaps, ToursService.visits = {}, [], []
    ids = [f"tour-{i}" for i in range(20)]
    async with (
        build(ToursService, database_url=shared_url) as one,
        build(ToursService, database_url=shared_url) as two,
    ):
        runners = [
            SagaRunner(ToursService.tour, svc, svc.db, service="tours", owner=f"replica-{n}")
            for n, svc in enumerate((one, two), start=1)
        ]
        for saga_id in ids:  # left by a replica that died
            await put_saga(one.db, saga_id, Tour(tour_id=saga_id), owner="dead", lease=0.0)
        for runner in runners:
            runner.start_recovery(interval=0.01)
        try:
            # Both replicas go for every saga at once (as their recovery loops do too).
            await asyncio.gather(*(r.run(i, wait=20) for i in ids for r in runners))

            async def statuses() -> set[str]:
                outcomes = [await runners[0].get(i) for i in ids]
                return {o.status if o is not None else "gone" for o in outcomes}

            await until(statuses, lambda s: s == {"done"})
        finally:
            for runner in runners:
                await runner.stop()
    assert ToursService.overlaps == []
    assert sorted(ToursService.visits) == sorted(
        f"{i}.{place}" for i in ids for place in ("museum", "castle", "harbour")
    )


# -- the driver runs outside its starter's transaction (finding 9b) ---------------------------


async def test_a_saga_whose_creating_transaction_rolls_back_never_runs(
    travel: TravelService,
) -> None:
    seen: list[SagaOutcome] = []

    async def place_order() -> None:
        async with travel.db.transaction() as tx:
            await tx.execute(journal.insert().values(entry="order b1"))
            assert await travel.trip.create("b1", Trip(trip_id="b1"))
            seen.append(await travel.trip.run("b1", wait=5))
            raise RuntimeError("the order failed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the order failed"):
        await place_order()
    # run() did not wait for a saga that cannot move before its transaction ends...
    assert time.monotonic() - started < 2
    assert [o.status for o in seen] == ["running"]
    # ...and the saga rolled back with the order: nothing ran, nothing is left to run.
    assert travel.log == []
    assert await travel.trip.get("b1") is None
    assert await entries(travel) == []
    assert not travel.trip._driving


async def test_a_saga_created_in_a_transaction_starts_once_it_commits(
    travel: TravelService,
) -> None:
    seen: list[SagaOutcome] = []

    async def place_order() -> Transaction:
        async with travel.db.transaction() as tx:
            await tx.execute(journal.insert().values(entry="order b2"))
            assert await travel.trip.create("b2", Trip(trip_id="b2"))
            seen.append(await travel.trip.run("b2", wait=5))
            assert travel.log == []  # not before the commit
        return tx

    starter = await place_order()
    assert [o.status for o in seen] == ["running"]
    # Nobody calls run() again: the commit started it.
    outcome = await until(lambda: travel.trip.get("b2"), lambda o: o.status != "running")
    assert outcome.status == "done"
    assert travel.log == ["flight:ok", "hotel:ok", "record:ok"]
    # Each step in a transaction of its own (the local one) or none, never the starter's.
    remote, local = travel.transactions[:2], travel.transactions[2]
    assert remote == [None, None]
    assert local is not None
    assert local is not starter
    assert await entries(travel) == ["order b2", "booked b2"]


# -- compensation gives up: stuck (finding 9c) ------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def test_a_compensation_failing_for_ever_leaves_the_saga_stuck(tmp_path: Path) -> None:
    reset()
    TravelService.behaviour = {"hotel": ["abort"], "cancel_flight": ["flaky"] * 1000}
    app = cleave.App("travel", services=[TravelService])
    async with Harness(app, tmp_path) as h:
        runner: SagaRunner[Trip] = h.service("travel").trip  # type: ignore[attr-defined]
        with capture_logs() as logs:
            outcome = await runner.start("s1", Trip(trip_id="s1"), wait=20)
        assert outcome.status == "stuck"
        assert outcome.reason == "hotel said no"
        assert "cancel_flight is down" in (outcome.error or "")
        # The first try and compensation_retries=3 more; then it stopped.
        assert TravelService.log.count("cancel_flight:flaky") == 4
        assert not any(entry.startswith("failed:") for entry in TravelService.log)

        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1, errors
        assert errors[0]["saga_id"] == "s1"
        assert errors[0]["step"] == "cancel_flight"
        assert "cancel_flight is down" in errors[0]["error"]
        assert "retry('s1')" in errors[0]["event"]

        status = await h.host.status()
        assert status["sagas_stuck"] == {"travel.trip": 1}
        assert status["sagas"] == {"travel.trip": 0}
        registry = registry_for(HostCollector(h.host))
        await refresher(h.host)()
        text = render(registry).decode()
        assert metric(text, "cleave_sagas_stuck", kind="travel.trip") == 1.0
        dashboard = Dashboard(app, LocalSource(h.host, h.monolith.broker, version="t"), "t")
        assert (await dashboard.overview())["sagas_stuck"] == {"travel.trip": 1}

        # Never retried silently: the recovery loop (every second) passes it by.
        await asyncio.sleep(2.5)
        assert TravelService.log.count("cancel_flight:flaky") == 4

        # The operator's way out, once the cause is fixed.
        TravelService.behaviour["cancel_flight"] = []
        assert await runner.retry("s1")
        final = await until(lambda: runner.get("s1"), lambda o: o.status != "running")
        assert final.status == "failed"
        assert TravelService.log[-2:] == ["cancel_flight:ok", "failed:hotel said no"]
        assert not await runner.retry("s1")  # only a stuck saga can be retried
        assert (await h.host.status())["sagas_stuck"] == {"travel.trip": 0}
