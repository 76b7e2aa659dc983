"""SQLite checkpoints run in a thread, after enough commits, and keep the log small."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

import cleave
from cleave.data.checkpoint import Checkpointer
from cleave.data.database import Database, default_url

meta = sa.MetaData()
rows = sa.Table(
    "rows",
    meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("body", sa.String(400), nullable=False),
)
INSERT = cleave.Prepared(rows.insert().values(body=sa.bindparam("body")))


async def started(tmp_path: Path) -> Database:
    db = Database(meta).bind("t", default_url(tmp_path, "t"), {})
    await db.start()
    return db


def wal_size(tmp_path: Path) -> int:
    wal = tmp_path / "t.db-wal"
    return wal.stat().st_size if wal.exists() else 0


async def test_commits_are_checkpointed_in_the_background_and_the_log_stays_small(
    tmp_path: Path,
) -> None:
    db = await started(tmp_path)
    try:
        checkpointer = db._checkpointer
        assert checkpointer is not None
        largest = 0
        for i in range(1500):
            async with db.transaction() as tx:
                await tx.run(INSERT, {"body": f"{i:04d}" + "x" * 300})
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # let a checkpoint thread finish
                largest = max(largest, wal_size(tmp_path))
        assert checkpointer.runs >= 5
        # Without checkpoints the log would hold every commit (about 12 MB here).
        assert largest < 3_000_000, f"the write-ahead log grew to {largest} bytes"
    finally:
        await db.stop()
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("SELECT count(*) FROM rows").fetchone() == (1500,)


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_the_log_is_reused_under_a_steady_stream_of_commits(
    tmp_path: Path, synchronous: str
) -> None:
    # Commits keep landing while a checkpoint copies the log (here each transaction
    # awaits inside; under "full" each also awaits its sync): without the short catch-up
    # under the write lock, no commit ever finds the log fully copied, so it only grows.
    db = Database(meta).bind("t", default_url(tmp_path, "t"), {}, synchronous=synchronous)
    await db.start()
    try:
        checkpointer = db._checkpointer
        assert checkpointer is not None

        async def writer(w: int) -> None:
            for i in range(300):
                async with db.transaction() as tx:
                    await asyncio.sleep(0)
                    await tx.run(INSERT, {"body": f"{w}-{i:04d}" + "x" * 300})

        largest = 0

        async def watch() -> None:
            nonlocal largest
            while True:
                largest = max(largest, wal_size(tmp_path))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(writer(w) for w in range(5)))
        watcher.cancel()
        assert checkpointer.catch_ups >= 1
        # Without checkpoints the log would hold every commit (about 12 MB here).
        assert largest < 4_000_000, f"the write-ahead log grew to {largest} bytes"
    finally:
        await db.stop()


async def test_a_few_commits_are_checkpointed_after_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "few.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    checkpointer = Checkpointer(path, every=1000, interval=0.05)
    checkpointer.committed()
    assert checkpointer.runs == 0  # not yet: too few commits for one at once
    for _ in range(200):
        await asyncio.sleep(0.01)
        if checkpointer.runs:
            break
    assert checkpointer.runs == 1
    busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, logged - copied) == (0, 0)  # nothing was left in the log only
    await checkpointer.close()
    conn.close()


def test_service_connections_leave_checkpoints_to_cleave(tmp_path: Path) -> None:
    async def check() -> int:
        db = await started(tmp_path)
        try:
            async with db.read() as tx:
                return int(await tx.scalar(sa.text("PRAGMA wal_autocheckpoint")))
        finally:
            await db.stop()

    assert asyncio.run(check()) == 0


async def test_a_checkpoint_that_cannot_run_is_skipped_not_raised(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path / "missing" / "t.db", every=1)
    checkpointer.committed()  # cannot open the file: logged at debug, the next one will try
    running = checkpointer._running
    assert running is not None
    await running
    assert checkpointer.runs == 0
    await checkpointer.close()
    checkpointer.committed()  # after close: nothing starts
    assert checkpointer._running is None


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
async def test_an_in_memory_database_is_refused_with_the_way_out(url: str) -> None:
    with pytest.raises(cleave.ConfigError, match=r"in-memory SQLite.*file"):
        await Database(meta).bind("t", url, {}).start()
