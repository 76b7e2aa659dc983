"""Group commit: a SQLite commit returns once it is on disk, one sync shared by many.

Cleave's SQLite connections run in WAL mode with ``synchronous=NORMAL``: a
commit appends its pages to the ``-wal`` file without syncing it, so a
killed process loses nothing but a power cut (or a kernel crash) loses the
commits whose pages were still in the OS's cache, though their callers were
answered and their events acknowledged. ``synchronous=FULL`` would sync the
log inside every ``COMMIT``, on the event loop's thread, one commit at a
time.

Under ``[database] synchronous = "full"`` (the default) a write transaction
instead awaits :meth:`GroupCommit.wait` after its ``COMMIT``, once it has
handed the write lock on: one ``fdatasync`` of the log, in a worker thread,
covers every commit made before it started, and the commits made while it
runs share the next one. So a transaction's block returns only once its
commit is on disk, and sixty-four concurrent writers pay for a few syncs,
not sixty-four (figures: ``python -m bench.durability``).

What is synced, and why that is enough:

- the ``-wal`` file, opened by its path for every sync. SQLite keeps one
  log file while the database is open: a checkpoint copies the log into the
  database file and syncs that file, then later commits reuse the log from
  its start (same file). SQLite deletes the log only when the last
  connection closes, after such a checkpoint; a missing log therefore means
  every commit is in the synced database file.
- the folder, once for every new log file: a new file's name is durable only
  once its folder is synced. A file is known by its inode, and the last log
  synced is kept open, so a new log cannot reuse its inode number.
- at start, the folder of the database file and that folder's parent (Cleave
  may have just created them). The database file itself is synced by
  SQLite's checkpoints (the database runs one at start), never through a
  descriptor of ours: closing one would drop SQLite's POSIX locks on it.

A failed sync is final: the kernel may have dropped the unwritten pages, so
later commits could sit on a log with holes. Every transaction from then on
fails with an error that says so; restarting the service lets SQLite recover
the database from what is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from cleave.errors import ConfigError, LifecycleError

__all__ = ["SYNCHRONOUS", "GroupCommit", "check_synchronous"]

#: The values of ``[database] synchronous``, the default first.
SYNCHRONOUS = ("full", "normal")


def check_synchronous(value: str) -> str:
    """``value`` if it is a setting of ``[database] synchronous``; else a ConfigError saying why."""
    if value not in SYNCHRONOUS:
        raise ConfigError(
            f'[database] synchronous = {value!r} is not a setting: use "full" (the default: '
            'a commit that returned survives a power cut) or "normal" (faster: survives a '
            "killed process, not a power cut)"
        )
    return value


class GroupCommit:
    """Syncs one SQLite database's log for every commit waiting, in a worker thread."""

    def __init__(self, database: Path, *, service: str = "") -> None:
        # Absolute: the log is opened by its path from a worker thread, whatever the cwd.
        self.database = Path(os.path.abspath(database))
        self.log = self.database.with_name(self.database.name + "-wal")
        self.service = service
        #: Syncs of the log that completed.
        self.syncs = 0
        self._committed = 0  # commits counted so far (a generation number)
        self._durable = 0  # commits covered by a completed sync
        self._round: asyncio.Task[None] | None = None
        # The log whose folder entry is synced, and a descriptor of it held open.
        self._log_file: tuple[int, int] | None = None
        self._log_fd: int | None = None
        self._failed: OSError | None = None

    def check(self) -> None:
        """Raise if a sync failed: nothing committed since then is known to be on disk."""
        if self._failed is not None:
            raise LifecycleError(
                f"the database of {self.service or self.database.name} could not sync its log "
                f"({self.log}) to disk ({self._failed}): commits since the last sync may be "
                "lost. Check the disk, then restart the service; SQLite recovers the database "
                "from what is on disk"
            ) from self._failed

    def committed(self) -> None:
        """A transaction that wrote has just committed: the next sync must cover it."""
        self._committed += 1

    @property
    def pending(self) -> bool:
        """Whether some commit is not known to be on disk yet."""
        return self._durable < self._committed

    async def wait(self) -> None:
        """Return once every commit counted so far is on disk."""
        target = self._committed
        while self._durable < target:
            self.check()
            round_ = self._round
            if round_ is None:
                round_ = self._round = asyncio.get_running_loop().create_task(
                    self._sync(), name=f"sync {self.log.name}"
                )
            # Shielded: a waiter that is cancelled leaves the sync to the others.
            await asyncio.shield(round_)
        self.check()

    async def _sync(self) -> None:
        # Counted on the loop's thread before the sync starts: every commit up to
        # here has written its pages, so this sync covers it.
        upto = self._committed
        try:
            await asyncio.to_thread(self._sync_log)
            self._durable = max(self._durable, upto)
            self.syncs += 1
        except OSError as exc:
            self._failed = exc
            self.check()
        finally:
            self._round = None

    def _sync_log(self) -> None:
        try:
            fd = os.open(self.log, os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed into the database file, which SQLite synced
        # Closing a descriptor of the log is safe: SQLite takes no locks on it (only on
        # the database and -shm files, where closing one of ours would drop SQLite's).
        keep = False
        try:
            # Looked up at each call, not bound at import: a test may wrap it.
            getattr(os, "fdatasync", os.fsync)(fd)
            stat = os.fstat(fd)
            identity = (stat.st_dev, stat.st_ino)
            if identity != self._log_file:
                _sync_folder(self.log.parent)
                if self._log_fd is not None:
                    os.close(self._log_fd)
                self._log_fd, self._log_file = fd, identity
                keep = True
        finally:
            if not keep:
                os.close(fd)

    async def sync_folders(self) -> None:
        """Sync the folder of the database file and its parent (once, at start)."""
        await asyncio.to_thread(self._sync_folders)

    def _sync_folders(self) -> None:
        folder = self.database.resolve().parent
        _sync_folder(folder)
        _sync_folder(folder.parent)

    async def close(self) -> None:
        """Let a sync in progress finish; let go of the log."""
        if self._round is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._round)
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = self._log_file = None


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
