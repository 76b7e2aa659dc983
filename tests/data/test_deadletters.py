"""Dead letters: kept in the consumer's database, in both placements; replayed through the inbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sample_app

from cleave.app import LoadedApp
from cleave.config import EventsSettings, Plan
from cleave.data import schema
from cleave.data.database import Database, default_url
from cleave.data.deadletters import DeadLetter, DeadLetterStore, record
from cleave.data.inbox import EventConsumer
from cleave.data.janitor import DAY, Janitor, Retention
from cleave.errors import ConfigError
from cleave.messages import from_msgpack
from cleave.runtime.dlq import AppDeadLetters
from cleave.testing import Harness, NatsHarness
from cleave.transport.base import ConsumerPolicy

#: Give up after two attempts, quickly: the default policy takes ~20 s to get there.
FAST = ConsumerPolicy(max_deliver=2, backoff=(0.05,))


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(0.05)


def audit_consumer(h: Any) -> EventConsumer:
    """The audit consumer of a Harness or NatsHarness, made to give up quickly."""
    hosts = [h.host] if isinstance(h, Harness) else list(h.hosts.values())
    [consumer] = [c for host in hosts for c in host.consumers if c.service == "audit"]
    consumer.policy = FAST  # the consumer decides when to give up, not the broker
    return consumer


async def names(h: Any) -> tuple[str, ...]:
    return (await h.client(sample_app.Audit).names(sample_app.Names())).names


async def one_letter(store: DeadLetterStore) -> DeadLetter | None:
    found = await store.find()
    return found[0] if len(found) == 1 else None


async def test_a_consumer_that_keeps_failing_keeps_its_letter_and_replays_it_once(
    placed: Any,
) -> None:
    consumer = audit_consumer(placed)
    store = DeadLetterStore(consumer.db, "audit")
    sample_app.AuditService.failures_left = 2  # both attempts fail
    await placed.client(sample_app.Greeter).greet(sample_app.Greet(name="zed"))
    letter = await until(lambda: one_letter(store))
    assert (letter.consumer, letter.attempts) == (consumer.name, 2)
    assert "RuntimeError: audit failed on purpose" in letter.error
    assert from_msgpack(letter.payload, sample_app.Greeted) == sample_app.Greeted(name="zed")
    assert letter.subject.endswith(".evt.greeter.greeted.v1")
    assert await names(placed) == ()  # each failed attempt rolled back

    # Replay: the host running the consumer picks the marked letter up.
    assert [m.id for m in await store.mark([letter.id])] == [letter.id]
    await until(lambda: _gone(store, letter.id))
    assert await names(placed) == ("zed",)
    assert await store.mark([letter.id]) == []  # nothing left to replay a second time

    # The same event dead-lettered again (say, a copy published twice): its
    # replay finds the event in the inbox and does not apply it again.
    async with consumer.db.transaction() as tx:
        again = await record(
            tx,
            consumer=consumer.name,
            event_id=letter.event_id,
            subject=letter.subject,
            payload=letter.payload,
            headers=letter.headers,
            error="once more",
            attempts=1,
        )
    await store.mark([again])
    await until(lambda: _gone(store, again))
    assert await names(placed) == ("zed",)


async def _gone(store: DeadLetterStore, letter_id: str) -> bool:
    return await store.get(letter_id) is None


async def test_a_replay_that_fails_again_keeps_the_letter_with_its_new_error(
    tmp_path: Path,
) -> None:
    async with Harness(sample_app.app, tmp_path) as h:
        consumer = audit_consumer(h)
        store = DeadLetterStore(consumer.db, "audit")
        sample_app.AuditService.failures_left = 3  # two deliveries, then the first replay
        await h.client(sample_app.Greeter).greet(sample_app.Greet(name="amy"))
        letter = await until(lambda: one_letter(store))
        letters = AppDeadLetters.of_host(h.host)

        [failed] = await letters.replay([letter.id], wait=20)
        assert (failed.outcome, failed.consumer) == ("failed", consumer.name)
        assert "audit failed on purpose" in failed.error
        kept = await store.get(letter.id)
        assert kept is not None
        assert (kept.attempts, kept.replay_requested_at) == (3, None)
        assert await names(h) == ()

        [done] = await letters.replay(None, service="audit", wait=20)  # --all --service audit
        assert (done.id, done.outcome) == (letter.id, "replayed")
        assert await names(h) == ("amy",)
        assert await letters.letters() == []


async def test_letters_survive_a_restart_and_a_replay_asked_while_stopped_runs_at_start(
    tmp_path: Path,
) -> None:
    async with Harness(sample_app.app, tmp_path) as h:
        store = DeadLetterStore(audit_consumer(h).db, "audit")
        sample_app.AuditService.failures_left = 2
        await h.client(sample_app.Greeter).greet(sample_app.Greet(name="kit"))
        letter = await until(lambda: one_letter(store))

    # The app is stopped: its letters are read, and marked, from the database alone.
    loaded = LoadedApp(sample_app.app, tmp_path, Plan(), tmp_path)
    async with AppDeadLetters.open(loaded) as letters:
        assert [d.id for d in await letters.letters()] == [letter.id]
        [asked] = await letters.replay([letter.id], wait=0)
        assert asked.outcome == "requested"

    async with Harness(sample_app.app, tmp_path) as h:
        store = DeadLetterStore(audit_consumer(h).db, "audit")
        await until(lambda: _gone(store, letter.id))
        assert await names(h) == ("kit",)


async def test_bad_ids_and_services_are_one_line_errors_that_say_what_to_do(
    tmp_path: Path,
) -> None:
    async with Harness(sample_app.app, tmp_path) as h:
        letters = AppDeadLetters.of_host(h.host)
        with pytest.raises(ConfigError, match=r"no dead letter 'nope' in app sample; `cleave dlq"):
            await letters.replay(["nope"])
        with pytest.raises(ConfigError, match=r"app sample has no service 'audti' \(services:"):
            await letters.letters("audti")
        with pytest.raises(ConfigError, match=r"greeter consumes no events.*that do: audit"):
            await letters.purge(None, service="greeter")


async def test_the_janitor_deletes_letters_past_their_retention(tmp_path: Path) -> None:
    db = Database().bind("audit", default_url(tmp_path, "audit"), {})
    await db.start()
    try:
        async with db.transaction() as tx:
            for event_id in ("old", "new"):
                await record(
                    tx,
                    consumer="audit-on-greeted",
                    event_id=event_id,
                    subject="cleave.evt.greeter.greeted.v1",
                    payload=b"",
                    headers={},
                    error="boom",
                    attempts=5,
                )
            await tx.execute(
                schema.dead_letters.update()
                .where(schema.dead_letters.c.event_id == "old")
                .values(failed_at=time.time() - 3 * DAY)
            )
        retention = Retention.of(EventsSettings(retention_days=3, dead_letter_days=2))
        assert (retention.inbox, retention.dead_letters) == (4 * DAY, 2 * DAY)
        assert await Janitor(db, retention=retention).sweep() == 1
        assert [d.event_id for d in await DeadLetterStore(db, "audit").find()] == ["new"]
    finally:
        await db.stop()


@pytest.mark.nats
async def test_streams_keep_events_as_long_as_the_plan_says(nats_url: str, tmp_path: Path) -> None:
    plan = Plan(events=EventsSettings(retention_days=2.5))
    async with NatsHarness(sample_app.app, nats_url, tmp_path, plan=plan) as h:
        js = h.hosts["greeter"].broker.js  # type: ignore[attr-defined]
        info = await js.stream_info(f"{h.prefix.upper()}_GREETER")
        assert info.config.max_age == pytest.approx(2.5 * DAY)


def test_events_settings_are_validated(tmp_path: Path) -> None:
    from cleave.config import load_plan

    (tmp_path / "cleave.toml").write_text("[events]\nretention_days = 14\ndead_letter_days = 90\n")
    assert load_plan(tmp_path).events == EventsSettings(retention_days=14, dead_letter_days=90)
    (tmp_path / "cleave.toml").write_text("[events]\ndead_letter_days = 0\n")
    with pytest.raises(ConfigError, match=r"> 0.*events.dead_letter_days"):
        load_plan(tmp_path)
    (tmp_path / "cleave.toml").write_text("[events]\nretention = 3\n")
    with pytest.raises(ConfigError, match="retention"):
        load_plan(tmp_path)


def test_a_letter_describes_itself_as_json() -> None:
    letter = DeadLetter(
        id="abc",
        service="audit",
        consumer="audit-on-greeted",
        event_id="e1",
        subject="cleave.evt.greeter.greeted.v1",
        payload=msgspec.msgpack.encode({"name": "ann"}),
        headers={"traceparent": "00-x"},
        error="boom",
        attempts=5,
        created_at=1.0,
        failed_at=2.0,
    )
    described = letter.describe()
    assert described["payload"] == {"name": "ann"}
    assert described["headers"] == {"traceparent": "00-x"}
    assert msgspec.json.decode(msgspec.json.encode(described)) == described


@pytest.mark.postgres
async def test_the_store_and_a_replay_on_postgresql(tmp_path: Path) -> None:
    from cleave.config import DatabaseSettings
    from conftest import PostgresDatabases

    databases = PostgresDatabases()
    plan = Plan(database=DatabaseSettings(url=databases.url))
    try:
        async with Harness(sample_app.app, tmp_path, plan=plan) as h:
            consumer = audit_consumer(h)
            assert consumer.db.url.startswith("postgresql")
            store = DeadLetterStore(consumer.db, "audit")
            sample_app.AuditService.failures_left = 2
            await h.client(sample_app.Greeter).greet(sample_app.Greet(name="pat"))
            letter = await until(lambda: one_letter(store))
            # The same event again updates its letter: attempts add up, one row.
            async with consumer.db.transaction() as tx:
                again = await record(
                    tx,
                    consumer=consumer.name,
                    event_id=letter.event_id,
                    subject=letter.subject,
                    payload=letter.payload,
                    headers=letter.headers,
                    error="again",
                    attempts=3,
                )
            assert again == letter.id
            assert await store.counts() == {consumer.name: 1}
            updated = await store.get(letter.id)
            assert updated is not None
            assert (updated.attempts, updated.error) == (5, "again")

            [done] = await AppDeadLetters.of_host(h.host).replay([letter.id], wait=20)
            assert done.outcome == "replayed"
            assert await names(h) == ("pat",)
    finally:
        await asyncio.to_thread(databases.drop)
