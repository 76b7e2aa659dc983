"""The inbox: each event changes a consumer's state once, however often it arrives.

A delivery is handled in one transaction of the consumer's database that
first records ``(consumer, event id)`` in ``cleave_inbox`` and then runs the
handler (whose own ``db.transaction()`` joins it). A duplicate, a redelivery
after a crash, or a replay finds the record, is acknowledged and skipped. The
guarantee lives in the database; the broker's short duplicate window is not
relied on.

A failing handler rolls back and the delivery is retried with backoff; after
``max_deliver`` attempts (or at once, for a message that cannot be decoded)
it is dead-lettered (kept in the consumer's own database, see
:mod:`cleave.data.deadletters`) and terminated, so one poison event cannot
stall the consumer. A dead letter replayed later goes through this inbox too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
import structlog

from cleave.context import CAUSED_BY, CallContext, _current, decode_identity
from cleave.data import deadletters
from cleave.data.prepared import Prepared
from cleave.messages import Event, from_msgpack
from cleave.observability.tracing import CONSUMER, id_attributes, tracer

if TYPE_CHECKING:
    from cleave.data.database import Database, Transaction
    from cleave.data.deadletters import DeadLetter, Outcome
    from cleave.transport.base import Broker, ConsumerPolicy
    from cleave.types import Delivery, Headers

__all__ = ["EventConsumer", "forget_inbox", "inbox_consumers", "rename_inbox"]


# Record an event as handled by a consumer; changes no row if it already was.
_MARK = Prepared(
    sa.text(
        "INSERT INTO cleave_inbox (consumer, event_id, processed_at) "
        "VALUES (:consumer, :event_id, :at) ON CONFLICT DO NOTHING"
    )
)

# -- consumers by name: who has rows, and moving them when a consumer is renamed ---------------

# Each distinct consumer by a walk of the primary key's index (one lookup per name),
# not a scan of every row: an inbox holds a week of events.
_NAMES = sa.text(
    "WITH RECURSIVE names(consumer) AS ("
    " SELECT MIN(consumer) FROM cleave_inbox"
    " UNION ALL"
    " SELECT (SELECT MIN(i.consumer) FROM cleave_inbox i WHERE i.consumer > names.consumer)"
    " FROM names WHERE names.consumer IS NOT NULL"
    ") SELECT consumer FROM names WHERE consumer IS NOT NULL"
)
_ADOPT = sa.text(
    "INSERT INTO cleave_inbox (consumer, event_id, processed_at)"
    " SELECT :new, event_id, processed_at FROM cleave_inbox WHERE consumer = :old"
    " ON CONFLICT DO NOTHING"
)
_FORGET = sa.text("DELETE FROM cleave_inbox WHERE consumer = :old")
# A taken-over consumer's dead letters follow it, so they can still be replayed.
_ADOPT_LETTERS = sa.text(
    "UPDATE cleave_dead_letters SET consumer = :new WHERE consumer = :old AND event_id NOT IN"
    " (SELECT event_id FROM cleave_dead_letters WHERE consumer = :new)"
)


async def inbox_consumers(db: Database) -> set[str]:
    """The consumers that have handled events recorded in ``db``'s inbox."""
    async with db.read() as tx:
        return {row[0] for row in (await tx.execute(_NAMES)).all()}


async def rename_inbox(db: Database, old: str, new: str) -> None:
    """Hand ``old``'s inbox and dead letters to ``new``, and forget ``old``; atomic."""
    async with db.transaction() as tx:
        await tx.execute(_ADOPT, {"old": old, "new": new})
        await tx.execute(_FORGET, {"old": old})
        await tx.execute(_ADOPT_LETTERS, {"old": old, "new": new})


async def forget_inbox(db: Database, old: str) -> None:
    """Forget which events consumer ``old`` handled (it is gone; its events may come again)."""
    async with db.transaction() as tx:
        await tx.execute(_FORGET, {"old": old})


