"""An event's audience: who still consumes each version, and publishing to all of them.

A breaking change to an event is a new version of it: same topic, ``version=2``,
declared by the contract's new major. Consumers of the old version keep
working only if the old version keeps coming, so the publisher emits both::

    cleave.publish_versions(
        tx,
        PaymentCapturedV2(order_id=..., amount_cents=..., currency="EUR"),
        PaymentCaptured(order_id=..., amount_cents=...),
    )

The newest is always published; an older one only while someone consumes it:
a subscription to it declared anywhere in the app, or a durable consumer of
its subject in the broker (one of old code still running, or stopped but not
deleted). Once the last consumer of v1 is gone (deploy the consumers onto v2,
then ``nats consumer rm`` the old durable, or let a ``takeover=`` delete it),
v1 stops by itself and its class can be removed with the old major.

The host keeps one :class:`Audience` per publishing service and refreshes it
from the broker every few seconds; ``cleave status`` shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING

from cleave._aio import cancel_and_wait
from cleave.errors import CleaveError, DefinitionError
from cleave.messages import Event

if TYPE_CHECKING:
    from cleave.data.database import Database, Transaction
    from cleave.transport.base import Broker

__all__ = ["REFRESH_EVERY", "Audience", "publish_versions"]

#: Seconds between two looks at the broker's durable consumers.
REFRESH_EVERY = 5.0

_audiences: weakref.WeakKeyDictionary[Database, Audience] = weakref.WeakKeyDictionary()


class Audience:
    """Who consumes the events of one service: declared in the app, or durable in the broker."""

    def __init__(
        self, stream: str, subjects: dict[type[Event], str], declared: set[type[Event]]
    ) -> None:
        self.stream = stream
        self.subjects = subjects
        #: Event types some service of this app subscribes to.
        self.declared = declared
        #: The broker's durable consumers on the stream, by the subject they filter on.
        self.durables: dict[str, list[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def wants(self, event_type: type[Event]) -> bool:
        """Whether anyone consumes ``event_type`` (so it must still be published)."""
        return event_type in self.declared or self.subjects.get(event_type, "") in self.durables

    async def refresh(self, broker: Broker) -> None:
        """Look at the broker's durable consumers again."""
        found: dict[str, list[str]] = {}
        for consumer in await broker.consumers(self.stream):
            found.setdefault(consumer.subject, []).append(consumer.name)
        self.durables = {subject: sorted(names) for subject, names in found.items()}

    def attach(self, db: Database) -> None:
        """Make this the audience :func:`publish_versions` consults for ``db``'s events."""
        _audiences[db] = self

    def start(self, broker: Broker, every: float = REFRESH_EVERY) -> None:
        """Refresh from ``broker`` every ``every`` seconds until :meth:`stop`."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                # A broker briefly away: keep the last view (publishing more is the safe side).
                with contextlib.suppress(CleaveError):
                    await self.refresh(broker)

        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        """Stop refreshing."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def consumers(self) -> dict[str, list[str]]:
        """Each event subject of the service with the durable consumers that read it."""
        out = {subject: list(self.durables.get(subject, [])) for subject in self.subjects.values()}
        for subject, names in self.durables.items():
            out.setdefault(subject, list(names))
        return out


def publish_versions(tx: Transaction, newest: Event, *older: Event) -> None:
    """Stage ``newest``, and each of ``older`` (same topic, lower versions) still consumed.

    Outside a Cleave host (a unit test with :func:`cleave.testing.build`)
    nobody says who consumes what, so every version is published.
    """
    topic, version = newest.__topic__, newest.__version__
    for event in older:
        if event.__topic__ != topic or event.__version__ >= version:
            raise DefinitionError(
                f"publish_versions({type(newest).__name__}(...), {type(event).__name__}(...)): "
                f"the older versions must have the topic {topic!r} and a version below "
                f"{version} (got {event.__topic__!r} v{event.__version__}); pass the newest first"
            )
    tx.publish(newest)
    audience = _audiences.get(tx.db)
    for event in older:
        if audience is None or audience.wants(type(event)):
            tx.publish(event)
