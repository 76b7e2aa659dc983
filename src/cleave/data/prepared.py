"""Statements built and compiled once, run straight on the database driver.

Built and executed through SQLAlchemy Core each time, a statement costs
about 50 to 100 us of Python (building it, computing its cache key, setting
up a result) for a few microseconds of SQLite's own work. On a hot path that
is most of a service's CPU. A :class:`Prepared` statement is built once, at
import, with named parameters; it is compiled once per dialect and executed
on the driver with positional parameters::

    FIND_ACCOUNT = cleave.Prepared(
        sa.select(accounts.c.balance_cents).where(accounts.c.account_id == sa.bindparam("id"))
    )

    async with self.db.read() as tx:
        row = await tx.fetch_one(FIND_ACCOUNT, {"id": req.account_id})
        if row is not None:
            balance = row.balance_cents

``tx.fetch`` returns every row, ``tx.fetch_one`` the first or None (rows are
named tuples with the statement's column names), ``tx.run`` a write's row
count, ``tx.run_many`` runs a write once per set of parameters. Cleave runs
its own statements (outbox, inbox, idempotency records, saga state) this way.

Only for statements whose shape never changes: no ``IN`` lists of varying
length, no optional clauses; values are passed as the driver takes them (no
SQLAlchemy type processing: a ``Float`` column takes a float, a ``JSON`` one
the encoded text). Anything else goes through ``tx.execute``.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

__all__ = ["Prepared"]


class Prepared:
    """One statement with named bind parameters, compiled per dialect on first use."""

    __slots__ = ("_compiled", "_defaults", "row", "statement")

    def __init__(self, statement: sa.Executable) -> None:
        if not isinstance(statement, sa.Executable):
            raise TypeError(
                f"cleave.Prepared() takes a SQLAlchemy statement (select, insert, update, "
                f"delete or text), got {type(statement).__name__}"
            )
        self.statement: Any = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...]]] = {}
        # Values of parameters the statement carries itself (LIMIT, OFFSET 0 and the like).
        self._defaults: dict[str, Any] = {}
        #: Makes a result row from the driver's tuple: a named tuple for a query.
        self.row: Callable[[Sequence[Any]], tuple[Any, ...]] = tuple
        columns = getattr(statement, "selected_columns", None)
        if columns is not None and len(columns):
            make_type: Any = namedtuple
            self.row = make_type("Row", [c.key for c in columns], rename=True)._make

    def compiled(self, dialect: sa.Dialect) -> tuple[str, tuple[str, ...]]:
        """The SQL text for ``dialect`` and the names of its parameters, in order."""
        key = f"{dialect.name}:{dialect.paramstyle}"
        found = self._compiled.get(key)
        if found is None:
            if dialect.paramstyle not in ("qmark", "numeric_dollar", "format"):
                raise NotImplementedError(
                    f"cleave.Prepared runs on drivers with the qmark, numeric_dollar or format "
                    f"paramstyle (sqlite3, asyncpg, psycopg); {dialect.name} uses "
                    f"{dialect.paramstyle}: use tx.execute for it"
                )
            compiled = self.statement.compile(dialect=dialect)
            names = tuple(compiled.positiontup or ())
            for name, bind in compiled.binds.items():
                if bind.expanding:
                    raise TypeError(
                        f"cleave.Prepared cannot run an IN list ({name}): its length changes "
                        "the SQL; run one statement per value, or use tx.execute"
                    )
                if not bind.required and bind.value is not None:
                    self._defaults.setdefault(name, bind.value)
            found = self._compiled[key] = (compiled.string, names)
        return found

    def arguments(self, names: Sequence[str], params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional arguments for the driver, in the order of ``names``."""
        try:
            return tuple(params[n] if n in params else self._defaults[n] for n in names)
        except KeyError as exc:
            raise TypeError(
                f"missing parameter {exc} for the prepared statement: {self.statement}"
            ) from None
