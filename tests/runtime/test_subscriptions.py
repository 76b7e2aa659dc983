"""A subscription keeps its identity when its handler is renamed (issue #10, finding 6).

A small app of its own, in versions that share one name and one data folder:
``rn_source`` publishes ``ItemAdded``; ``rn_sink`` records each event it
handles with the version of the handler that did; ``rn_other`` is a second
consumer that can be told to fail, which keeps an event in the monolith's
outbox across a restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import cleave
from cleave.config import Plan, ServiceSettings, SubscriptionSettings, load_plan
from cleave.data import schema
from cleave.data.database import Database, default_url
from cleave.data.inbox import forget_inbox, inbox_consumers, rename_inbox
from cleave.errors import ConfigError, DefinitionError
from cleave.runtime.subscriptions import consumer_name
from cleave.service import spec_of_service
from cleave.testing import Harness, NatsHarness
from cleave.transport.base import ConsumerPolicy, Outgoing
from cleave.transport.local import MemoryBroker


class ItemAdded(cleave.Event):
    item: str


class Add(cleave.Message):
    item: str


class Added(cleave.Message):
    item: str


class Query(cleave.Message):
    pass


class Applied(cleave.Message):
    rows: tuple[tuple[str, str], ...]  # (handler version, item), in the order applied


@cleave.contract("rn_source", version=1, events=[ItemAdded])
class Source(Protocol):
    async def add(self, req: Add) -> Added: ...


@cleave.contract("rn_sink", version=1)
class Sink(Protocol):
    @cleave.readonly
    async def applied(self, req: Query) -> Applied: ...


@cleave.contract("rn_other", version=1)
class Other(Protocol):
    @cleave.readonly
    async def applied(self, req: Query) -> Applied: ...


class SourceService(cleave.Service, implements=Source):
    db = cleave.Database()

    async def add(self, req: Add) -> Added:
        async with self.db.transaction() as tx:
            tx.publish(ItemAdded(item=req.item))
        return Added(item=req.item)


meta = sa.MetaData()
applied = sa.Table(
    "applied",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.String(16), nullable=False),
    sa.Column("item", sa.String(64), nullable=False),
)


async def _applied(self: Any, req: Query) -> Applied:
    async with self.db.read() as tx:
        rows = (await tx.execute(sa.select(applied.c.version, applied.c.item))).all()
    return Applied(rows=tuple((r.version, r.item) for r in rows))


def sink(handler: str, version: str, **subscribe: Any) -> type[cleave.Service]:
    """The sink service with its handler named ``handler``, declared with ``subscribe``."""

    async def handle(self: Any, event: ItemAdded) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(applied.insert().values(version=version, item=event.item))

    handle.__name__ = handler
    handle.__qualname__ = f"SinkService.{handler}"
    namespace = {
        "db": cleave.Database(meta),
        "applied": _applied,
        handler: cleave.subscribe(ItemAdded, **subscribe)(handle),
    }
    return type("SinkService", (cleave.Service,), namespace, implements=Sink)


class OtherService(cleave.Service, implements=Other):
    db = cleave.Database(meta)
    failing: ClassVar[bool] = False
    attempts: ClassVar[int] = 0

    applied = _applied

    @cleave.subscribe(ItemAdded)
    async def on_item(self, event: ItemAdded) -> None:
        type(self).attempts += 1
        if type(self).failing:
            raise RuntimeError("rn_other fails on purpose")
        async with self.db.transaction() as tx:
            await tx.execute(applied.insert().values(version="other", item=event.item))


V1 = sink("on_item", "v1")
RENAMED = sink("apply_item", "v2")
TAKEOVER = sink("apply_item", "v2", name="apply-item", takeover="on-item")
REPLAY = sink("apply_item", "v2", replay=True)


def app(sink_service: type[cleave.Service] | None, *, other: bool = False) -> cleave.App:
    services: list[type[cleave.Service]] = [SourceService]
    services += [sink_service] if sink_service is not None else []
    services += [OtherService] if other else []
    return cleave.App("rename", services=services)


@pytest.fixture(autouse=True)
def _reset_other() -> None:
    OtherService.failing = False
    OtherService.attempts = 0


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` (sync or async) until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def sink_rows(h: Harness | NatsHarness) -> list[tuple[str, str]]:
    return list((await h.client(Sink).applied(Query())).rows)


def prefix() -> str:
    return f"t{os.urandom(4).hex()}"


# -- declarations ---------------------------------------------------------------------------


def test_the_default_identity_and_consumer_are_todays() -> None:
    sub = spec_of_service(V1).subscriptions[0]
    assert (sub.attr, sub.name, sub.takeover, sub.replay) == ("on_item", "on-item", "", False)
    # Before identities, the consumer was f"{service}-{attr}" with "_" as "-".
    assert consumer_name("rn_sink", sub.name) == "rn_sink-on_item".replace("_", "-")
    declared = spec_of_service(TAKEOVER).subscriptions[0]
    assert (declared.attr, declared.name, declared.takeover) == (
        "apply_item",
        "apply-item",
        "on-item",
    )


@pytest.mark.parametrize("bad", ["a.b", "has space", "a*", "a>", "a/b", "a\\b", "", "x" * 65])
def test_an_identity_a_nats_consumer_cannot_have_is_refused(bad: str) -> None:
    with pytest.raises(DefinitionError, match="cannot name a subscription: use 1 to 64"):
        cleave.subscribe(ItemAdded, name=bad)
    with pytest.raises(DefinitionError, match="cannot name a subscription"):
        cleave.subscribe(ItemAdded, takeover=bad)


def test_takeover_and_replay_exclude_each_other() -> None:
    with pytest.raises(DefinitionError, match="choose one"):
        cleave.subscribe(ItemAdded, takeover="old", replay=True)
    with pytest.raises(DefinitionError, match="cannot take over itself"):
        cleave.subscribe(ItemAdded, name="same", takeover="same")


def test_two_subscriptions_of_a_service_need_two_identities() -> None:
    with pytest.raises(DefinitionError, match="both subscriptions named 'items'"):

        class Twice(cleave.Service, implements=Sink):
            db = cleave.Database()
            applied = _applied

            @cleave.subscribe(ItemAdded, name="items")
            async def first(self, event: ItemAdded) -> None: ...

            @cleave.subscribe(ItemAdded, name="items")
            async def second(self, event: ItemAdded) -> None: ...

    with pytest.raises(DefinitionError, match="both subscriptions named 'on-item'"):

        class Clash(cleave.Service, implements=Sink):
            db = cleave.Database()
            applied = _applied

            @cleave.subscribe(ItemAdded)
            async def on_item(self, event: ItemAdded) -> None: ...

            @cleave.subscribe(ItemAdded, name="on-item")
            async def other(self, event: ItemAdded) -> None: ...

    with pytest.raises(DefinitionError, match="names the current subscription"):

        class Self(cleave.Service, implements=Sink):
            db = cleave.Database()
            applied = _applied

            @cleave.subscribe(ItemAdded, takeover="on-item")
            async def on_item_v2(self, event: ItemAdded) -> None: ...

            @cleave.subscribe(ItemAdded)
            async def on_item(self, event: ItemAdded) -> None: ...

    with pytest.raises(DefinitionError, match="both take over 'old'"):

        class Greedy(cleave.Service, implements=Sink):
            db = cleave.Database()
            applied = _applied

            @cleave.subscribe(ItemAdded, takeover="old")
            async def first(self, event: ItemAdded) -> None: ...

            @cleave.subscribe(ItemAdded, takeover="old")
            async def second(self, event: ItemAdded) -> None: ...


def test_a_subclass_redeclaring_a_handler_keeps_one_subscription() -> None:
    class Double(V1):  # type: ignore[misc, valid-type]
        @cleave.subscribe(ItemAdded)
        async def on_item(self, event: ItemAdded) -> None: ...

    assert [s.name for s in spec_of_service(Double).subscriptions] == ["on-item"]


def test_cleave_toml_says_takeover_or_replay(tmp_path: Path) -> None:
    (tmp_path / "cleave.toml").write_text(
        "[services.rn_sink.subscriptions.apply-item]\ntakeover = 'on-item'\n"
    )
    own = load_plan(tmp_path).service("rn_sink").subscriptions["apply-item"]
    assert (own.takeover, own.replay) == ("on-item", False)
    (tmp_path / "cleave.toml").write_text(
        "[services.rn_sink.subscriptions.apply-item]\ntakeover = 'on-item'\nreplay = true\n"
    )
    with pytest.raises(ConfigError, match=r"set one of them - at `services\.rn_sink"):
        load_plan(tmp_path)
    (tmp_path / "cleave.toml").write_text(
        "[services.rn_sink.subscriptions.apply-item]\ntakeover = 'on.item'\n"
    )
    with pytest.raises(ConfigError, match="takeover"):
        load_plan(tmp_path)
    (tmp_path / "cleave.toml").write_text("[services.rn_sink.subscriptions.apply-item]\nreplay=1\n")
    with pytest.raises(ConfigError, match="replay"):
        load_plan(tmp_path)


async def test_cleave_toml_naming_no_subscription_is_refused_at_start(tmp_path: Path) -> None:
    plan = Plan(
        services={
            "rn_sink": ServiceSettings(
                subscriptions={"apply_item": SubscriptionSettings(takeover="on-item")}
            )
        }
    )
    with pytest.raises(ConfigError, match=r"no subscription 'apply_item' \(its subscriptions: ap"):
        async with Harness(app(RENAMED), tmp_path, plan=plan):
            pass


# -- the inbox by consumer name -------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def inbox_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        db = Database(meta).bind("rn_sink", default_url(tmp_path, "rn_sink"), {})
        await db.start()
        yield db
        await db.stop()
        return
    name = f"cleave_test_{os.urandom(3).hex()}"
    db = Database(meta).bind("rn_sink", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", {})
    await db.start()
    try:
        yield db
    finally:
        await db.stop()
        admin = create_async_engine(
            "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
        )
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


async def test_inbox_rows_are_listed_moved_and_forgotten_by_consumer(inbox_db: Database) -> None:
    rows = [("rn-sink-old", "e1"), ("rn-sink-old", "e2"), ("rn-sink-new", "e2"), ("x-y", "e3")]
    async with inbox_db.transaction() as tx:
        for consumer, event_id in rows:
            await tx.execute(
                schema.inbox.insert().values(consumer=consumer, event_id=event_id, processed_at=1.0)
            )
    assert await inbox_consumers(inbox_db) == {"rn-sink-old", "rn-sink-new", "x-y"}
    await rename_inbox(inbox_db, "rn-sink-old", "rn-sink-new")  # e2 is in both: kept once
    async with inbox_db.read() as tx:
        left = (await tx.execute(sa.select(schema.inbox.c.consumer, schema.inbox.c.event_id))).all()
    assert sorted(map(tuple, left)) == [("rn-sink-new", "e1"), ("rn-sink-new", "e2"), ("x-y", "e3")]
    await forget_inbox(inbox_db, "x-y")
    assert await inbox_consumers(inbox_db) == {"rn-sink-new"}


async def test_a_taken_over_consumers_dead_letters_follow_it(inbox_db: Database) -> None:
    letters = [
        ("d1", "rn-sink-old", "e1"),
        ("d2", "rn-sink-old", "e2"),
        ("d3", "rn-sink-new", "e2"),
    ]
    async with inbox_db.transaction() as tx:
        for letter_id, consumer, event_id in letters:
            await tx.execute(
                schema.dead_letters.insert().values(
                    id=letter_id,
                    consumer=consumer,
                    event_id=event_id,
                    subject="cleave.evt.x.y.v1",
                    payload=b"",
                    headers="{}",
                    error="boom",
                    attempts=5,
                    created_at=1.0,
                    failed_at=1.0,
                )
            )
    await rename_inbox(inbox_db, "rn-sink-old", "rn-sink-new")
    t = schema.dead_letters
    async with inbox_db.read() as tx:
        rows = (await tx.execute(sa.select(t.c.id, t.c.consumer))).all()
    # d2 stays with the old name: the new consumer has a letter for e2 already.
    assert sorted(map(tuple, rows)) == [
        ("d1", "rn-sink-new"),
        ("d2", "rn-sink-old"),
        ("d3", "rn-sink-new"),
    ]


# -- the brokers: where a new consumer starts, which consumers exist ------------------------


@pytest.fixture(params=["memory", pytest.param("jetstream", marks=pytest.mark.nats)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        b = MemoryBroker()
        yield b
        await b.close()
        return
    from cleave.transport.jetstream import JetStreamBroker
    from cleave.transport.nats import connect

    nc = await connect(request.getfixturevalue("nats_url"), "subscriptions-test")
    yield JetStreamBroker(nc, prefix=prefix())
    await nc.close()


async def test_a_consumer_starts_at_a_position_and_can_be_listed_and_deleted(broker: Any) -> None:
    stream, subject = "CLEAVE_RN", "cleave.evt.rn.item.v1"
    await broker.ensure_stream(stream, ["cleave.evt.rn.>"])
    await broker.publish([Outgoing(subject, str(n).encode(), f"id-{n}") for n in range(1, 6)])
    policy = ConsumerPolicy(ack_wait=5.0, batch=1)
    seen: dict[str, list[bytes]] = {"all": [], "late": []}

    def recorder(key: str) -> Any:
        async def handle(delivery: Any) -> None:
            seen[key].append(delivery.data)
            await delivery.ack()

        return handle

    # Created after the events were stored, it still gets all of them (never "new only").
    first = await broker.subscribe(stream, "rn-all", subject, recorder("all"), policy)
    late = await broker.subscribe(stream, "rn-late", subject, recorder("late"), policy, start=4)
    await until(lambda: len(seen["all"]) == 5 and len(seen["late"]) == 2, "deliveries")
    assert seen == {"all": [b"1", b"2", b"3", b"4", b"5"], "late": [b"4", b"5"]}

    async def floors() -> dict[str, tuple[str, int]]:
        return {c.name: (c.subject, c.acked) for c in await broker.consumers(stream)}

    want = {"rn-all": (subject, 5), "rn-late": (subject, 5)}
    await until(lambda: _equal(floors(), want), "every delivery acknowledged")
    await first.stop()
    await late.stop()
    await broker.delete_consumer(stream, "rn-late")
    await broker.delete_consumer(stream, "rn-late")  # gone already: nothing happens
    assert list(await floors()) == ["rn-all"]
    assert await broker.consumers("CLEAVE_NONE") == []


async def _equal(values: Any, want: Any) -> bool:
    return bool(await values == want)


# -- renaming a handler, over JetStream -----------------------------------------------------


@pytest.mark.nats
async def test_a_rename_must_be_answered_then_takeover_applies_nothing_twice(
    nats_url: str, tmp_path: Path
) -> None:
    pre = prefix()
    async with NatsHarness(app(V1), nats_url, tmp_path, prefix=pre) as h:
        for item in ("a", "b"):
            await h.client(Source).add(Add(item=item))
        await h.settle(timeout=20)
        assert await sink_rows(h) == [("v1", "a"), ("v1", "b")]
        names = {c.name for c in await h.hosts["rn_sink"].broker.consumers("CLEAVE_RN_SOURCE")}
        assert names == {"rn-sink-on-item"}  # the name consumers had before identities

    with pytest.raises(DefinitionError) as refused:
        async with NatsHarness(app(RENAMED), nats_url, tmp_path, prefix=pre):
            pass
    message = str(refused.value)
    assert "subscription 'apply-item' (SinkService.apply_item, ItemAdded) is new" in message
    assert "the consumer 'on-item' of this service still exists" in message
    assert 'takeover="on-item"' in message
    assert "replay=True" in message
    assert '[services.rn_sink.subscriptions.apply-item] takeover = "on-item"' in message

    async with NatsHarness(app(TAKEOVER), nats_url, tmp_path, prefix=pre) as h:
        await h.client(Source).add(Add(item="c"))
        await until(lambda: _has(h, ("v2", "c")), "c applied by the renamed handler")
        await h.settle(timeout=20)
        assert await sink_rows(h) == [("v1", "a"), ("v1", "b"), ("v2", "c")]
        # It started where the old consumer was: a and b were not even delivered again.
        [consumer] = h.hosts["rn_sink"].consumers
        assert (consumer.name, consumer.processed, consumer.duplicates) == (
            "rn-sink-apply-item",
            1,
            0,
        )
        names = {c.name for c in await h.hosts["rn_sink"].broker.consumers("CLEAVE_RN_SOURCE")}
        assert names == {"rn-sink-apply-item"}  # the old consumer is gone
        db = h.hosts["rn_sink"].databases["rn_sink"]
        assert await inbox_consumers(db) == {"rn-sink-apply-item"}

    # Started again with the same code: it continues, nothing is asked or applied again.
    async with NatsHarness(app(TAKEOVER), nats_url, tmp_path, prefix=pre) as h:
        await h.client(Source).add(Add(item="d"))
        await until(lambda: _has(h, ("v2", "d")), "d applied")
        await h.settle(timeout=20)
        assert await sink_rows(h) == [("v1", "a"), ("v1", "b"), ("v2", "c"), ("v2", "d")]


async def _has(h: Harness | NatsHarness, row: tuple[str, str]) -> bool:
    return row in await sink_rows(h)


@pytest.mark.nats
async def test_replay_applies_the_retained_events_again_under_the_new_name(
    nats_url: str, tmp_path: Path
) -> None:
    pre = prefix()
    async with NatsHarness(app(V1), nats_url, tmp_path, prefix=pre) as h:
        for item in ("a", "b"):
            await h.client(Source).add(Add(item=item))
        await h.settle(timeout=20)

    async with NatsHarness(app(REPLAY), nats_url, tmp_path, prefix=pre) as h:
        await h.client(Source).add(Add(item="c"))
        await until(lambda: _has(h, ("v2", "c")), "c applied")
        await h.settle(timeout=20)
        rows = await sink_rows(h)
        assert sorted(rows) == [("v1", "a"), ("v1", "b"), ("v2", "a"), ("v2", "b"), ("v2", "c")]
        names = {c.name for c in await h.hosts["rn_sink"].broker.consumers("CLEAVE_RN_SOURCE")}
        assert names == {"rn-sink-apply-item"}


@pytest.mark.nats
async def test_an_event_published_before_a_consumer_exists_is_delivered(
    nats_url: str, tmp_path: Path
) -> None:
    pre = prefix()
    async with NatsHarness(app(None), nats_url, tmp_path, prefix=pre) as h:
        await h.client(Source).add(Add(item="early"))
        await h.settle(timeout=20)
    # The sink's consumer is created only now, after the event was stored.
    async with NatsHarness(app(V1), nats_url, tmp_path, prefix=pre) as h:
        await until(lambda: _has(h, ("v1", "early")), "the early event delivered")


# -- renaming a handler, in the monolith ----------------------------------------------------


async def _leave_an_event_in_the_outbox(tmp_path: Path) -> None:
    """Run version 1 until the sink handled ``a`` while rn_other still fails it, then stop.

    The monolith keeps the event in rn_source's outbox (one consumer has not settled it),
    so the next start publishes it again: the renamed consumer sees it a second time.
    """
    OtherService.failing = True
    async with Harness(app(V1, other=True), tmp_path) as h:
        await h.client(Source).add(Add(item="a"))
        await until(lambda: _has(h, ("v1", "a")), "the sink handled a")
        await until(lambda: OtherService.attempts >= 1, "rn_other tried a")
        db = h.host.databases["rn_sink"]
        assert await inbox_consumers(db) == {"rn-sink-on-item"}
    OtherService.failing = False


async def test_monolith_a_rename_must_be_answered_then_takeover_keeps_the_inbox(
    tmp_path: Path,
) -> None:
    await _leave_an_event_in_the_outbox(tmp_path)
    with pytest.raises(DefinitionError, match=r"'apply-item'.*is new, but the consumer 'on-item'"):
        async with Harness(app(RENAMED, other=True), tmp_path):
            pass

    async with Harness(app(TAKEOVER, other=True), tmp_path) as h:
        # a comes again (rn_other needs it); the renamed handler knows it handled it.
        await until(lambda: _other_has(h, ("other", "a")), "rn_other handled a after the restart")
        await h.settle()
        assert await sink_rows(h) == [("v1", "a")]
        await h.client(Source).add(Add(item="b"))
        await h.settle()
        assert await sink_rows(h) == [("v1", "a"), ("v2", "b")]
        assert await inbox_consumers(h.host.databases["rn_sink"]) == {"rn-sink-apply-item"}


async def _other_has(h: Harness, row: tuple[str, str]) -> bool:
    return row in (await h.client(Other).applied(Query())).rows


async def test_monolith_replay_from_cleave_toml_applies_the_kept_event_again(
    tmp_path: Path,
) -> None:
    await _leave_an_event_in_the_outbox(tmp_path)
    plan = Plan(
        services={
            "rn_sink": ServiceSettings(
                subscriptions={"apply-item": SubscriptionSettings(replay=True)}
            )
        }
    )
    async with Harness(app(RENAMED, other=True), tmp_path, plan=plan) as h:
        await until(lambda: _has(h, ("v2", "a")), "a applied again under the new name")
        await h.settle()
        assert await sink_rows(h) == [("v1", "a"), ("v2", "a")]
        assert await inbox_consumers(h.host.databases["rn_sink"]) == {"rn-sink-apply-item"}

    # Said once, it is done: the same code without the setting starts and asks nothing.
    async with Harness(app(RENAMED, other=True), tmp_path) as h:
        await h.client(Source).add(Add(item="b"))
        await h.settle()
        assert await sink_rows(h) == [("v1", "a"), ("v2", "a"), ("v2", "b")]


async def test_monolith_takeover_from_cleave_toml(tmp_path: Path) -> None:
    await _leave_an_event_in_the_outbox(tmp_path)
    plan = Plan(
        services={
            "rn_sink": ServiceSettings(
                subscriptions={"apply-item": SubscriptionSettings(takeover="on-item")}
            )
        }
    )
    async with Harness(app(RENAMED, other=True), tmp_path, plan=plan) as h:
        await until(lambda: _other_has(h, ("other", "a")), "rn_other handled a")
        await h.settle()
        assert await sink_rows(h) == [("v1", "a")]
