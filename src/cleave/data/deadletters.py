"""Dead letters: the events a consumer gave up on, kept in its service's own database.

After ``max_deliver`` failed attempts (or at once, for an event that cannot be
decoded) a consumer records the delivery in ``cleave_dead_letters``, in a
transaction of its own database, and only then terminates it on the broker.
So a dead letter is as durable as the service's data, in every placement,
and sits next to the inbox it is replayed through.

- :func:`record` writes one (the consumer calls it).
- :class:`DeadLetterStore`: those of one service's database: list, mark for
  replay, purge.
- :class:`Replayer`: runs in every host; it replays the marked letters of
  the consumers that host runs.

A replay is asked for by marking the letter (``replay_requested_at``), so
whoever asks (``cleave dlq replay``, the dashboard) needs the database, not
the process that runs the consumer: a letter marked while the app is stopped
is replayed when the service runs again. A replay is one transaction that
deletes the letter, records the event in the consumer's inbox and runs the
handler: applied once (an event the inbox already holds is not applied
again; its letter just goes), and a replay that fails leaves the letter, with
its new error, unmarked. :mod:`cleave.runtime.dlq` puts the stores of a
whole app together, for ``cleave dlq`` and the dashboard.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from cleave._aio import cancel_and_wait
from cleave.data import schema

if TYPE_CHECKING:
    from cleave.data.database import Database, Transaction
    from cleave.data.inbox import EventConsumer

__all__ = ["DeadLetter", "DeadLetterStore", "Outcome", "Replayed", "Replayer", "claim", "record"]

log = structlog.get_logger("cleave.deadletters")

#: What became of a letter asked to be replayed: handled now; already in the
#: inbox (so not applied again); failed again; still waiting for a host that
#: runs its consumer; or gone (replayed or purged by someone else).
Outcome = Literal["replayed", "duplicate", "failed", "requested", "gone"]

_t = schema.dead_letters


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One event a consumer gave up on."""

    id: str
    service: str
    consumer: str
    event_id: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    #: The last failure: the handler's exception, or why the event could not be decoded.
    error: str
    #: Deliveries and replays tried, in all.
    attempts: int
    created_at: float
    failed_at: float
    replay_requested_at: float | None = None

    def summary(self) -> dict[str, Any]:
        """The letter as JSON-ready data, without its payload and headers."""
        return {
            "id": self.id,
            "service": self.service,
            "consumer": self.consumer,
            "event_id": self.event_id,
            "subject": self.subject,
            "error": self.error,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "failed_at": self.failed_at,
            "replay_requested_at": self.replay_requested_at,
        }

    def describe(self) -> dict[str, Any]:
        """Everything, as JSON-ready data; the payload decoded if it is MessagePack."""
        try:
            payload: Any = msgspec.to_builtins(msgspec.msgpack.decode(self.payload))
        except (msgspec.DecodeError, TypeError):
            payload = {"undecodable": self.payload.hex()}
        return {**self.summary(), "headers": self.headers, "payload": payload}


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one letter asked to be replayed."""

    id: str
    service: str
    consumer: str
    event_id: str
    outcome: Outcome
    error: str = ""

    @classmethod
    def of(cls, letter: DeadLetter, outcome: Outcome, error: str = "") -> Replayed:
        return cls(
            id=letter.id,
            service=letter.service,
            consumer=letter.consumer,
            event_id=letter.event_id,
            outcome=outcome,
            error=error,
        )


async def record(
    tx: Transaction,
    *,
    consumer: str,
    event_id: str,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    error: str,
    attempts: int,
) -> str:
    """Keep a dead letter in ``tx``; return its id.

    The same event dead-lettered again by the same consumer updates its letter
    (the newest error; attempts add up) instead of making a second one.
    """
    now = time.time()
    values = {
        "id": os.urandom(6).hex(),
        "consumer": consumer,
        "event_id": event_id,
        "subject": subject,
        "payload": payload,
        "headers": json.dumps(headers),
        "error": error,
        "attempts": attempts,
        "created_at": now,
        "failed_at": now,
    }
    insert = (
        postgresql.insert(_t) if tx.connection.dialect.name == "postgresql" else sqlite.insert(_t)
    )
    statement = insert.values(values)
    await tx.execute(
        statement.on_conflict_do_update(
            index_elements=[_t.c.consumer, _t.c.event_id],
            set_={
                "payload": statement.excluded.payload,
                "headers": statement.excluded.headers,
                "error": statement.excluded.error,
                "attempts": _t.c.attempts + statement.excluded.attempts,
                "failed_at": statement.excluded.failed_at,
            },
        )
    )
    found = await tx.scalar(
        sa.select(_t.c.id).where(_t.c.consumer == consumer, _t.c.event_id == event_id)
    )
    return str(found)


async def claim(tx: Transaction, letter_id: str) -> bool:
    """Take a letter marked for replay out of the store, in the replay's own transaction.

    False: it is not there, or no longer marked (another replica replayed it,
    or someone purged it).
    """
    result = await tx.execute(
        _t.delete().where(_t.c.id == letter_id, _t.c.replay_requested_at.is_not(None))
    )
    return bool(result.rowcount)


class DeadLetterStore:
    """The dead letters in one service's database."""

    def __init__(self, db: Database, service: str) -> None:
        self.db = db
        self.service = service

    def _letter(self, row: Any) -> DeadLetter:
        return DeadLetter(
            id=row.id,
            service=self.service,
            consumer=row.consumer,
            event_id=row.event_id,
            subject=row.subject,
            payload=bytes(row.payload),
            headers=json.loads(row.headers),
            error=row.error,
            attempts=row.attempts,
            created_at=row.created_at,
            failed_at=row.failed_at,
            replay_requested_at=row.replay_requested_at,
        )

    async def find(
        self,
        ids: Sequence[str] | None = None,
        *,
        consumers: Sequence[str] | None = None,
        requested: bool = False,
    ) -> list[DeadLetter]:
        """Letters, oldest failure first: those with ``ids``, of ``consumers``, or all.

        ``requested``: only those marked for replay.
        """
        query = sa.select(_t).order_by(_t.c.failed_at, _t.c.id)
        if ids is not None:
            query = query.where(_t.c.id.in_(ids))
        if consumers is not None:
            query = query.where(_t.c.consumer.in_(consumers))
        if requested:
            query = query.where(_t.c.replay_requested_at.is_not(None))
        async with self.db.read() as tx:
            rows = (await tx.execute(query)).all()
        return [self._letter(r) for r in rows]

    async def get(self, letter_id: str) -> DeadLetter | None:
        """The letter with this id, or None."""
        found = await self.find([letter_id])
        return found[0] if found else None

    async def counts(self) -> dict[str, int]:
        """How many letters each consumer has."""
        async with self.db.read() as tx:
            rows = (
                await tx.execute(
                    sa.select(_t.c.consumer, sa.func.count().label("n")).group_by(_t.c.consumer)
                )
            ).all()
        return {row.consumer: int(row.n) for row in rows}

    async def mark(self, ids: Sequence[str] | None = None) -> list[DeadLetter]:
        """Ask for a replay of the letters ``ids`` (None: all); the letters marked.

        Read in the marking transaction: once it commits, a host may replay and
        remove a letter before a later read could see it.
        """
        now = time.time()
        update = _t.update().values(replay_requested_at=now)
        query = sa.select(_t).order_by(_t.c.failed_at, _t.c.id)
        if ids is not None:
            update = update.where(_t.c.id.in_(ids))
            query = query.where(_t.c.id.in_(ids))
        async with self.db.transaction() as tx:
            await tx.execute(update)
            rows = (await tx.execute(query)).all()
        return [self._letter(r) for r in rows]

    async def failed_again(self, letter_id: str, error: str) -> None:
        """A replay failed: keep the letter with its new error, no longer marked."""
        async with self.db.transaction() as tx:
            await tx.execute(
                _t.update()
                .where(_t.c.id == letter_id)
                .values(
                    error=error,
                    attempts=_t.c.attempts + 1,
                    failed_at=time.time(),
                    replay_requested_at=None,
                )
            )

    async def purge(self, ids: Sequence[str] | None = None) -> list[DeadLetter]:
        """Delete the letters ``ids`` (None: all); the letters deleted."""
        async with self.db.transaction() as tx:
            query = sa.select(_t)
            delete = _t.delete()
            if ids is not None:
                query = query.where(_t.c.id.in_(ids))
                delete = delete.where(_t.c.id.in_(ids))
            rows = (await tx.execute(query)).all()
            await tx.execute(delete)
        return [self._letter(r) for r in rows]


