"""The transactional outbox relay: committed events reach the broker, in order, once acked.

``tx.publish(event)`` writes a row to ``cleave_outbox`` in the business
transaction. The relay reads rows in commit order, publishes them (message id
= event id, so the broker drops a re-send inside its duplicate window),
waits for the broker's acknowledgement, and only then deletes them. A crash
anywhere in between re-sends the rows on restart; consumers' inboxes make
that harmless.

A broker that keeps messages only in memory (the monolith's) acknowledges
with one future per message instead, done once every consumer has settled
it. The relay does not wait for them: it keeps the rows in flight (and does
not publish them again), goes on with newer rows, and deletes each row when
its future ends. So one failing consumer holds back only itself, and a crash
before its delivery settles still re-sends the row. Up to ``max_unsettled``
rows are in flight; past that the relay waits for consumers to catch up.

Replicas of a service share one database, so only one relay may run per
database: it holds a lease row in ``cleave_leases`` and renews it while it
works; if its process dies, another replica takes over when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog

from cleave._aio import cancel_and_wait
from cleave._backoff import backoff
from cleave.context import CAUSED_BY
from cleave.data import schema
from cleave.data.lease import Lease
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
        max_unsettled: int = 10_000,
    ) -> None:
        self.db = db
        self.broker = broker
        self.holder = holder
        self.batch = batch
        self.poll = poll
        self.lease_ttl = lease_ttl
        self.max_unsettled = max_unsettled
        self.published = 0
        self.last_backlog = 0  # refreshed for metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lease = Lease(db, "outbox-relay", holder=holder, ttl=lease_ttl)
        # Rows published whose events consumers have not all settled yet (seq -> future),
        # the highest seq published among them, and the settled ones to delete.
        self._unsettled: dict[int, asyncio.Future[None]] = {}
        self._after = 0
        self._settled: list[int] = []
        self._deleted_at = 0.0
        self._held_back = False
        t = schema.outbox
        self._select = Prepared(
            sa.select(
                t.c.seq, t.c.event_id, t.c.subject, t.c.payload, t.c.traceparent, t.c.caused_by
            )
            .where(t.c.seq > sa.bindparam("after"))
            .order_by(t.c.seq)
            .limit(batch)
        )
        db.on_events_committed(self._wake.set)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox-relay")

    async def stop(self, flush: float = 0.0) -> None:
        """Stop relaying; with ``flush`` > 0, first publish what the outbox holds (up to that long).

        Only the holder of the lease publishes: another replica's relay goes on
        with the rows this one leaves.
        """
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if flush > 0 and self._lease.held:
            await self._flush(flush)
        # Rows settled since the last pass go; unsettled ones stay, to be re-sent at the next start.
        with contextlib.suppress(Exception):
            await self._delete_settled()
        if self._lease.held:
            with contextlib.suppress(Exception):
                await self._release()

    async def _flush(self, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                while await self.relay_once():
                    pass
        except Exception as exc:  # the broker or the database away: the rows stay for later
            log.warning(
                "outbox not flushed on stop; its rows go out at the next start",
                service=self.db.service,
                error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            )

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
                delay = backoff(failures, base=0.2, cap=5.0)
                log.warning(
                    "outbox relay failed; retrying",
                    service=self.db.service,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                )
                await asyncio.sleep(delay)

    async def relay_once(self) -> int:
        """Delete the rows whose events are settled, publish one batch; return how many went."""
        if self._deletes_due():
            await self._delete_settled()
        if len(self._unsettled) >= self.max_unsettled:
            self._hold_back()
            return 0
        self._held_back = False
        # Rows in flight are not read again: only those after the newest of them.
        after = self._after if self._unsettled else 0
        async with self.db.read() as tx:
            rows = await tx.fetch(self._select, {"after": after})
        if not rows:
            return 0
        await self.db.durable()  # never publish a commit that a power cut could still undo
        outgoing, spans = [], []
        for _, event_id, subject, payload, traceparent, caused_by in rows:
            headers = {"Cleave-Event-Id": event_id}
            if caused_by:
                headers[CAUSED_BY] = caused_by
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
            settled = await self.broker.publish(outgoing)
        except Exception as exc:
            for span in spans:
                tracer.finish(span, f"{type(exc).__name__}: {exc}")
            raise
        for span in spans:
            tracer.finish(span)
        if settled is None:
            # Stored durably: the rows can go now. Counted first: the delete is seen by
            # others at its commit, before its own wait for the disk returns.
            self.published += len(rows)
            async with self.db.transaction() as tx:
                await tx.run_many(_DELETE, [{"seq": r[0]} for r in rows])
            return len(rows)
        self._after = rows[-1][0]
        for row, future in zip(rows, settled, strict=True):
            self._unsettled[row[0]] = future
            future.add_done_callback(functools.partial(self._on_settled, row[0]))
        self.published += len(rows)
        return len(rows)

    def _on_settled(self, seq: int, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is not None:
            # Never settled (the broker closed): the row stays, to be sent again.
            self._unsettled.pop(seq, None)
            return
        self._settled.append(seq)
        if len(self._settled) >= self.batch or len(self._settled) == len(self._unsettled):
            self._wake.set()

    def _deletes_due(self) -> bool:
        # Deleting row by row would cost a commit each: delete a batch, or once
        # everything in flight is settled, or once per poll interval.
        settled = len(self._settled)
        return settled > 0 and (
            settled >= self.batch
            or settled == len(self._unsettled)
            or time.monotonic() - self._deleted_at >= self.poll
        )

    async def _delete_settled(self) -> None:
        """Delete the rows whose events every consumer has settled."""
        if not self._settled:
            return
        seqs, self._settled = self._settled, []
        try:
            async with self.db.transaction() as tx:
                await tx.run_many(_DELETE, [{"seq": s} for s in seqs])
        except BaseException:
            self._settled.extend(seqs)  # still settled: the next pass tries again
            raise
        self._deleted_at = time.monotonic()
        for seq in seqs:
            self._unsettled.pop(seq, None)

    def _hold_back(self) -> None:
        if not self._held_back:
            self._held_back = True
            log.warning(
                "outbox relay waits for consumers to catch up",
                service=self.db.service,
                unsettled=len(self._unsettled),
                hint="a consumer of this service's events is failing or slow: see its "
                "retries and dead letters; newer events are published as older ones settle",
            )

    async def _hold_lease(self) -> bool:
        return await self._lease.hold()

    async def _release(self) -> None:
        await self._lease.release()
