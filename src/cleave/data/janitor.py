"""Keeps Cleave's own tables from growing for ever.

- Inbox rows are kept a day longer than the broker keeps events (8 days
  against streams' 7 by default; ``[events] retention_days``), so any event
  the broker could still deliver is still recognised as a duplicate.
- Results of idempotent calls are kept for a day: retries come within
  seconds; a day covers a client that retries tomorrow morning.
- Finished sagas are kept for a week, for looking into.
- Dead letters are kept 30 days after they last failed (``[events]
  dead_letter_days``): long enough to look into, fix and replay them.

Runs once an hour per database, in small batches; on replicas the deletes
are harmless repeats.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec
import sqlalchemy as sa
import structlog

from cleave._aio import cancel_and_wait
from cleave.data import schema

if TYPE_CHECKING:
    from cleave.config import EventsSettings
    from cleave.data.database import Database

__all__ = ["Janitor", "Retention"]

log = structlog.get_logger("cleave.janitor")

DAY = 24 * 3600.0


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds each kind of row is kept."""

    inbox: float = 8 * DAY
    idempotency: float = 1 * DAY
    sagas: float = 7 * DAY
    dead_letters: float = 30 * DAY

    @classmethod
    def of(cls, events: EventsSettings) -> Retention:
        """The retention ``[events]`` in cleave.toml asks for."""
        return cls(
            inbox=(events.retention_days + 1) * DAY, dead_letters=events.dead_letter_days * DAY
        )


class Janitor:
    """Deletes expired rows from one database's Cleave tables."""

    def __init__(
        self,
        db: Database,
        *,
        interval: float = 3600.0,
        batch: int = 5000,
        retention: Retention | None = None,
    ) -> None:
        self.db = db
        self.retention = retention or Retention()
        self.interval = interval
        self.batch = batch
        self.deleted = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="janitor")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "janitor sweep failed",
                    service=self.db.service,
                    error=f"{type(exc).__name__}: {exc}",
                )
            await asyncio.sleep(self.interval)

    async def sweep(self, now: float | None = None) -> int:
        """Delete what has expired; return how many rows went."""
        now = time.time() if now is None else now
        inbox, idem, sagas = schema.inbox, schema.idempotency, schema.sagas
        letters, keep = schema.dead_letters, self.retention
        targets = [
            (
                inbox,
                inbox.c.processed_at < now - keep.inbox,
                (inbox.c.consumer, inbox.c.event_id),
            ),
            (idem, idem.c.created_at < now - keep.idempotency, (idem.c.request_id,)),
            (
                sagas,
                sa.and_(
                    sagas.c.state.in_(("done", "failed")),
                    sagas.c.updated_at < now - keep.sagas,
                ),
                (sagas.c.saga_id,),
            ),
            (letters, letters.c.failed_at < now - keep.dead_letters, (letters.c.id,)),
        ]
        total = 0
        for table, expired, key in targets:
            while True:
                async with self.db.transaction() as tx:
                    ids = (await tx.execute(sa.select(*key).where(expired).limit(self.batch))).all()
                    if not ids:
                        break
                    await tx.execute(table.delete().where(sa.tuple_(*key).in_(ids)))
                total += len(ids)
                if len(ids) < self.batch:
                    break
        self.deleted += total
        return total