class Replayer:
    """Replays the letters marked for replay of a host's consumers.

    Looks every ``interval`` seconds (a cheap read of a small table), and at
    once when woken (the monolith's dashboard does, after marking).
    """

    def __init__(self, consumers: Sequence[EventConsumer], *, interval: float = 1.0) -> None:
        self.interval = interval
        self.replayed: list[Replayed] = []  # the most recent outcomes, for tests and logs
        # One store per database, with the consumers that use it.
        self._groups: dict[int, tuple[DeadLetterStore, dict[str, EventConsumer]]] = {}
        for c in consumers:
            if id(c.db) not in self._groups:
                self._groups[id(c.db)] = (DeadLetterStore(c.db, c.service), {})
            self._groups[id(c.db)][1][c.name] = c
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._groups:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="replayer")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.replay_requested()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away for a moment: try again
                log.warning("dead-letter replay failed", error=f"{type(exc).__name__}: {exc}")
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def replay_requested(self) -> list[Replayed]:
        """Replay every letter now marked for one of our consumers; what became of each."""
        done = []
        for store, consumers in self._groups.values():
            for letter in await store.find(consumers=list(consumers), requested=True):
                outcome, error = await consumers[letter.consumer].replay(letter)
                done.append(Replayed.of(letter, outcome, error))
        self.replayed = (self.replayed + done)[-100:]
        return done
