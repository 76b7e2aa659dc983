"""The transactional outbox relay: committed events reach the broker, in order, once acked.

``tx.publish(event)`` writes a row to ``cleave_outbox`` in the business
transaction. The relay reads rows in commit order, publishes them (message id
= event id, so the broker drops a re-send inside its duplicate window),
waits for the broker's acknowledgement, and only then deletes them. A crash
anywhere in between re-sends the rows on restart; consumers' inboxes make
that harmless.

Replicas of a service share one database, so only one relay may run per
database: it holds a lease row in ``cleave_leases`` and renews it while it
works; if its process dies, another replica takes over when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog

from cleave._aio import cancel_and_wait
from cleave.data import schema
from cleave.data.prepared import Prepared
from cleave.observability.tracing import INTERNAL, tracer
from cleave.transport.base import Outgoing

if TYPE_CHECKING:
    from cleave.data.database import Database
    from cleave.transport.base import Broker

__all__ = ["OutboxRelay"]

log = structlog.get_logger("cleave.outbox")

_DELETE = Prepared(schema.outbox.delete().where(schema.outbox.c.seq == sa.bindparam("seq")))


class OutboxRelay:
    """Moves one service's outbox rows to the broker."""

    def __init__(
        self,
        db: Database,
        broker: Broker,
        *,
        holder: str,
        batch: int = 256,
        poll: float = 1.0,
        lease_ttl: float = 5.0,
    ) -> None:
        self.db = db
        self.broker = broker
        self.holder = holder
        self.batch = batch
        self.poll = poll
        self.lease_ttl = lease_ttl
        self.published = 0
        self.last_backlog = 0  # refreshed for metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lease_until = 0.0
        t = schema.outbox
        self._select = Prepared(
            sa.select(t.c.seq, t.c.event_id, t.c.subject, t.c.payload, t.c.traceparent)
            .order_by(t.c.seq)
            .limit(batch)
        )
        db.on_events_committed(self._wake.set)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._lease_until > time.time():
            with contextlib.suppress(Exception):
                await self._release()

    async def backlog(self) -> int:
        """Rows waiting to be relayed."""
        async with self.db.read() as tx:
            count = await tx.scalar(sa.select(sa.func.count()).select_from(schema.outbox))
        return int(count or 0)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if not await self._hold_lease():
                    await asyncio.sleep(self.lease_ttl / 3)
                    continue
                # Cleared before reading: a commit during the relay sets it again.
                self._wake.clear()
                moved = await self.relay_once()
                failures = 0
                if moved >= self.batch or self._wake.is_set():
                    continue  # more rows are waiting, or may be
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The broker or the database is unreachable: keep the rows, retry with backoff.
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning(
                    "outbox relay failed; retrying",
                    service=self.db.service,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                )
                await asyncio.sleep(delay)

    async def relay_once(self) -> int:
        """Publish one batch of rows; return how many moved."""
        async with self.db.read() as tx:
            rows = await tx.fetch(self._select)
        if not rows:
            return 0
        outgoing, spans = [], []
        for _, event_id, subject, payload, traceparent in rows:
            headers = {"Cleave-Event-Id": event_id}
            if traceparent and tracer.enabled:
                # The relay joins the trace of the transaction that published the event.
                span = tracer.start(
                    f"relay {subject.split('.')[3]}", INTERNAL, self.db.service, traceparent
                )
                if span is not None:
                    span.attributes["event_id"] = event_id
                    traceparent = span.traceparent
                    spans.append(span)
            if traceparent:
                headers["traceparent"] = traceparent
            outgoing.append(
                Outgoing(subject=subject, data=payload, msg_id=event_id, headers=headers)
            )
        try:
            await self.broker.publish(outgoing)
        except Exception as exc:
            for span in spans:
                tracer.finish(span, f"{type(exc).__name__}: {exc}")
            raise
        for span in spans:
            tracer.finish(span)
        async with self.db.transaction() as tx:
            await tx.run_many(_DELETE, [{"seq": r[0]} for r in rows])
        self.published += len(rows)
        return len(rows)

    async def _hold_lease(self) -> bool:
        now = time.time()
        if self._lease_until - now > self.lease_ttl / 2:
            return True
        leases = schema.leases
        until = now + self.lease_ttl
        async with self.db.transaction() as tx:
            updated = await tx.execute(
                leases.update()
                .where(leases.c.name == "outbox-relay")
                .where(sa.or_(leases.c.holder == self.holder, leases.c.expires_at < now))
                .values(holder=self.holder, expires_at=until)
            )
            if updated.rowcount == 0:
                exists = await tx.scalar(
                    sa.select(leases.c.holder).where(leases.c.name == "outbox-relay")
                )
                if exists is not None:
                    return False
                await tx.execute(
                    leases.insert().values(
                        name="outbox-relay", holder=self.holder, expires_at=until
                    )
                )
        self._lease_until = until
        return True

    async def _release(self) -> None:
        leases = schema.leases
        async with self.db.transaction() as tx:
            await tx.execute(
                leases.update()
                .where(leases.c.name == "outbox-relay")
                .where(leases.c.holder == self.holder)
                .values(expires_at=0.0)
            )
        self._lease_until = 0.0
