"""A service's own database: SQLAlchemy 2 async, SQLite by default, PostgreSQL by URL.

Declared once on the service class with the service's tables::

    metadata = sa.MetaData()
    accounts = sa.Table("accounts", metadata, ...)

    class BillingService(cleave.Service, implements=Billing):
        db = cleave.Database(metadata)

        async def charge(self, req: Charge) -> Receipt:
            async with self.db.transaction() as tx:
                await tx.execute(accounts.update()...)
                tx.publish(PaymentCaptured(...))       # outbox row, same commit

The runtime binds a started copy to each service instance (``bind()`` then
``start()``); the class attribute itself is only a declaration.

A ``transaction()`` inside an open write transaction of the same database
(yours, or one the framework opened around an event handler or an idempotent
method) is a SAVEPOINT of it: if the inner block raises, its writes and the
events it published roll back, and an author who catches the error goes on
with the outer transaction, which commits the rest (once, with its inbox or
idempotency record). A ``read()`` inside a transaction joins it and sees its
writes. ``tx.publish`` after its block ended raises: publish inside the block.

Durability. A transaction's block returns once its commit is on disk, under
``[database] synchronous = "full"`` (the default): SQLite runs with
``synchronous=NORMAL`` and the commit awaits a sync of the log that it shares
with the commits around it (group commit, see :mod:`cleave.data.durability`).
``synchronous = "normal"`` skips that wait: faster, and a commit still
survives a killed process, but not a power cut. A read-only transaction never
waits: it may see a commit whose sync is still running (whose own caller has
not been answered yet); code that acts outside the database on what it read
awaits :meth:`Database.durable` first, as the outbox relay does. PostgreSQL
commits are the server's business (its ``synchronous_commit``).

Event order. The outbox relay publishes a service's events in commit order.
SQLite has one write transaction at a time, so outbox rows are numbered in
commit order. On PostgreSQL, transactions commit concurrently, so a
transaction that publishes takes an advisory lock (per service, held until its
commit) just before it writes its outbox rows: rows are numbered in commit
order, and the relay never sees a later row before an earlier one commits.
That lock makes publishing transactions of one service commit one at a time.

SQLite runs on the event loop's own thread: its statements take microseconds,
far less than handing each one to a thread and back, as an async driver must.
Write transactions start with ``BEGIN IMMEDIATE``, one at a time per process
(an asyncio lock); a replica in another process holding the write lock is
waited for with ``await asyncio.sleep`` between tries, never by blocking the
loop. PostgreSQL runs on asyncpg.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cleave.data import schema
from cleave.data.checkpoint import Checkpointer
from cleave.data.durability import GroupCommit, check_synchronous
from cleave.data.prepared import Prepared
from cleave.errors import ConfigError, DefinitionError, LifecycleError
from cleave.messages import to_msgpack
from cleave.observability.tracing import PRODUCER, id_attributes, tracer

if TYPE_CHECKING:
    from cleave.messages import Event

__all__ = ["Database", "Transaction", "default_url", "sqlite_engine"]

_NO_PARAMS: Mapping[str, Any] = {}
_ambient: ContextVar[Transaction | None] = ContextVar("cleave_tx", default=None)


def default_url(data_dir: Path, service: str) -> str:
    """The SQLite file a service uses when cleave.toml gives no URL."""
    return f"sqlite:///{data_dir / f'{service}.db'}"


class Transaction:
    """An open transaction on a service's database.

    ``execute`` runs SQLAlchemy statements; ``publish`` stages an event that
    is written to the outbox in the same commit.
    """

    __slots__ = (
        "_after_commit",
        "_depth",
        "_driver",
        "_events",
        "_opaque",
        "closed",
        "connection",
        "db",
        "readonly",
    )

    def __init__(
        self, db: Database, connection: sa.Connection | AsyncConnection, readonly: bool
    ) -> None:
        self.db = db
        #: The SQLAlchemy connection: a plain one for SQLite, an async one for PostgreSQL.
        self.connection = connection
        self.readonly = readonly
        self.closed = False
        self._events: list[dict[str, Any]] = []
        self._driver: Any = None  # the sqlite3 connection, once a prepared statement ran
        self._depth = 0  # 0: the transaction itself; n: its n-th nested savepoint
        # Ran a prepared statement that may write without changing rows (DDL, a PRAGMA).
        self._opaque = False
        self._after_commit: list[Callable[[], None]] = []

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        """Execute a SQLAlchemy statement (Core) in this transaction."""
        conn = self.connection
        if isinstance(conn, sa.Connection):
            return conn.execute(statement, parameters)
        result: sa.CursorResult[Any] = await conn.execute(statement, parameters)
        return result

    async def scalar(self, statement: Any, parameters: Any = None) -> Any:
        """Execute and return the first column of the first row, or None."""
        conn = self.connection
        if isinstance(conn, sa.Connection):
            return conn.scalar(statement, parameters)
        return await conn.scalar(statement, parameters)

    # -- Cleave's own statements (see cleave.data.prepared) -----------------------------------

    async def fetch(self, prepared: Prepared, params: Mapping[str, Any] = _NO_PARAMS) -> list[Any]:
        """Run a prepared query; its rows (named tuples)."""
        conn = self.connection
        sql, names = prepared.compiled(conn.dialect)
        args = prepared.arguments(names, params)
        make = prepared.row
        if isinstance(conn, sa.Connection):
            return [make(r) for r in self._sqlite(sql, args, prepared).fetchall()]
        result = await conn.exec_driver_sql(sql, args)
        return [make(r) for r in result.all()]

    async def fetch_one(
        self, prepared: Prepared, params: Mapping[str, Any] = _NO_PARAMS
    ) -> Any | None:
        """Run a prepared query; its first row (a named tuple), or None."""
        conn = self.connection
        sql, names = prepared.compiled(conn.dialect)
        args = prepared.arguments(names, params)
        if isinstance(conn, sa.Connection):
            row = self._sqlite(sql, args, prepared).fetchone()
        else:
            row = (await conn.exec_driver_sql(sql, args)).first()
        return None if row is None else prepared.row(row)

    async def run(self, prepared: Prepared, params: Mapping[str, Any] = _NO_PARAMS) -> int:
        """Run a prepared write; how many rows it changed."""
        conn = self.connection
        sql, names = prepared.compiled(conn.dialect)
        args = prepared.arguments(names, params)
        if isinstance(conn, sa.Connection):
            return int(self._sqlite(sql, args, prepared).rowcount)
        result = await conn.exec_driver_sql(sql, args)
        return int(result.rowcount)

    async def run_many(self, prepared: Prepared, params: Sequence[Mapping[str, Any]]) -> None:
        """Run a prepared write once per set of parameters."""
        if not params:
            return
        conn = self.connection
        sql, names = prepared.compiled(conn.dialect)
        args = [prepared.arguments(names, p) for p in params]
        if isinstance(conn, sa.Connection):
            self._sqlite(sql, args, prepared, many=True)
            return
        await conn.exec_driver_sql(sql, args)

    def _sqlite(
        self, sql: str, args: Any, prepared: Prepared | None = None, *, many: bool = False
    ) -> sqlite3.Cursor:
        if prepared is not None and not isinstance(prepared.statement, _COUNTED):
            self._opaque = True  # SQLite's count of changed rows may not show its writes
        driver = self._driver
        if driver is None:
            assert isinstance(self.connection, sa.Connection)
            driver = self._driver = self.connection.connection.driver_connection
        try:
            cursor: sqlite3.Cursor = (
                driver.executemany(sql, args) if many else driver.execute(sql, args)
            )
            return cursor
        except sqlite3.Error as exc:
            # As SQLAlchemy would raise it, so callers catch one family of errors.
            raise sa.exc.DBAPIError.instance(sql, args, exc, sqlite3.Error) from exc

    def publish(self, event: Event) -> None:
        """Stage ``event`` for the outbox; it is written when this transaction commits."""
        if self.closed:
            raise LifecycleError(
                f"tx.publish({type(event).__name__}(...)) after the transaction's block ended: "
                "the transaction is closed (committed or rolled back), so the event would be "
                "lost; publish inside the `async with db.transaction() as tx:` block"
            )
        if self.readonly:
            raise LifecycleError("cannot publish from a read-only transaction; use transaction()")
        subject = self.db.event_subject(type(event))
        from cleave import context  # local: keeps the data layer import-light

        ctx = context.current()
        event_id = os.urandom(12).hex()
        traceparent = ctx.traceparent if ctx is not None else ""
        # Who caused it: the user the call acts for, or (in a handler) who caused its event.
        who = None if ctx is None else ctx.identity or ctx.caused_by
        caused_by = "" if who is None else context.encode_identity(who)
        if tracer.enabled:
            span = tracer.start(
                f"publish {type(event).__topic__}", PRODUCER, self.db.service, traceparent
            )
            if span is not None:
                span.attributes["event_id"] = event_id
                id_attributes(event, span.attributes)
                tracer.finish(span)
                traceparent = span.traceparent  # the event's own span: its handling joins it
        self._events.append(
            {
                "event_id": event_id,
                "subject": subject,
                "payload": to_msgpack(event),
                "traceparent": traceparent,
                "created_at": time.time(),
                "caused_by": caused_by,
            }
        )

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction has committed; never if it rolls back.

        In a nested ``transaction()`` (a savepoint) that is when the outermost one
        commits, and never if the savepoint rolls back.
        ``callback`` must not raise: the transaction has committed already.
        """
        self._after_commit.append(callback)

    def _committed(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    async def _flush_outbox(self) -> bool:
        events = self._events
        if not events:
            return False
        key = self.db._outbox_turn
        if key is not None:
            # PostgreSQL: publishing transactions take turns from here to their commit,
            # so seq order is commit order (see the module's docstring).
            await self.run(_OUTBOX_TURN, {"key": key})
        await self.run_many(_OUTBOX_INSERT, events)
        events.clear()
        return True

    async def _control(self, sql: str) -> None:
        """Run a statement of Cleave's own (SAVEPOINT and the like) on this connection."""
        conn = self.connection
        if isinstance(conn, sa.Connection):
            self._sqlite(sql, ())
        else:
            await conn.exec_driver_sql(sql)


_OUTBOX_INSERT = Prepared(
    schema.outbox.insert()
    .inline()
    .values(
        event_id=sa.bindparam("event_id"),
        subject=sa.bindparam("subject"),
        payload=sa.bindparam("payload"),
        traceparent=sa.bindparam("traceparent"),
        created_at=sa.bindparam("created_at"),
        caused_by=sa.bindparam("caused_by"),
    )
)


#: Statements whose writes SQLite counts in ``total_changes`` (see _SqliteScope).
_COUNTED = (sa.Select, sa.CompoundSelect, sa.Insert, sa.Update, sa.Delete)

_OUTBOX_TURN = Prepared(
    sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))
)


