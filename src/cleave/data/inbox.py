"""The inbox: each event changes a consumer's state once, however often it arrives.

A delivery is handled in one transaction of the consumer's database that
first records ``(consumer, event id)`` in ``cleave_inbox`` and then runs the
handler (whose own ``db.transaction()`` joins it). A duplicate, a redelivery
after a crash, or a replay finds the record, is acknowledged and skipped. The
guarantee lives in the database; the broker's short duplicate window is not
relied on.

A failing handler rolls back and the delivery is retried with backoff; after
``max_deliver`` attempts (or at once, for a message that cannot be decoded)
it is dead-lettered and acknowledged, so one poison event cannot stall the
consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
import structlog

from cleave.context import CallContext, _current
from cleave.data.prepared import Prepared
from cleave.messages import Event, from_msgpack
from cleave.observability.tracing import CONSUMER, id_attributes, tracer

if TYPE_CHECKING:
    from cleave.data.database import Database, Transaction
    from cleave.transport.base import Broker, ConsumerPolicy
    from cleave.types import Delivery

__all__ = ["EventConsumer"]


# Record an event as handled by a consumer; changes no row if it already was.
_MARK = Prepared(
    sa.text(
        "INSERT INTO cleave_inbox (consumer, event_id, processed_at) "
        "VALUES (:consumer, :event_id, :at) ON CONFLICT DO NOTHING"
    )
)


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
        self.name = name  # the durable consumer's name, unique per service and handler
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
        ctx = CallContext(
            time.time() + self.timeout,
            f"evt-{delivery.msg_id}",
            self.service,
            traceparent,
            service=self.service,
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
        self.dead_lettered += 1
        self.log.error(
            "event dead-lettered",
            consumer=self.name,
            event_id=delivery.msg_id,
            attempts=delivery.attempt,
            error=error,
        )
        await self.broker.dead_letter(
            f"cleave.dlq.{self.service}.{self.name}",
            delivery.data,
            {
                "Cleave-Consumer": self.name,
                "Cleave-Subject": delivery.subject,
                "Cleave-Event-Id": delivery.msg_id,
                "Cleave-Attempts": str(delivery.attempt),
                "Cleave-Error": error[:1000],
            },
        )
        await delivery.term()
