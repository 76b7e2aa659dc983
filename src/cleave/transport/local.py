"""In-process transport: an in-memory broker that behaves like JetStream.

:class:`MemoryBroker` keeps streams and durable consumers in memory with the
same rules the NATS implementation follows: publish deduplicates by message
id within a window, a durable consumer delivers every matching message with
explicit acknowledgement, an unsettled delivery comes back after
``ack_wait`` and a ``nak`` after its delay, until it is acked or terminated
(giving up after ``max_deliver`` attempts is the consumer's decision: it
dead-letters and terminates, see :mod:`cleave.data.inbox`).

The monolith runs on it. Nothing in memory survives a crash, so in
``settle_before_ack`` mode (the monolith's) ``publish`` returns, with each
message stored, a future that is done once every consumer bound at publish
time has settled that message: the outbox relay deletes the row behind it
only then, and a crash before that replays it. ``publish`` itself does not
wait for consumers: each consumer has its own delivery and redelivery, as on
JetStream, so one failing handler holds back only its own consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cleave._aio import cancel_and_wait
from cleave.errors import LifecycleError
from cleave.transport.base import ConsumerPolicy, ConsumerState, Outgoing

if TYPE_CHECKING:
    from cleave.types import BatchHandler, DeliveryHandler, Headers, Subject

__all__ = ["MemoryBroker", "subject_matches"]

DUPLICATE_WINDOW = 120.0


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a trailing ``>`` is one or more."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


class _Stored:
    __slots__ = ("awaiting", "data", "done", "headers", "msg_id", "seq", "subject")

    def __init__(self, seq: int, out: Outgoing) -> None:
        self.seq = seq
        self.subject = out.subject
        self.data = out.data
        self.msg_id = out.msg_id
        self.headers = dict(out.headers)
        self.awaiting: set[str] = set()
        self.done: asyncio.Future[None] | None = None


class _Stream:
    def __init__(self, name: str, subjects: Sequence[str]) -> None:
        self.name = name
        self.subjects = list(subjects)
        self.messages: dict[int, _Stored] = {}
        self.seq = itertools.count(1)
        self.high = 0  # the highest sequence assigned so far
        self.recent: dict[str, tuple[float, int]] = {}  # message id -> (stored at, sequence)
        self.consumers: dict[str, _Consumer] = {}

    def accepts(self, subject: str) -> bool:
        return any(subject_matches(p, subject) for p in self.subjects)


class _MemoryDelivery:
    __slots__ = ("_consumer", "_settled", "attempt", "msg")

    def __init__(self, consumer: _Consumer, msg: _Stored, attempt: int) -> None:
        self._consumer = consumer
        self.msg = msg
        self.attempt = attempt
        self._settled = False

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> Headers:
        return self.msg.headers

    @property
    def msg_id(self) -> str:
        return self.msg.headers.get("Cleave-Event-Id") or self.msg.msg_id

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True

    async def ack(self) -> None:
        if self._settle():
            self._consumer.finish(self.msg.seq)

    async def term(self) -> None:
        if self._settle():
            self._consumer.finish(self.msg.seq)

    async def nak(self, delay: float) -> None:
        if self._settle():
            self._consumer.retry(self.msg.seq, delay)


class _Consumer:
    """A durable consumer: a cursor into a stream plus pending redeliveries."""

    def __init__(self, stream: _Stream, durable: str, subject: str, policy: ConsumerPolicy) -> None:
        self.stream = stream
        self.durable = durable
        self.subject = subject
        self.policy = policy
        self.cursor = 1
        self.attempts: dict[int, int] = {}
        self.in_flight: set[int] = set()
        self.due: list[tuple[float, int]] = []
        self.handlers: list[DeliveryHandler] = []
        self.turn = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.running: set[asyncio.Task[None]] = set()

    def matches(self, subject: str) -> bool:
        return subject_matches(self.subject, subject)

    def finish(self, seq: int) -> None:
        self.in_flight.discard(seq)
        self.attempts.pop(seq, None)
        msg = self.stream.messages.get(seq)
        if msg is not None:
            msg.awaiting.discard(self.durable)
            if not msg.awaiting and msg.done is not None and not msg.done.done():
                msg.done.set_result(None)
        self.wakeup.set()

    def retry(self, seq: int, delay: float) -> None:
        self.in_flight.discard(seq)
        heapq.heappush(self.due, (time.monotonic() + max(0.0, delay), seq))
        self.wakeup.set()

    def _next(self) -> tuple[_Stored | None, float | None]:
        """The next message to deliver, or how long until one is due."""
        now = time.monotonic()
        while self.due and self.due[0][1] not in self.stream.messages:
            heapq.heappop(self.due)
        if self.due and self.due[0][0] <= now:
            _, seq = heapq.heappop(self.due)
            return self.stream.messages[seq], None
        while self.cursor <= self.stream.high:
            msg = self.stream.messages.get(self.cursor)
            self.cursor += 1
            if msg is not None and self.matches(msg.subject):
                return msg, None
        return None, (self.due[0][0] - now if self.due else None)

    async def run(self) -> None:
        while True:
            if len(self.in_flight) >= self.policy.max_in_flight or not self.handlers:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            msg, wait = self._next()
            if msg is None:
                self.wakeup.clear()
                if wait is None:
                    await self.wakeup.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeup.wait(), wait)
                continue
            attempt = self.attempts.get(msg.seq, 0) + 1
            self.attempts[msg.seq] = attempt
            self.in_flight.add(msg.seq)
            handler = self.handlers[self.turn % len(self.handlers)]
            self.turn += 1
            task = asyncio.get_running_loop().create_task(
                self._deliver(handler, _MemoryDelivery(self, msg, attempt))
            )
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _deliver(self, handler: DeliveryHandler, delivery: _MemoryDelivery) -> None:
        # An unsettled delivery is redelivered after ack_wait, as JetStream does.
        with contextlib.suppress(Exception):
            await handler(delivery)
        if not delivery._settled:
            delivery._settled = True
            self.retry(delivery.msg.seq, self.policy.ack_wait)


class _MemorySubscription:
    def __init__(self, broker: MemoryBroker, consumer: _Consumer, handler: DeliveryHandler) -> None:
        self._broker = broker
        self._consumer = consumer
        self._handler = handler

    async def pending(self) -> int:
        return self._broker.pending(self._consumer.stream.name, self._consumer.durable)

    async def stop(self) -> None:
        c = self._consumer
        if self._handler in c.handlers:
            c.handlers.remove(self._handler)
        if not c.handlers and c.task is not None:
            await cancel_and_wait(c.task)
            c.task = None
            if c.running:
                await asyncio.gather(*list(c.running), return_exceptions=True)


class MemoryBroker:
    """An in-memory :class:`~cleave.transport.base.Broker` with JetStream's rules."""

    def __init__(self, *, settle_before_ack: bool = False) -> None:
        self.settle_before_ack = settle_before_ack
        self._streams: dict[str, _Stream] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError("the broker is closed")

    async def ensure_stream(self, name: str, subjects: Sequence[Subject]) -> None:
        self._check_open()
        stream = self._streams.get(name)
        if stream is None:
            self._streams[name] = _Stream(name, subjects)
        else:
            stream.subjects = sorted(set(stream.subjects) | set(subjects))

    def _stream_for(self, subject: str) -> _Stream:
        for stream in self._streams.values():
            if stream.accepts(subject):
                return stream
        raise LifecycleError(f"no stream holds subject {subject!r}; ensure_stream() first")

    async def publish(self, messages: Sequence[Outgoing]) -> list[asyncio.Future[None]] | None:
        """Store ``messages`` in order; return without waiting for any consumer.

        In ``settle_before_ack`` mode, return one future per message, done once
        every consumer bound at publish time has settled it (at once if none
        is), failing with :class:`~cleave.errors.LifecycleError` if the broker
        closes first. A duplicate within the window gets the future of the
        message already stored. Otherwise return None.
        """
        self._check_open()
        settled: list[asyncio.Future[None]] | None = [] if self.settle_before_ack else None
        now = time.monotonic()
        for out in messages:
            stream = self._stream_for(out.subject)
            seen = stream.recent.get(out.msg_id)
            if seen is not None and now - seen[0] < DUPLICATE_WINDOW:
                if settled is not None:
                    settled.append(self._settled(stream.messages.get(seen[1])))
                continue
            seq = stream.high = next(stream.seq)
            stream.recent[out.msg_id] = (now, seq)
            stored = _Stored(seq, out)
            stored.awaiting = {d for d, c in stream.consumers.items() if c.matches(out.subject)}
            stream.messages[seq] = stored
            if settled is not None:
                if stored.awaiting:
                    stored.done = asyncio.get_running_loop().create_future()
                settled.append(self._settled(stored))
            for consumer in stream.consumers.values():
                consumer.wakeup.set()
            self._trim(stream, now)
        return settled

    @staticmethod
    def _settled(stored: _Stored | None) -> asyncio.Future[None]:
        """The future that ends when ``stored`` is settled (done: it already is, or is gone)."""
        if stored is not None and stored.done is not None:
            return stored.done
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def _trim(self, stream: _Stream, now: float) -> None:
        # Drop what every consumer has passed and settled; forget old message ids.
        if len(stream.recent) > 10_000:
            stream.recent = {
                k: seen for k, seen in stream.recent.items() if now - seen[0] < DUPLICATE_WINDOW
            }
        if not stream.consumers:
            return
        floor = min(c.cursor for c in stream.consumers.values())
        busy = set().union(*(c.attempts.keys() for c in stream.consumers.values()))
        for seq in [s for s in stream.messages if s < floor and s not in busy]:
            del stream.messages[seq]

    async def subscribe(
        self,
        stream: str,
        durable: str,
        subject: Subject,
        handler: DeliveryHandler,
        policy: ConsumerPolicy,
        batch_handler: BatchHandler | None = None,
        *,
        start: int = 0,
    ) -> _MemorySubscription:
        self._check_open()
        st = self._streams.get(stream)
        if st is None:
            raise LifecycleError(f"stream {stream!r} does not exist; ensure_stream() first")
        consumer = st.consumers.get(durable)
        if consumer is None:
            consumer = st.consumers[durable] = _Consumer(st, durable, subject, policy)
            consumer.cursor = max(1, start)
            # Messages already stored are delivered too, as with JetStream's DeliverAll
            # (or from ``start`` on, as with DeliverByStartSequence).
            for msg in st.messages.values():
                if msg.seq >= consumer.cursor and consumer.matches(msg.subject):
                    msg.awaiting.add(durable)
        consumer.handlers.append(handler)
        if consumer.task is None:
            consumer.task = asyncio.get_running_loop().create_task(consumer.run())
        consumer.wakeup.set()
        return _MemorySubscription(self, consumer, handler)

    async def consumers(self, stream: str) -> list[ConsumerState]:
        st = self._streams.get(stream)
        if st is None:
            return []
        # The ack floor: below the oldest message still delivered or waiting to be.
        return [
            ConsumerState(c.durable, c.subject, min([*c.attempts, c.cursor]) - 1)
            for c in st.consumers.values()
        ]

    async def delete_consumer(self, stream: str, durable: str) -> None:
        st = self._streams.get(stream)
        consumer = st.consumers.pop(durable, None) if st is not None else None
        if consumer is None:
            return
        if consumer.task is not None:
            await cancel_and_wait(consumer.task)
            consumer.task = None
        # Whoever waits for every consumer to settle a message waits no more for this one.
        for seq in list(consumer.stream.messages):
            consumer.finish(seq)

    def pending(self, stream: str, durable: str) -> int:
        """Messages the consumer has not settled yet (for tests and metrics)."""
        st = self._streams[stream]
        c = st.consumers[durable]
        unseen = sum(1 for s, m in st.messages.items() if s >= c.cursor and c.matches(m.subject))
        return unseen + len(c.attempts)

    def busy(self) -> bool:
        """Whether any consumer has a message it has not settled yet."""
        return any(
            self.pending(st.name, durable)
            for st in self._streams.values()
            for durable in st.consumers
        )

    async def close(self) -> None:
        self._closed = True
        for st in self._streams.values():
            for c in st.consumers.values():
                if c.task is not None:
                    await cancel_and_wait(c.task)
                    c.task = None
                for t in list(c.running):
                    t.cancel()
                if c.running:
                    await asyncio.gather(*list(c.running), return_exceptions=True)
            for msg in st.messages.values():
                if msg.done is not None and not msg.done.done():
                    msg.done.set_exception(
                        LifecycleError(
                            f"the broker closed before every consumer settled event "
                            f"{msg.msg_id}; keep its outbox row and publish it again "
                            "after the restart"
                        )
                    )
                    # Whoever published it may be gone already (a stopped relay):
                    # mark the error as seen so asyncio does not log it as lost.
                    msg.done.exception()