class _Joined:
    """A ``read()`` inside a transaction: that transaction, ended by whoever opened it."""

    __slots__ = ("tx",)

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx

    async def __aenter__(self) -> Transaction:
        return self.tx

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class _Savepoint:
    """A ``transaction()`` inside an open one: a SAVEPOINT, so its failure undoes only itself.

    The inner transaction shares the outer one's connection, staged events and
    after-commit callbacks; on an exception it rolls back to the savepoint and
    drops the events and callbacks it added. The outermost transaction commits
    whatever the inner ones kept.
    """

    __slots__ = ("callbacks", "events", "name", "outer", "token", "tx")

    def __init__(self, outer: Transaction) -> None:
        self.outer = outer

    async def __aenter__(self) -> Transaction:
        outer = self.outer
        tx = self.tx = Transaction(outer.db, outer.connection, readonly=False)
        tx._driver = outer._driver
        # Shared lists: the outermost transaction writes and calls them all.
        tx._events = outer._events
        tx._after_commit = outer._after_commit
        tx._depth = outer._depth + 1
        self.name = f"cleave_savepoint_{tx._depth}"
        self.events = len(tx._events)
        self.callbacks = len(tx._after_commit)
        await tx._control(f"SAVEPOINT {self.name}")
        self.token = _ambient.set(tx)
        return tx

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        tx = self.tx
        tx.closed = True
        _ambient.reset(self.token)
        self.outer._opaque = self.outer._opaque or tx._opaque
        # Released on both paths: sibling savepoints never pile up in one transaction.
        if exc_type is None:
            await tx._control(f"RELEASE SAVEPOINT {self.name}")
            return
        del tx._events[self.events :]
        del tx._after_commit[self.callbacks :]
        try:
            await tx._control(f"ROLLBACK TO SAVEPOINT {self.name}")
            await tx._control(f"RELEASE SAVEPOINT {self.name}")
        except Exception:
            if issubclass(exc_type, Exception):
                raise  # the whole transaction is unusable: said here, the inner error chained
            # Cancelled: the cancellation goes on, and the outer transaction ends with it.


