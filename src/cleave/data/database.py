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

Transactions nest by joining: inside an open transaction of the same database
(yours, or one the framework opened around an event handler or an idempotent
method), ``transaction()`` returns that one and does not commit on exit, so
the whole unit commits once, with its inbox or idempotency record.

SQLite runs on the event loop's own thread: its statements take microseconds
(WAL journal, ``synchronous=NORMAL``: a commit writes without waiting for the
disk, and a committed transaction still survives a killed process), far less
than handing each one to a thread and back, as an async driver must. Write
transactions start with ``BEGIN IMMEDIATE``, one at a time per process (an
asyncio lock); a replica in another process holding the write lock is waited
for with ``await asyncio.sleep`` between tries, never by blocking the loop.
PostgreSQL runs on asyncpg.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cleave.data import schema
from cleave.errors import ConfigError, DefinitionError, LifecycleError
from cleave.messages import to_msgpack
from cleave.observability.tracing import PRODUCER, id_attributes, tracer

if TYPE_CHECKING:
    from cleave.messages import Event

__all__ = ["Database", "Transaction", "default_url", "sqlite_engine"]

_ambient: ContextVar[Transaction | None] = ContextVar("cleave_tx", default=None)


def default_url(data_dir: Path, service: str) -> str:
    """The SQLite file a service uses when cleave.toml gives no URL."""
    return f"sqlite:///{data_dir / f'{service}.db'}"


class Transaction:
    """An open transaction on a service's database.

    ``execute`` runs SQLAlchemy statements; ``publish`` stages an event that
    is written to the outbox in the same commit.
    """

    __slots__ = ("_events", "closed", "connection", "db", "readonly")

    def __init__(
        self, db: Database, connection: sa.Connection | AsyncConnection, readonly: bool
    ) -> None:
        self.db = db
        #: The SQLAlchemy connection: a plain one for SQLite, an async one for PostgreSQL.
        self.connection = connection
        self.readonly = readonly
        self.closed = False
        self._events: list[dict[str, Any]] = []

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

    def publish(self, event: Event) -> None:
        """Stage ``event`` for the outbox; it is written when this transaction commits."""
        if self.readonly:
            raise LifecycleError("cannot publish from a read-only transaction; use transaction()")
        subject = self.db.event_subject(type(event))
        from cleave import context  # local: keeps the data layer import-light

        ctx = context.current()
        event_id = os.urandom(12).hex()
        traceparent = ctx.traceparent if ctx is not None else ""
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
            }
        )

    async def _flush_outbox(self) -> bool:
        if not self._events:
            return False
        await self.execute(schema.outbox.insert(), self._events)
        self._events = []
        return True


class Database:
    """A service's database: declaration on the class, bound and started per instance."""

    def __init__(
        self, metadata: sa.MetaData | None = None, *, migrations: str | Path | None = None
    ) -> None:
        self.metadata = metadata if metadata is not None else sa.MetaData()
        #: Alembic revisions for this database (see cleave.data.migrations); None: create_all.
        self.migrations = Path(migrations) if migrations is not None else None
        self.revision: str | None = None
        self.service = ""
        self.url = ""
        self.attr = "db"
        self._engine: AsyncEngine | None = None
        self._sync: sa.Engine | None = None
        self._write_lock: asyncio.Lock | None = None
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

    def bind(self, service: str, url: str, event_subjects: dict[type, str]) -> Database:
        """A copy of this declaration for one running service, not yet started."""
        bound = Database(self.metadata, migrations=self.migrations)
        bound.attr = self.attr
        bound.service = service
        bound.url = url
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
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"database URL of {self.service} is not valid: {self.url!r}") from exc
        if url.get_backend_name() == "sqlite":
            self._sync = sqlite_engine(url)
            self._write_lock = asyncio.Lock()
        elif url.get_backend_name() == "postgresql":
            await _ensure_pg_database(url)
            self._engine = create_async_engine(url, pool_size=10, max_overflow=10)
        else:
            raise ConfigError(
                f"database URL of {self.service} uses {url.get_backend_name()!r}; Cleave supports "
                "sqlite:/// and postgresql+asyncpg://"
            )
        await self._create_schema()

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
                    async with self._open(readonly=False) as tx:
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
        if self.migrations is not None:
            from cleave.data.migrations import upgrade_sync

            self.revision = upgrade_sync(connection, self.migrations, self.metadata)
        else:
            self.metadata.create_all(connection)

    async def stop(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._sync is not None:
            self._sync.dispose()
            self._sync = None

    # -- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A write transaction: commits when the block ends, rolls back on an exception."""
        outer = _ambient.get()
        if outer is not None and outer.db is self and not outer.closed and not outer.readonly:
            yield outer
            return
        if self._write_lock is not None:
            async with self._write_lock, self._open(readonly=False) as tx:
                yield tx
        else:
            async with self._open(readonly=False) as tx:
                yield tx

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Transaction]:
        """A read-only transaction: a consistent snapshot, never blocks writers on SQLite."""
        outer = _ambient.get()
        if outer is not None and outer.db is self and not outer.closed:
            yield outer
            return
        async with self._open(readonly=True) as tx:
            yield tx

    @asynccontextmanager
    async def _open(self, readonly: bool) -> AsyncIterator[Transaction]:
        if self._sync is not None:
            async with self._open_sqlite(readonly) as tx:
                yield tx
            return
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

    @asynccontextmanager
    async def _open_sqlite(self, readonly: bool) -> AsyncIterator[Transaction]:
        assert self._sync is not None
        conn = self._sync.connect()
        try:
            if readonly:
                conn.begin()
            else:
                await _begin_immediate(conn, self.service)
            tx = Transaction(self, conn, readonly)
            token = _ambient.set(tx)
            try:
                yield tx
                wrote_events = await tx._flush_outbox()
                conn.commit()
            except BaseException:
                tx.closed = True
                conn.rollback()
                raise
            finally:
                tx.closed = True
                _ambient.reset(token)
        finally:
            conn.close()
        if wrote_events:
            self._notify()

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


def sqlite_engine(url: sa.URL | str) -> sa.Engine:
    """A SQLite engine used from the event loop's thread (``sqlite+aiosqlite`` accepted)."""
    url = make_url(url).set(drivername="sqlite")
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, pool_size=8, max_overflow=8)

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over BEGIN from the driver, so write transactions can say IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Short: a lock held by another process is waited for by _begin_immediate,
        # asynchronously, never by blocking the event loop.
        cursor.execute("PRAGMA busy_timeout=20")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("cleave_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


async def _begin_immediate(conn: sa.Connection, service: str) -> None:
    """Take SQLite's write lock, waiting (without blocking the loop) while another holds it."""
    conn.execution_options(cleave_write=True)
    deadline = time.monotonic() + LOCK_WAIT
    pause = 0.001
    while True:
        try:
            conn.begin()
            return
        except sa.exc.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            conn.rollback()
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
