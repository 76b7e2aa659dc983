"""What a transport must do: two small protocols.

- :class:`RpcClient` sends one call to a service that is not in this process.
- :class:`Broker` stores events in durable streams and delivers them to
  durable consumers with explicit acknowledgement and bounded redelivery.
  (Dead letters are not the broker's: the consumer keeps them in its own
  database, see :mod:`cleave.data.deadletters`.)

Each has an in-memory implementation (:mod:`cleave.transport.local`) and a
NATS one (:mod:`cleave.transport.nats`), tested against the same suite: the
in-memory one is what users' tests and the monolith run on, so it must
behave like the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    import asyncio

    from cleave.context import CallContext
    from cleave.contracts import MethodSpec
    from cleave.messages import Message
    from cleave.types import BatchHandler, DeliveryHandler, Subject

__all__ = [
    "Broker",
    "ConsumerPolicy",
    "ConsumerState",
    "Outgoing",
    "RpcClient",
    "Subscription",
]


class RpcClient(Protocol):
    async def call(self, method: MethodSpec, request: Message, ctx: CallContext) -> Message:
        """Send ``request`` to ``method``'s service; return its response or raise a CallError."""
        ...

    async def close(self) -> None: ...


class Outgoing(msgspec.Struct, frozen=True):
    """An event on its way to a stream."""

    subject: str
    data: bytes
    msg_id: str
    headers: dict[str, str] = {}


class ConsumerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a durable consumer acknowledges and redelivers."""

    #: Attempts before the consumer gives up on a message and dead-letters it.
    max_deliver: int = 5
    #: Seconds before an unacknowledged delivery is sent again.
    ack_wait: float = 30.0
    #: Redelivery delays after each failed attempt (the last one repeats).
    backoff: tuple[float, ...] = (0.2, 1.0, 5.0, 15.0)
    #: Deliveries handled at once by one consumer (1 keeps them in order).
    max_in_flight: int = 1
    #: Deliveries fetched and handled together, in one transaction (1: one at a time).
    batch: int = 256

    def delay(self, attempt: int) -> float:
        """Delay before redelivering after failed attempt number ``attempt`` (1-based)."""
        return self.backoff[min(attempt, len(self.backoff)) - 1] if self.backoff else 0.0


class ConsumerState(msgspec.Struct, frozen=True):
    """A durable consumer as the broker keeps it."""

    name: str
    #: The subject it delivers (canonical: ``cleave.evt.…``).
    subject: str
    #: The stream sequence up to which every message is settled (its ack floor).
    acked: int


class Subscription(Protocol):
    async def pending(self) -> int:
        """Messages not yet delivered or not yet acknowledged."""
        ...

    async def stop(self) -> None:
        """Stop pulling new deliveries; wait for the ones in progress."""
        ...


class Broker(Protocol):
    async def ensure_stream(self, name: str, subjects: Sequence[Subject]) -> None:
        """Create the stream if missing (idempotent)."""
        ...

    async def publish(self, messages: Sequence[Outgoing]) -> Sequence[asyncio.Future[None]] | None:
        """Store ``messages`` in order; return once all are acknowledged.

        A message whose ``msg_id`` was already stored recently is not stored again.
        None: they are stored durably, the sender may forget them now (JetStream).
        Otherwise one future per message, done once the sender may forget it,
        failing if the broker closes first: the in-memory broker, which nothing
        survives, ends it once every consumer bound at publish time settled it.
        """
        ...

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
    ) -> Subscription:
        """Deliver messages on ``subject`` to ``handler`` via the durable consumer ``durable``.

        Replicas that subscribe with the same ``durable`` share its messages.
        A broker may hand several at once to ``batch_handler`` instead.
        A consumer that does not exist yet is created to deliver from stream
        sequence ``start`` on, or with 0 (never "new messages only") from the
        first message the stream still keeps.
        """
        ...

    async def consumers(self, stream: str) -> list[ConsumerState]:
        """The durable consumers the broker keeps on ``stream`` (none if it does not exist)."""
        ...

    async def delete_consumer(self, stream: str, durable: str) -> None:
        """Delete the durable consumer ``durable`` of ``stream``; nothing if there is none."""
        ...

    async def close(self) -> None: ...