class _SqliteScope:
    """One SQLite transaction, on a connection the database keeps open between transactions.

    SQLAlchemy's pool checkout and its begin/commit events cost more than the
    transaction itself; the scope issues ``BEGIN``/``COMMIT`` on the driver
    and lets SQLAlchemy see the connection only when a statement runs.
    """

    __slots__ = ("changes", "db", "lock", "readonly", "slots", "token", "tx")

    def __init__(self, db: Database, *, readonly: bool) -> None:
        self.db = db
        self.readonly = readonly
        assert db._write_lock is not None
        assert db._slots is not None
        self.lock: asyncio.Lock = db._write_lock
        self.slots: asyncio.Semaphore = db._slots

    async def __aenter__(self) -> Transaction:
        db = self.db
        lock = self.lock
        slots = self.slots
        if not self.readonly:
            if db._group is not None:
                db._group.check()
            await lock.acquire()
        conn = None
        try:
            await slots.acquire()
            conn = db._connection()
            driver: Any = conn.connection.driver_connection
            if self.readonly:
                driver.execute("BEGIN")
            else:
                await _begin_immediate(driver)
                self.changes = driver.total_changes
        except BaseException:
            if conn is not None:
                db._release(conn)
                slots.release()
            if not self.readonly:
                lock.release()
            raise
        tx = self.tx = Transaction(db, conn, self.readonly)
        tx._driver = driver
        self.token = _ambient.set(tx)
        return tx

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        tx = self.tx
        db = self.db
        conn = tx.connection
        assert isinstance(conn, sa.Connection)
        wrote_events = False
        group = None if self.readonly else db._group
        try:
            if exc_type is None:
                try:
                    wrote_events = await tx._flush_outbox()
                    # Rows changed, or statements ran that SQLite does not count (through
                    # SQLAlchemy: any; prepared: DDL, PRAGMAs): the commit writes to the log.
                    # A transaction that only read syncs nothing of its own.
                    wrote = group is not None and (
                        tx._driver.total_changes != self.changes
                        or tx._opaque
                        or conn.in_transaction()
                    )
                    _end(conn, tx._driver, commit=True)
                except BaseException:
                    _end(conn, tx._driver, commit=False)
                    raise
                if not self.readonly:
                    if db._checkpointer is not None:
                        db._checkpointer.committed()
                    if group is not None and wrote:
                        group.committed()
            else:
                group = None
                _end(conn, tx._driver, commit=False)
        finally:
            tx.closed = True
            _ambient.reset(self.token)
            db._release(conn)
            self.slots.release()
            if not self.readonly:
                self.lock.release()
        if wrote_events:
            db._notify()
        if group is not None:
            # After the write lock is handed on: the next writers commit meanwhile and
            # share the next sync. Also when this one wrote nothing: it may have read
            # (and will act on) a commit whose sync is still running.
            await group.wait()
        if exc_type is None and tx._after_commit:
            tx._committed()


