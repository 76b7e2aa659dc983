"""SQLite checkpoints off the event loop.

In WAL mode SQLite appends each commit to the write-ahead log and, by
default, the commit that takes the log past 1,000 pages also copies it back
into the database file and fsyncs both (a *checkpoint*). That commit then
takes milliseconds instead of tens of microseconds, on the thread that runs
every service of the process. Measured on the shop: write commits took 59 us
at the median and 145 us on average, the difference all checkpoints (up to
20 ms each).

So Cleave turns automatic checkpoints off on its connections and runs them
itself, in a worker thread with its own connection (sqlite3 releases the GIL
for the I/O): after every ``every`` write commits, or ``interval`` seconds
after the first one since the last checkpoint. Checkpoints are PASSIVE: they
never wait for readers or writers. Durability is unchanged: a commit is in
the log when it returns (and synced, see :mod:`cleave.data.durability`),
whoever copies it back later; a checkpoint syncs the log before copying it
and the database file after.

The log is reused from its start only by a write transaction that begins
once a checkpoint has copied all of it. Under a steady stream of commits
(and every commit awaiting its sync keeps the stream steady) some commit
always lands while the checkpoint copies, so the log would only grow. So when
commits landed during the copy, a second, short checkpoint copies just those
while holding the database's write lock (``lock``): this process's writers
wait for a few pages' copy, and the next commit restarts the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import structlog

__all__ = ["Checkpointer"]

log = structlog.get_logger("cleave.checkpoint")


class Checkpointer:
    """Checkpoints one SQLite database's log in a thread, after enough commits."""

    def __init__(
        self,
        path: Path,
        *,
        every: int = 200,
        interval: float = 2.0,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.path = path
        self.every = every
        self.interval = interval
        #: The database's write lock, held for a catch-up checkpoint (see the module docstring).
        self.lock = lock
        #: Catch-up checkpoints run under ``lock``.
        self.catch_ups = 0
        self.runs = 0
        self._commits = 0
        self._running: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def committed(self) -> None:
        """A write transaction committed: checkpoint when enough have piled up."""
        self._commits += 1
        if self._running is not None or self._closed:
            return
        if self._commits >= self.every:
            self._start()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._start)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running is not None or self._closed or not self._commits:
            return
        self._commits = 0
        self._running = asyncio.get_running_loop().create_task(
            self._checkpoint(), name=f"checkpoint {self.path.name}"
        )

    async def _checkpoint(self) -> None:
        try:
            await asyncio.to_thread(self._run, "PASSIVE")
            if self._commits and self.lock is not None:
                async with self.lock:
                    await asyncio.to_thread(self._run, "PASSIVE")
                self.catch_ups += 1
            self.runs += 1
        except sqlite3.Error as exc:  # busy or locked: the next one will do it
            log.debug("checkpoint skipped", database=str(self.path), error=str(exc))
        finally:
            self._running = None

    def _run(self, mode: str) -> None:
        if self._conn is None:
            # Used by one thread at a time (never two checkpoints at once), from the pool.
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0.05
            )
        started = time.perf_counter()
        self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        log.debug(
            "checkpoint",
            database=self.path.name,
            mode=mode,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def now(self) -> None:
        """Checkpoint at once, after the one in progress if any (errors: as the others)."""
        if self._running is not None:
            await asyncio.shield(self._running)
        if self._closed:
            return
        self._commits = 0
        self._running = asyncio.get_running_loop().create_task(
            self._checkpoint(), name=f"checkpoint {self.path.name}"
        )
        await asyncio.shield(self._running)

    async def close(self) -> None:
        """Stop, after one last checkpoint of what is in the log."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running is not None:
            await self._running
        with contextlib.suppress(sqlite3.Error):
            await asyncio.to_thread(self._run, "PASSIVE")
        if self._conn is not None:
            self._conn.close()
            self._conn = None
