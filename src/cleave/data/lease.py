"""Leases: which replica does a piece of work, decided by the database the replicas share.

A lease is a holder and an expiry time on a row. It is taken, renewed and
handed back by one conditional UPDATE each, whose row count says who won::

    UPDATE t SET holder = :me, expires = :now + :ttl
     WHERE key = :key AND (holder = :me OR holder = '' OR expires < :now)

so two replicas that race for it never both get it, on SQLite (one writer at
a time) as on PostgreSQL (the second UPDATE waits for the first to commit,
then re-checks its WHERE against the row the first one wrote). A holder that
dies simply stops renewing; once its lease runs out, anyone may take it.

Two kinds, one mechanism (:class:`RowLease`):

- a named lease, :class:`Lease`: a row of ``cleave_leases`` per singleton
  job (the outbox relay), inserted on first use;
- a lease on each row of a table of work items: the saga engine leases each
  saga through the ``owner`` and ``lease_until`` columns of ``cleave_sagas``.

Holders compare wall-clock times (``time.time()``), so the replicas' clocks
must agree to well within a lease's ttl.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cleave.data import schema
from cleave.data.prepared import Prepared

if TYPE_CHECKING:
    from cleave.data.database import Database, Transaction

__all__ = ["Lease", "RowLease"]


class RowLease:
    """Leases on the rows of one table: a ``holder`` column and an ``expires`` column.

    ``only`` narrows which rows can be leased at all (say, work not finished
    yet); ``returning`` names the columns :meth:`take` hands back.
    """

    def __init__(
        self,
        key: sa.Column[Any],
        holder: sa.Column[Any],
        expires: sa.Column[Any],
        *,
        only: sa.ColumnElement[bool] | None = None,
        returning: Sequence[sa.Column[Any]] = (),
    ) -> None:
        table = key.table
        self.key, self.holder, self.expires = key, holder, expires
        me: sa.BindParameter[str] = sa.bindparam("lease_holder")
        take = (
            table.update()
            .where(key == sa.bindparam("lease_key"))
            .where(sa.or_(holder == me, holder == "", expires < sa.bindparam("lease_now")))
            .values({holder: me, expires: sa.bindparam("lease_until")})
        )
        if only is not None:
            take = take.where(only)
        self.only = only
        self._take = Prepared(take.returning(*(returning or (key,))))
        self._release = Prepared(
            table.update()
            .where(key == sa.bindparam("lease_key"))
            .where(holder == sa.bindparam("lease_holder"))
            .values({expires: 0.0})
        )

    async def take(
        self, tx: Transaction, key: Any, holder: str, ttl: float, *, now: float | None = None
    ) -> tuple[Any, ...] | None:
        """Take or renew the lease on row ``key`` for ``holder``, until ``now + ttl``.

        Returns the row's ``returning`` columns (as they are now) if ``holder``
        holds it; None if another holder does, or no such row may be leased.
        """
        now = time.time() if now is None else now
        params = {
            "lease_key": key,
            "lease_holder": holder,
            "lease_now": now,
            "lease_until": now + ttl,
        }
        # All rows are read: on SQLite an UPDATE ... RETURNING must run to its end.
        rows = await tx.fetch(self._take, params)
        return tuple(rows[0]) if rows else None

    async def release(self, tx: Transaction, key: Any, holder: str) -> bool:
        """Hand the lease on row ``key`` back, if ``holder`` has it; whether it did."""
        return await tx.run(self._release, {"lease_key": key, "lease_holder": holder}) == 1

    async def release_all(self, tx: Transaction, holder: str) -> int:
        """Hand back every lease ``holder`` has on this table (it is stopping); how many."""
        release = self.key.table.update().where(self.holder == holder)
        if self.only is not None:
            release = release.where(self.only)
        result = await tx.execute(release.values({self.expires: 0.0}))
        return int(result.rowcount)


_LEASES = RowLease(schema.leases.c.name, schema.leases.c.holder, schema.leases.c.expires_at)
_INSERT = Prepared(
    sa.text(
        "INSERT INTO cleave_leases (name, holder, expires_at) "
        "VALUES (:name, :holder, :expires_at) ON CONFLICT (name) DO NOTHING"
    )
)


class Lease:
    """A named lease (a row of ``cleave_leases``): at most one holder at a time.

    ::

        lease = Lease(db, "outbox-relay", holder=instance_id, ttl=5.0)
        while True:
            if await lease.hold():     # taken, renewed, or still fresh
                ...                    # do the work; hold() again within ttl / 2
    """

    def __init__(self, db: Database, name: str, *, holder: str, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"lease {name!r} needs a ttl above 0 s, got {ttl}")
        self.db = db
        self.name = name
        self.holder = holder
        self.ttl = ttl
        #: When our hold ends (wall-clock seconds); 0 while we do not hold it.
        self.until = 0.0

    @property
    def held(self) -> bool:
        """Whether we hold the lease now, as far as we know."""
        return self.until > time.time()

    async def hold(self) -> bool:
        """Hold the lease: renewed only once half its ttl is gone; whether it is ours."""
        if self.until - time.time() > self.ttl / 2:
            return True
        return await self.acquire()

    async def acquire(self) -> bool:
        """Take or renew the lease now; whether it is ours (until ``now + ttl``)."""
        now = time.time()
        until = now + self.ttl
        async with self.db.transaction() as tx:
            won = await _LEASES.take(tx, self.name, self.holder, self.ttl, now=now) is not None
            if not won:
                # No row yet (first use), or another holder's: the insert tells which.
                won = (
                    await tx.run(
                        _INSERT, {"name": self.name, "holder": self.holder, "expires_at": until}
                    )
                    == 1
                )
        self.until = until if won else 0.0
        return won

    async def release(self) -> None:
        """Hand the lease back (if ours), so another holder need not wait for it to run out."""
        self.until = 0.0
        async with self.db.transaction() as tx:
            await _LEASES.release(tx, self.name, self.holder)
