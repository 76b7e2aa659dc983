"""Group commit: under synchronous="full" a SQLite commit returns only once its log is synced.

The syncs are observed by wrapping ``os.fdatasync`` and ``os.fsync`` (the
real ones still run): each call records which file it synced and, for the
log, which rows a fresh connection could see when the sync began. A commit
is on disk once a sync of the log that began after it has finished.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sample_app
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

import cleave
from cleave.config import DatabaseSettings, Plan, load_plan
from cleave.data.database import Database, default_url
from cleave.data.outbox import OutboxRelay
from cleave.testing import Harness
from cleave.transport.base import Outgoing
from cleave.transport.local import MemoryBroker

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")

meta = sa.MetaData()
things = sa.Table("things", meta, sa.Column("id", sa.Integer, primary_key=True))
INSERT = cleave.Prepared(things.insert().values(id=sa.bindparam("id")))
SUBJECT = "cleave.evt.t.greeted.v1"
INSERT_OR_IGNORE = cleave.Prepared(
    sqlite_insert(things).values(id=sa.bindparam("id")).on_conflict_do_nothing()
)


@dataclass
class Sync:
    path: str
    inode: int
    seen: frozenset[int] = frozenset()  # for the log: ids committed when the sync began


@dataclass
class Syncs:
    """Every sync of a file in ``folder``, as it happened."""

    folder: Path
    done: list[Sync] = field(default_factory=list)
    #: Called in the syncing thread before a sync of the log (to slow it down, or fail it).
    before_log: Callable[[], None] = lambda: None

    def of_log(self) -> list[Sync]:
        return [s for s in self.done if s.path.endswith("-wal")]

    def of_folder(self) -> list[Sync]:
        return [s for s in self.done if s.path == str(self.folder)]

    def covered(self, row: int) -> bool:
        return any(row in s.seen for s in self.of_log())


@pytest.fixture
def syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Syncs:
    record = Syncs(tmp_path.resolve())
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def wrap(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if not path.startswith(str(record.folder)):
                real(fd)  # another test's or library's file
                return
            seen: frozenset[int] = frozenset()
            if path.endswith("-wal"):
                record.before_log()
                with closing(sqlite3.connect(path.removesuffix("-wal"))) as conn:
                    seen = frozenset(r[0] for r in conn.execute("SELECT id FROM things"))
            real(fd)
            record.done.append(Sync(path, os.fstat(fd).st_ino, seen))

        return sync

    monkeypatch.setattr(os, "fsync", wrap(real_fsync))
    monkeypatch.setattr(os, "fdatasync", wrap(real_fdatasync))
    return record


async def started(tmp_path: Path, synchronous: str = "full") -> Database:
    db = Database(meta).bind("t", default_url(tmp_path, "t"), {}, synchronous=synchronous)
    await db.start()
    return db


@pytest.fixture
async def db(tmp_path: Path, syncs: Syncs) -> AsyncIterator[Database]:
    bound = await started(tmp_path)
    try:
        yield bound
    finally:
        await bound.stop()


async def insert(db: Database, row: int) -> None:
    async with db.transaction() as tx:
        await tx.run(INSERT, {"id": row})


async def test_a_commit_returns_only_once_a_sync_of_the_log_covers_it(
    db: Database, syncs: Syncs
) -> None:
    await insert(db, 1)
    assert syncs.covered(1), f"no sync of the log began after the commit: {syncs.done}"
    assert {s.path for s in syncs.of_log()} == {str(syncs.folder / "t.db-wal")}


async def test_concurrent_commits_share_syncs(db: Database, syncs: Syncs) -> None:
    # A slow disk: every sync of the log takes 30 ms; 64 writers commit meanwhile.
    syncs.before_log = lambda: time.sleep(0.03)
    before = len(syncs.of_log())
    await asyncio.gather(*(insert(db, i) for i in range(64)))
    rounds = len(syncs.of_log()) - before
    assert all(syncs.covered(i) for i in range(64))  # each waited for its own commit's sync
    assert rounds <= 16, f"{rounds} syncs for 64 commits: they were not shared"


async def test_under_normal_nothing_is_synced(tmp_path: Path, syncs: Syncs) -> None:
    db = await started(tmp_path, "normal")
    try:
        await asyncio.gather(*(insert(db, i) for i in range(10)))
        await db.durable()
    finally:
        await db.stop()
    assert syncs.done == []


COUNT = cleave.Prepared(sa.select(sa.func.count()).select_from(things))


async def test_a_transaction_that_wrote_nothing_syncs_nothing_new(
    db: Database, syncs: Syncs
) -> None:
    await insert(db, 1)
    before = len(syncs.done)
    async with db.transaction() as tx:  # as an inbox meets a duplicate: reads, inserts nothing
        assert (await tx.fetch_one(COUNT)) == (1,)
        await tx.run(INSERT_OR_IGNORE, {"id": 1})
    await db.durable()
    assert len(syncs.done) == before


async def test_a_write_that_changes_no_rows_is_synced_too(db: Database, syncs: Syncs) -> None:
    before = len(syncs.of_log())
    async with db.transaction() as tx:
        await tx.run(cleave.Prepared(sa.text("PRAGMA user_version = 7")))
    assert len(syncs.of_log()) == before + 1


async def test_the_durable_barrier_waits_for_the_sync_in_progress(
    db: Database, syncs: Syncs
) -> None:
    entered, gate = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(20)

    syncs.before_log = hold
    writer = asyncio.create_task(insert(db, 7))
    while not entered.is_set():  # the writer committed; its sync is held
        await asyncio.sleep(0.005)
    async with db.read() as tx:  # a reader already sees the commit ...
        assert await tx.scalar(sa.select(things.c.id)) == 7
    barrier = asyncio.create_task(db.durable())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not writer.done()  # ... but it is not on disk yet
    assert not barrier.done()
    gate.set()
    await asyncio.wait_for(asyncio.gather(barrier, writer), 20)
    assert syncs.covered(7)
    syncs.before_log = lambda: None
    before = len(syncs.done)
    await db.durable()  # nothing pending: no sync
    assert len(syncs.done) == before


async def test_the_relay_publishes_no_event_before_its_commit_is_on_disk(
    tmp_path: Path, syncs: Syncs
) -> None:
    published: list[str] = []

    class Recording(MemoryBroker):
        async def publish(self, messages: Sequence[Outgoing]) -> Any:
            published.extend(m.msg_id for m in messages)
            return await super().publish(messages)

    db = Database(meta).bind("t", default_url(tmp_path, "t"), {sample_app.Greeted: SUBJECT})
    await db.start()
    entered, gate = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(20)

    try:
        broker = Recording()
        await broker.ensure_stream("CLEAVE_T", ["cleave.evt.t.>"])
        relay = OutboxRelay(db, broker, holder="t")
        syncs.before_log = hold
        writer = asyncio.create_task(publish_one(db))
        while not entered.is_set():  # committed, the sync held: the row is visible
            await asyncio.sleep(0.005)
        relaying = asyncio.create_task(relay.relay_once())
        for _ in range(20):
            await asyncio.sleep(0)
        assert published == []  # the relay read the row, and waits for the disk
        gate.set()
        assert await asyncio.wait_for(relaying, 20) == 1
        assert len(published) == 1
        await writer
    finally:
        gate.set()
        await db.stop()


async def publish_one(db: Database) -> None:
    async with db.transaction() as tx:
        tx.publish(sample_app.Greeted(name="ann"))


async def test_syncs_follow_the_log_across_checkpoints_and_a_new_log_file(
    tmp_path: Path, syncs: Syncs
) -> None:
    db = await started(tmp_path)
    wal = tmp_path / "t.db-wal"
    try:
        await insert(db, 1)
        first = syncs.of_log()[-1].inode
        assert len(syncs.of_folder()) == 2  # at start for the database file, once for the log
        with closing(sqlite3.connect(tmp_path / "t.db", isolation_level=None)) as other:
            for row in range(2, 6):
                # Emptied and restarted from its start: the same file, still the one synced.
                other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await insert(db, row)
                assert syncs.covered(row)
        assert {s.inode for s in syncs.of_log()} == {first}
        assert len(syncs.of_folder()) == 2
        # Every connection closes: SQLite copies the log into the database file and
        # deletes it; the next commit makes a new log file, whose folder entry is synced.
        while db._idle:
            db._idle.pop().close()
        assert db._sync is not None
        assert db._checkpointer is not None
        db._sync.dispose()
        await db._checkpointer.close()
        assert not wal.exists()
        await insert(db, 6)
        assert syncs.covered(6)
        assert syncs.of_log()[-1].path == str(syncs.folder / "t.db-wal")
        assert len(syncs.of_folder()) == 3
    finally:
        await db.stop()


async def test_a_failed_sync_fails_every_transaction_after_it_with_the_way_out(
    db: Database, syncs: Syncs
) -> None:
    def fail() -> None:
        raise OSError(errno.EIO, "Input/output error")

    syncs.before_log = fail
    with pytest.raises(cleave.LifecycleError, match=r"could not sync its log.*restart the service"):
        await insert(db, 1)
    syncs.before_log = lambda: None
    with pytest.raises(cleave.LifecycleError, match="may be lost"):
        await insert(db, 2)


def test_the_setting_is_validated_with_the_choices(tmp_path: Path) -> None:
    (tmp_path / "cleave.toml").write_text('[database]\nsynchronous = "off"\n')
    with pytest.raises(cleave.ConfigError, match=r"synchronous = 'off'.*\"full\".*\"normal\""):
        load_plan(tmp_path)
    with pytest.raises(cleave.ConfigError, match="power cut"):
        Database(meta).bind("t", default_url(tmp_path, "t"), {}, synchronous="FULL")
    assert load_plan(tmp_path / "nowhere").database.synchronous == "full"


def test_the_setting_survives_a_database_url_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cleave.toml").write_text('[database]\nsynchronous = "normal"\n')
    monkeypatch.setenv("CLEAVE_DATABASE_URL", "sqlite:///elsewhere/{service}.db")
    plan = load_plan(tmp_path)
    assert plan.database.synchronous == "normal"
    assert plan.database.url == "sqlite:///elsewhere/{service}.db"


async def test_the_host_gives_each_database_the_setting(tmp_path: Path) -> None:
    import sample_app

    plan = Plan(database=DatabaseSettings(synchronous="normal"))
    async with Harness(sample_app.app, tmp_path, plan=plan) as h:
        assert {db.synchronous for db in h.host.databases.values()} == {"normal"}
        assert all(db._group is None for db in h.host.databases.values())
    async with Harness(sample_app.app, tmp_path / "default") as h:
        assert {db.synchronous for db in h.host.databases.values()} == {"full"}