class EventConsumer:
    """Delivers one event type to one handler of one service, effectively once."""

    def __init__(
        self,
        *,
        service: str,
        name: str,
        event: type[Event],
        handler: Callable[[Any], Awaitable[None]],
        db: Database,
        broker: Broker,
        policy: ConsumerPolicy,
        timeout: float,
    ) -> None:
        self.service = service
        # The durable consumer's name and inbox key: <service>-<subscription identity>.
        self.name = name
        self.log = structlog.get_logger("cleave.inbox", service=service)
        self.event = event
        self.handler = handler
        self.db = db
        self.broker = broker
        self.policy = policy
        self.timeout = timeout
        self.processed = 0
        self.duplicates = 0
        self.failures = 0
        self.dead_lettered = 0
        self.redeliveries = 0
        self.last_pending = 0  # refreshed for metrics

    async def deliver(self, delivery: Delivery) -> None:
        """Handle one delivery and settle it."""
        if delivery.attempt > 1:
            self.redeliveries += 1
        try:
            event = from_msgpack(delivery.data, self.event)
        except msgspec.DecodeError as exc:
            await self._dead_letter(delivery, f"cannot decode {self.event.__name__}: {exc}")
            return
        try:
            fresh = await self._handle(delivery, event)
        except Exception as exc:
            self.failures += 1
            error = f"{type(exc).__name__}: {exc}"
            if delivery.attempt >= self.policy.max_deliver:
                await self._dead_letter(delivery, error)
                return
            delay = self.policy.delay(delivery.attempt)
            self.log.warning(
                "event handler failed; will retry",
                consumer=self.name,
                event_id=delivery.msg_id,
                attempt=delivery.attempt,
                error=error,
                retry_in=delay,
            )
            await delivery.nak(delay)
            return
        if fresh:
            self.processed += 1
        else:
            self.duplicates += 1
        await delivery.ack()

    async def deliver_batch(self, deliveries: Sequence[Delivery]) -> None:
        """Handle several deliveries in one transaction, then settle them.

        The common case (nothing fails) costs one commit for the batch instead
        of one per event; if any handler fails, the batch rolls back and each
        delivery is handled on its own, with the usual retries and dead letters.
        """
        decoded: list[tuple[Delivery, Event]] = []
        for d in deliveries:
            try:
                decoded.append((d, from_msgpack(d.data, self.event)))
            except msgspec.DecodeError as exc:
                await self._dead_letter(d, f"cannot decode {self.event.__name__}: {exc}")
        if len(decoded) <= 1:
            for d, _ in decoded:
                await self.deliver(d)
            return
        try:
            fresh = await self._handle_batch(decoded)
        except Exception:
            for d, _ in decoded:
                await self.deliver(d)
            return
        self.redeliveries += sum(1 for d, _ in decoded if d.attempt > 1)
        self.processed += fresh
        self.duplicates += len(decoded) - fresh
        for d, _ in decoded:
            await d.ack()

    async def _handle_batch(self, decoded: list[tuple[Delivery, Event]]) -> int:
        fresh = 0
        async with asyncio.timeout(self.timeout), self.db.transaction() as tx:
            for d, event in decoded:
                fresh += await self._handle_in(tx, d, event)
        return fresh

    async def _handle(self, delivery: Delivery, event: Event) -> bool:
        async with asyncio.timeout(self.timeout), self.db.transaction() as tx:
            return await self._handle_in(tx, delivery, event)

    async def _handle_in(self, tx: Transaction, delivery: Delivery, event: Event) -> bool:
        """Record the event in the inbox and run its handler, in ``tx``; False: seen before."""
        marked = await tx.run(
            _MARK, {"consumer": self.name, "event_id": delivery.msg_id, "at": time.time()}
        )
        if not marked:
            return False  # handled before: a redelivery, or a duplicate publish
        traceparent = delivery.headers.get("traceparent", "")
        span = None
        if tracer.enabled:
            span = tracer.start(
                f"handle {type(event).__topic__}", CONSUMER, self.service, traceparent
            )
            if span is not None:
                traceparent = span.traceparent
                span.attributes["consumer"] = self.name
                span.attributes["event_id"] = delivery.msg_id
                span.attributes["attempt"] = delivery.attempt
                id_attributes(event, span.attributes)
        # A handler acts as the system (identity None); who caused the event is for audit.
        ctx = CallContext(
            time.time() + self.timeout,
            f"evt-{delivery.msg_id}",
            self.service,
            traceparent,
            service=self.service,
            caused_by=decode_identity(delivery.headers.get(CAUSED_BY, "")),
        )
        token = _current.set(ctx)
        try:
            await self.handler(event)
        except BaseException as exc:
            if span is not None:
                tracer.finish(span, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            _current.reset(token)
        if span is not None:
            tracer.finish(span)
        return True

    async def _dead_letter(self, delivery: Delivery, error: str) -> None:
        # Kept in our own database before the broker lets go of the event: if
        # the write fails, the event stays in the broker and comes back.
        try:
            async with self.db.transaction() as tx:
                letter = await deadletters.record(
                    tx,
                    consumer=self.name,
                    event_id=delivery.msg_id,
                    subject=delivery.subject,
                    payload=bytes(delivery.data),
                    headers=dict(delivery.headers),
                    error=error[:4000],
                    attempts=delivery.attempt,
                )
        except Exception as exc:
            self.log.error(
                "cannot keep a dead letter; the event will come again",
                consumer=self.name,
                event_id=delivery.msg_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            await delivery.nak(self.policy.delay(delivery.attempt))
            return
        self.dead_lettered += 1
        self.log.error(
            "event dead-lettered; see `cleave dlq show` for it, `cleave dlq replay` to retry",
            consumer=self.name,
            event_id=delivery.msg_id,
            dead_letter=letter,
            attempts=delivery.attempt,
            error=error,
        )
        await delivery.term()

    async def replay(self, letter: DeadLetter) -> tuple[Outcome, str]:
        """Handle a dead letter of this consumer again, through the inbox.

        One transaction takes the letter out of the store, records the event in
        the inbox and runs the handler. Returns the outcome and, when it failed
        again, the error (the letter then stays, with that error, unmarked).
        """
        try:
            event = from_msgpack(letter.payload, self.event)
            async with asyncio.timeout(self.timeout), self.db.transaction() as tx:
                if not await deadletters.claim(tx, letter.id):
                    return "gone", ""
                fresh = await self._handle_in(tx, _Redelivery(letter), event)
        except Exception as exc:
            if isinstance(exc, msgspec.DecodeError):
                error = f"cannot decode {self.event.__name__}: {exc}"
            else:
                error = f"{type(exc).__name__}: {exc}"
            self.failures += 1
            await deadletters.DeadLetterStore(self.db, self.service).failed_again(
                letter.id, error[:4000]
            )
            self.log.warning(
                "dead letter failed again", consumer=self.name, dead_letter=letter.id, error=error
            )
            return "failed", error
        if fresh:
            self.processed += 1
        else:
            self.duplicates += 1
        self.log.info(
            "dead letter replayed" if fresh else "dead letter was handled before; removed",
            consumer=self.name,
            dead_letter=letter.id,
            event_id=letter.event_id,
        )
        return ("replayed" if fresh else "duplicate"), ""


class _Redelivery:
    """A dead letter handed to the handler again (read for its id, trace and attempt)."""

    __slots__ = ("attempt", "data", "headers", "msg_id", "subject")

    def __init__(self, letter: DeadLetter) -> None:
        self.subject = letter.subject
        self.data = letter.payload
        self.headers: Headers = letter.headers
        self.msg_id = letter.event_id
        self.attempt = letter.attempts + 1

    async def ack(self) -> None:
        pass  # a replay is settled by its own transaction

    async def nak(self, delay: float) -> None:
        pass  # a failed replay keeps its letter, with the new error, in the same way

    async def term(self) -> None:
        pass  # nothing to settle with a broker: the letter is the only copy