def _end(conn: sa.Connection, driver: Any, *, commit: bool) -> None:
    """Commit or roll back, through SQLAlchemy if a statement made it begin its transaction."""
    if conn.in_transaction():
        conn.commit() if commit else conn.rollback()
    elif driver.in_transaction:
        driver.commit() if commit else driver.rollback()


class Database:
    """A service's database: declaration on the class, bound and started per instance."""

    def __init__(
        self, metadata: sa.MetaData | None = None, *, migrations: str | Path | None = None
    ) -> None:
        self.metadata = metadata if metadata is not None else sa.MetaData()
        #: Alembic revisions for this database (see cleave.data.migrations); None: create_all.
        self.migrations = Path(migrations) if migrations is not None else None
        self.revision: str | None = None
        #: Upgrade to the newest revision on start; False: refuse a database behind it.
        self.migrate = True
        self.service = ""
        self.url = ""
        self.attr = "db"
        self._engine: AsyncEngine | None = None
        self._sync: sa.Engine | None = None
        self._write_lock: asyncio.Lock | None = None
        # SQLite transactions open at once in this process; more wait (asynchronously).
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[sa.Connection] = []  # SQLite connections between transactions
        self._checkpointer: Checkpointer | None = None  # SQLite files: checkpoints off the loop
        #: ``"full"``: a commit returns once on disk; ``"normal"``: survives a killed process only.
        self.synchronous = "full"
        self._group: GroupCommit | None = None  # SQLite under "full": syncs the log
        self._sqlite_pragma = "NORMAL"  # only a benchmark sets FULL, to compare
        self._outbox_turn: int | None = None  # PostgreSQL: the advisory lock publishers take
        self._event_subjects: dict[type, str] = {}
        self._committed_events: list[Callable[[], None]] = []

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    @overload
    def __get__(self, obj: None, owner: type) -> Database: ...
    @overload
    def __get__(self, obj: object, owner: type) -> Database: ...
    def __get__(self, obj: object | None, owner: type) -> Database:
        if obj is None:
            return self
        raise LifecycleError(
            f"{owner.__name__}.{self.attr} is not bound to a database: the service is not "
            "running in a Cleave host. In a unit test, use cleave.testing.build("
            f"{owner.__name__}) which gives it a fresh SQLite database"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(
        self,
        service: str,
        url: str,
        event_subjects: dict[type, str],
        *,
        synchronous: str = "full",
        migrate: bool = True,
    ) -> Database:
        """A copy of this declaration for one running service, not yet started.

        ``synchronous`` is ``[database] synchronous`` of cleave.toml: ``"full"``
        or ``"normal"`` (see the module's docstring). ``migrate`` is ``[database]
        migrate``: False checks the revision instead of upgrading (see
        :func:`cleave.data.migrations.check_sync`).
        """
        bound = Database(self.metadata, migrations=self.migrations)
        bound.migrate = migrate
        bound.attr = self.attr
        bound.service = service
        bound.url = url
        bound.synchronous = check_synchronous(synchronous)
        bound._event_subjects = event_subjects
        return bound

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def engine(self) -> AsyncEngine:
        """The async engine (PostgreSQL)."""
        if self._engine is None:
            raise LifecycleError(f"database of {self.service or 'an unbound service'} not started")
        return self._engine

    @property
    def started(self) -> bool:
        return self._engine is not None or self._sync is not None

    async def start(self) -> None:
        """Connect, and create the service's and Cleave's tables if missing."""
        if self.started:
            raise LifecycleError(f"database of {self.service} already started")
        if not self.url:
            raise LifecycleError("Database.start() on an unbound declaration; call bind() first")
        try:
            url = make_url(self.url)
        except sa.exc.ArgumentError:
            from cleave.config import mask_url  # the plan's module, which imports this package

            raise ConfigError(
                f"database URL of {self.service} is not valid: {mask_url(self.url)!r}"
            ) from None
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                raise ConfigError(
                    f"database URL of {self.service} is an in-memory SQLite ({self.url!r}): "
                    "every connection would see its own empty database; give a file, e.g. "
                    f"sqlite:///.cleave/data/{self.service or 'service'}.db"
                )
            self._sync = sqlite_engine(url, autocheckpoint=False, synchronous=self._sqlite_pragma)
            self._write_lock = asyncio.Lock()
            self._checkpointer = Checkpointer(Path(url.database), lock=self._write_lock)
            if self.synchronous == "full":
                self._group = GroupCommit(Path(url.database), service=self.service)
            self._slots = asyncio.Semaphore(SQLITE_MAX_OPEN)
        elif url.get_backend_name() == "postgresql":
            await _ensure_pg_database(url)
            self._engine = create_async_engine(url, pool_size=10, max_overflow=10)
            digest = hashlib.blake2b(f"cleave_outbox:{self.service}".encode(), digest_size=8)
            self._outbox_turn = int.from_bytes(digest.digest(), "big", signed=True)
        else:
            raise ConfigError(
                f"database URL of {self.service} uses {url.get_backend_name()!r}; Cleave supports "
                "sqlite:/// and postgresql+asyncpg://"
            )
        await self._create_schema()
        if self._group is not None:
            # A new database file must be on disk before its log counts: SQLite ignores
            # a log beside an empty database file. A checkpoint syncs the file.
            assert self._checkpointer is not None
            await self._checkpointer.now()
            await self._group.sync_folders()

    async def _create_schema(self) -> None:
        conflicts = set(self.metadata.tables) & set(schema.metadata.tables)
        if conflicts:
            raise DefinitionError(
                f"{self.service}: table names {sorted(conflicts)} are reserved for Cleave"
            )
        if self.migrations is not None and not self.migrations.is_absolute():
            raise DefinitionError(
                f"{self.service}: migrations={str(self.migrations)!r} must be an absolute path, "
                'e.g. Path(__file__).parent / "migrations" / "billing"'
            )
        # Replicas may start together: one write transaction each (BEGIN IMMEDIATE on
        # SQLite, an advisory lock for migrations on PostgreSQL) keeps them apart; a
        # race between "check" and "create" is retried.
        for attempt in range(5):
            try:
                if self._sync is not None:
                    async with self.transaction() as tx:
                        assert isinstance(tx.connection, sa.Connection)
                        self._schema(tx.connection)
                else:
                    async with self.engine.connect() as conn, conn.begin():
                        await conn.run_sync(self._schema)
                return
            except sa.exc.DBAPIError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    def _schema(self, connection: sa.Connection) -> None:
        schema.metadata.create_all(connection)
        schema.upgrade(connection)
        if self.migrations is not None:
            from cleave.data.migrations import check_sync, upgrade_sync

            if self.migrate:
                self.revision = upgrade_sync(connection, self.migrations, self.metadata)
            else:
                self.revision = check_sync(connection, self.migrations, self.service)
        else:
            self.metadata.create_all(connection)

    async def stop(self) -> None:
        if self._group is not None:
            await self._group.close()
            self._group = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._checkpointer is not None:
            await self._checkpointer.close()
            self._checkpointer = None
        if self._sync is not None:
            while self._idle:
                self._idle.pop().close()
            self._sync.dispose()
            self._sync = None

    # -- transactions ------------------------------------------------------------------------

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: commits when the block ends, rolls back on an exception.

        Inside an open write transaction of this database, a savepoint of it.
        """
        outer = _ambient.get()
        if outer is not None and outer.db is self and not outer.closed and not outer.readonly:
            return _Savepoint(outer)
        if self._sync is not None:
            return _SqliteScope(self, readonly=False)
        return self._open_pg(readonly=False)

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """A read-only transaction: a consistent snapshot, never blocks writers on SQLite."""
        outer = _ambient.get()
        if outer is not None and outer.db is self and not outer.closed:
            return _Joined(outer)
        if self._sync is not None:
            return _SqliteScope(self, readonly=True)
        return self._open_pg(readonly=True)

    @asynccontextmanager
    async def _open_pg(self, readonly: bool) -> AsyncIterator[Transaction]:
        conn = await self.engine.connect()
        try:
            if not readonly:
                await conn.execution_options(cleave_write=True)
            await conn.begin()
            tx = Transaction(self, conn, readonly)
            token = _ambient.set(tx)
            try:
                yield tx
                wrote_events = await tx._flush_outbox()
                await conn.commit()
            except BaseException:
                tx.closed = True
                await conn.rollback()
                raise
            finally:
                tx.closed = True
                _ambient.reset(token)
        finally:
            await conn.close()
        if wrote_events:
            self._notify()
        if tx._after_commit:
            tx._committed()

    async def durable(self) -> None:
        """Return once every transaction committed so far is on disk.

        Cheap when nothing is waiting for a sync; a no-op on PostgreSQL and
        under ``synchronous = "normal"``. Await it before acting outside the
        database on rows a read-only transaction saw (the outbox relay does).
        """
        group = self._group
        if group is not None:
            await group.wait()

    def _connection(self) -> sa.Connection:
        """An open SQLite connection, from those kept between transactions."""
        if self._idle:
            return self._idle.pop()
        assert self._sync is not None
        return self._sync.connect()

    def _release(self, conn: sa.Connection) -> None:
        if conn.invalidated or conn.closed or len(self._idle) >= 8 or self._sync is None:
            conn.close()
        else:
            self._idle.append(conn)

    def _notify(self) -> None:
        for notify in self._committed_events:
            notify()

    # -- outbox plumbing ---------------------------------------------------------------------

    def event_subject(self, event_type: type) -> str:
        subject = self._event_subjects.get(event_type)
        if subject is None:
            raise DefinitionError(
                f"{self.service} publishes {event_type.__name__}, which its contract does not "
                f"declare; add it to @cleave.contract({self.service!r}, events=[...])"
            )
        return subject

    def on_events_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every commit that wrote outbox rows (wakes the relay)."""
        self._committed_events.append(callback)


#: How long a write transaction waits for another process's write lock.
LOCK_WAIT = 30.0
#: SQLite transactions one process keeps open on one database at once; more wait their turn.
SQLITE_MAX_OPEN = 64


def sqlite_engine(
    url: sa.URL | str, *, autocheckpoint: bool = True, synchronous: str = "NORMAL"
) -> sa.Engine:
    """A SQLite engine used from the event loop's thread (``sqlite+aiosqlite`` accepted).

    ``autocheckpoint=False`` leaves checkpoints to a :class:`Checkpointer`;
    ``synchronous`` is SQLite's pragma (a :class:`GroupCommit` makes commits durable).
    """
    url = make_url(url).set(drivername="sqlite")
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    # Never a blocking wait for a connection on the loop's thread: the pool may
    # overflow without limit; Database bounds its transactions with a semaphore.
    engine = sa.create_engine(url, pool_size=8, max_overflow=-1)

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over BEGIN from the driver, so write transactions can say IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        # Short: a lock held by another process is waited for by _begin_immediate,
        # asynchronously, never by blocking the event loop.
        cursor.execute("PRAGMA busy_timeout=20")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        driver: Any = conn.connection.driver_connection
        if driver.in_transaction:
            return  # begun by the transaction's scope (_SqliteScope)
        write = conn.get_execution_options().get("cleave_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


async def _begin_immediate(driver: Any) -> None:
    """Take SQLite's write lock, waiting (without blocking the loop) while another holds it."""
    deadline = time.monotonic() + LOCK_WAIT
    pause = 0.001
    while True:
        try:
            driver.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise sa.exc.OperationalError("BEGIN IMMEDIATE", (), exc) from exc
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


async def _ensure_pg_database(url: sa.URL) -> None:
    """Create the service's PostgreSQL database if it does not exist yet."""
    name = url.database
    if not name:
        raise ConfigError(f"PostgreSQL URL {url.render_as_string()!r} names no database")
    admin = create_async_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", pool_size=1
    )
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            )
            if not exists:
                try:
                    await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                except sa.exc.DBAPIError:
                    # A replica starting at the same moment may have created it first.
                    created = await conn.scalar(
                        sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                    )
                    if not created:
                        raise
    except OSError as exc:
        raise ConfigError(
            f"cannot reach PostgreSQL at {url.host}:{url.port or 5432} ({exc}); start it or fix "
            "the database URL in cleave.toml"
        ) from exc
    finally:
        await admin.dispose()
