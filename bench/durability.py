"""7. Durable commits and savepoints: what group commit and nested transactions cost.

SQLite, on a real file under /tmp: commits per second and the p50 and p99
latency of a one-row write transaction (its ``async with`` block, start to
end), from 1 writer and from 64 concurrent writers, for 2 s, under:

- ``normal``: SQLite's ``synchronous=NORMAL`` and nothing more; a commit
  survives a killed process, not a power cut (``[database] synchronous =
  "normal"``);
- ``full``: SQLite's ``synchronous=FULL``: a sync of the log inside every
  ``COMMIT``, on the event loop's thread, one commit at a time;
- ``group``: Cleave's default (``synchronous = "full"``): ``NORMAL``, and each
  transaction awaits one ``fdatasync`` of the log in a worker thread that it
  shares with the commits around it.

Savepoints: the time of a one-row write transaction, and of the same write
inside a ``transaction()`` nested in it (a savepoint), one after another,
best of 5 interleaved repeats; the difference is a savepoint's cost. On SQLite (without
syncs, to see the savepoint alone) and on PostgreSQL if it runs on
127.0.0.1:5432 (two more round trips: SAVEPOINT and RELEASE; measured with
``synchronous_commit = off``, so the server's WAL flush does not drown them).

Usage: python -m bench.durability [--quick]
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import cleave
from bench.common import median_of, summary
from cleave.data.database import Database

META = sa.MetaData()
ROWS = sa.Table(
    "rows",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("body", sa.String(200), nullable=False),
)
INSERT = cleave.Prepared(ROWS.insert().values(body=sa.bindparam("body")))
BODY = "x" * 100
MODES = ("normal", "full", "group")
WRITERS = (1, 64)
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


def _database(url: str, mode: str) -> Database:
    db = Database(META).bind("bench", url, {}, synchronous="full" if mode == "group" else "normal")
    if mode == "full":
        db._sqlite_pragma = "FULL"  # SQLite's own sync in every COMMIT: the peer of group commit
    return db


async def _write(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.run(INSERT, {"body": BODY})


async def _commits(path: Path, mode: str, writers: int, seconds: float) -> dict[str, float]:
    db = _database(f"sqlite:///{path}", mode)
    await db.start()
    try:
        for _ in range(100):  # warm: connections open, statements compiled, the log exists
            await _write(db)
        latencies: list[float] = []
        until = time.perf_counter() + seconds

        async def writer() -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                await _write(db)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return summary(latencies, time.perf_counter() - started, len(latencies))
    finally:
        await db.stop()


async def _transaction(db: Database, *, nested: bool) -> None:
    async with db.transaction() as tx:
        if nested:
            async with db.transaction() as inner:
                await inner.run(INSERT, {"body": BODY})
        else:
            await tx.run(INSERT, {"body": BODY})


async def _savepoints(url: str, n: int) -> dict[str, float]:
    db = _database(url, "normal")
    await db.start()
    best = {False: float("inf"), True: float("inf")}
    try:
        for _ in range(min(n, 200)):
            await _transaction(db, nested=True)
        # Interleaved, best of 5 each: noise (other work on the machine) only adds time.
        for _ in range(5):
            for nested in best:
                started = time.perf_counter()
                for _ in range(n):
                    await _transaction(db, nested=nested)
                best[nested] = min(best[nested], (time.perf_counter() - started) / n)
    finally:
        await db.stop()
    return {
        "flat_us": round(best[False] * 1e6, 1),
        "nested_us": round(best[True] * 1e6, 1),
        "savepoint_us": round((best[True] - best[False]) * 1e6, 1),
    }


def _postgres_running() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
    except OSError:
        return False
    return True


async def _pg_savepoints(n: int) -> dict[str, float]:
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"cleave_bench_{os.urandom(3).hex()}"
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            # Commits that do not wait for the server's WAL flush: what is left is the
            # round trips, which is what a savepoint adds.
            await conn.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        return await _savepoints(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", n)
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def run(tmp: Path, *, runs: int = 3, seconds: float = 2.0) -> dict[str, Any]:
    """Every figure of this part; ``tmp`` must be on a real disk (not tmpfs)."""
    import logging

    from cleave.runtime.logs import configure

    configure(service="bench", level=logging.WARNING)  # not a line per checkpoint
    tmp.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"commits": {}, "savepoints": {}}
    for mode in MODES:
        for writers in WRITERS:
            measured = []
            for i in range(runs):
                path = tmp / f"{mode}-{writers}-{i}.db"
                measured.append(asyncio.run(_commits(path, mode, writers, seconds)))
            figures = median_of(measured)
            result["commits"].setdefault(mode, {})[str(writers)] = figures
            print(
                f"  commits {mode:<6} {writers:>2} writer(s): {figures['per_second']:>8.0f}/s, "
                f"p50 {figures['p50_us']:>7.0f} us, p99 {figures['p99_us']:>7.0f} us",
                flush=True,
            )
    n = 2000 if seconds >= 2 else 500
    targets: list[tuple[str, Any]] = [
        ("sqlite", lambda i: _savepoints(f"sqlite:///{tmp / f'savepoints-{i}.db'}", n))
    ]
    if _postgres_running():
        targets.append(("postgres", lambda i: _pg_savepoints(n // 4)))
    else:
        result["savepoints"]["postgres"] = "skipped: PostgreSQL is not running on 127.0.0.1:5432"
    for label, measure in targets:
        measured = [asyncio.run(measure(i)) for i in range(runs)]
        figures = {k: round(statistics.median(m[k] for m in measured), 1) for k in measured[0]}
        result["savepoints"][label] = figures
        print(
            f"  savepoint {label:<8}: transaction {figures['flat_us']:.0f} us, with a nested "
            f"one {figures['nested_us']:.0f} us: +{figures['savepoint_us']:.0f} us",
            flush=True,
        )
    return result


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="cleave-bench-", dir="/tmp") as folder:
        run(Path(folder), runs=1 if quick else 3, seconds=1.0 if quick else 2.0)
