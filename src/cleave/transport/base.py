"""What a transport must do: two small protocols.

- :class:`RpcClient` sends one call to a service that is not in this process.
- :class:`Broker` stores events in durable streams and delivers them to
  durable consumers with explicit acknowledgement and bounded redelivery.

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
    from cleave.context import CallContext
    from cleave.contracts import MethodSpec
    from cleave.messages import Message
    from cleave.types import BatchHandler, DeliveryHandler, Headers, Subject

__all__ = [
    "Broker",
    "ConsumerPolicy",
    "DeadLetter",
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


class DeadLetter(msgspec.Struct, frozen=True):
    """An event a consumer gave up on, as kept in the dead-letter stream."""

    subject: str
    data: bytes
    headers: dict[str, str]


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

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store ``messages`` durably, in order; return once all are acknowledged.

        A message whose ``msg_id`` was already stored recently is not stored again.
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
    ) -> Subscription:
        """Deliver messages on ``subject`` to ``handler`` via the durable consumer ``durable``.

        Replicas that subscribe with the same ``durable`` share its messages.
        A broker may hand several at once to ``batch_handler`` instead.
        """
        ...

    async def dead_letter(self, subject: Subject, data: bytes, headers: Headers) -> None:
        """Keep a message that could not be processed, for inspection."""
        ...

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""
        ...

    async def close(self) -> None: ...
