"""The vocabulary the rest of Cleave speaks in, so signatures read like prose."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from cleave.context import CallContext
    from cleave.contracts import MethodSpec
    from cleave.messages import Message

__all__ = [
    "BatchHandler",
    "Deadline",
    "Delivery",
    "DeliveryHandler",
    "Headers",
    "Invoke",
    "Subject",
]

#: A NATS subject, e.g. ``cleave.rpc.billing.v1.charge``.
Subject: TypeAlias = str
#: An absolute deadline, in seconds since the epoch (``time.time()``).
Deadline: TypeAlias = float
#: Message headers as they travel with an event.
Headers: TypeAlias = Mapping[str, str]
#: Runs one call of a contract method, wherever the callee lives.
Invoke: TypeAlias = "Callable[[MethodSpec, Message, CallContext], Awaitable[Message]]"


class Delivery(Protocol):
    """One delivery of an event to a durable consumer; settle it exactly once."""

    @property
    def subject(self) -> Subject: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def msg_id(self) -> str: ...
    @property
    def attempt(self) -> int:
        """1 for the first delivery, 2 for the first redelivery, and so on."""
        ...

    async def ack(self) -> None:
        """Done: never deliver it again."""
        ...

    async def nak(self, delay: float) -> None:
        """Failed: deliver it again after ``delay`` seconds."""
        ...

    async def term(self) -> None:
        """Give up on it: never deliver it again (after dead-lettering it)."""
        ...


#: Handles one delivery; must settle it (ack, nak or term).
DeliveryHandler: TypeAlias = Callable[[Delivery], Awaitable[None]]
#: Handles several deliveries at once; must settle each.
BatchHandler: TypeAlias = Callable[[Sequence[Delivery]], Awaitable[None]]
