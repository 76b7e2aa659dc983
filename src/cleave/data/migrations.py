"""Schema migrations per service, with Alembic.

A service that declares ``cleave.Database(metadata, migrations=folder)`` gets
its schema from Alembic revisions in ``folder`` instead of ``create_all``:
on start, its database is upgraded to the newest revision, in one
transaction, while replicas starting at the same moment wait their turn
(SQLite's write lock; a PostgreSQL advisory lock). Each service has its own
revisions and its own ``alembic_version`` table, in its own database.

The workflow a service author follows::

    cleave db revision examples/shop billing -m "add currency"   # autogenerate from metadata
    # ... read and edit billing's new file in its migrations folder ...
    cleave db upgrade examples/shop                              # or just start the app
    cleave db current examples/shop                              # revision of every service

``revision`` compares the service's ``metadata`` with a scratch SQLite
database upgraded to the newest revision, so it needs no running database;
the first revision creates the tables. No ``env.py`` is needed: Cleave
drives Alembic itself. Cleave's own tables (``cleave_*``) are created by
Cleave and never appear in your revisions.
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from alembic import autogenerate
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine

from cleave.errors import ConfigError

__all__ = ["check_sync", "current", "init", "newest", "revision", "upgrade", "upgrade_sync"]

log = structlog.get_logger("cleave.migrations")

_TEMPLATE = '''"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""
from collections.abc import Sequence

import sqlalchemy as sa
import structlog
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
'''


def _ours(name: str | None, type_: str, parent: Any) -> bool:
    """Leave Cleave's own tables out of a service's revisions."""
    return not (type_ == "table" and name is not None and name.startswith("cleave_"))


def _config(folder: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(folder))
    return cfg


def _script(folder: Path) -> ScriptDirectory:
    if not (folder / "script.py.mako").exists():
        raise ConfigError(
            f"{folder} is not a migrations folder; create it with `cleave db revision`"
        )
    return ScriptDirectory.from_config(_config(folder))


def init(folder: Path) -> None:
    """Make ``folder`` an (empty) migrations folder if it is not one yet."""
    (folder / "versions").mkdir(parents=True, exist_ok=True)
    template = folder / "script.py.mako"
    if not template.exists():
        template.write_text(_TEMPLATE)


def upgrade_sync(connection: sa.Connection, folder: Path, metadata: sa.MetaData) -> str | None:
    """Upgrade the database behind ``connection`` to the newest revision in ``folder``.

    Runs inside the connection's transaction; returns the revision reached.
    """
    script = _script(folder)
    if connection.dialect.name == "postgresql":
        # One replica migrates; the others wait here, then find nothing to do.
        lock = zlib.crc32(str(folder).encode()) & 0x7FFFFFFF
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})

    def steps(rev: Any, _context: Any) -> Any:
        return script._upgrade_revs("head", rev)

    context = MigrationContext.configure(
        connection=connection,
        opts={"target_metadata": metadata, "fn": steps, "include_object": _include},
    )
    with Operations.context(context):
        context.run_migrations()
    return context.get_current_revision()


def check_sync(connection: sa.Connection, folder: Path, service: str) -> str | None:
    """The revision of the database behind ``connection``, refused if behind ``folder``'s newest.

    For workers started with migrations off (``[database] migrate = false``):
    the schema is migrated as a step of its own (``cleave db upgrade``), and
    code must never run on a schema older than it expects.

    A revision the folder does not know is taken as newer code's: it is
    served, with a warning. That is what a rolling deploy needs: the new
    code's migration runs first, and while the old replicas drain they still
    serve the (expanded, backwards-compatible) schema; refusing them would
    turn every deploy into an outage. Migrations that break older code must
    wait until no older replica runs (expand, deploy, then contract).
    """
    script = _script(folder)
    head = script.get_current_head()
    current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return current
    known = {rev.revision for rev in script.walk_revisions()}
    if current is None or current in known:
        at = f"revision {current}" if current else "no revision (never migrated)"
        raise ConfigError(
            f"{service}: its database is at {at}, behind this code's newest revision {head}, "
            "and migrations on start are off ([database] migrate = false, or --no-migrate); "
            f"run `cleave db upgrade APP --service {service}` first"
        )
    log.warning(
        "database is ahead of this code; serving it (a newer version migrated it)",
        service=service,
        revision=current,
        newest_known=head,
    )
    return current


def _include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return _ours(name, type_, None)


async def _with_connection(url: str, fn: Any) -> Any:
    if url.startswith("sqlite"):
        from cleave.data.database import sqlite_engine

        sync = sqlite_engine(url)
        try:
            with sync.connect() as conn:
                conn.execution_options(cleave_write=True)
                with conn.begin():
                    return fn(conn)
        finally:
            sync.dispose()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def upgrade(url: str, folder: Path, metadata: sa.MetaData) -> str | None:
    """Upgrade the database at ``url``; return the revision it is at."""
    return await _with_connection(url, lambda c: upgrade_sync(c, folder, metadata))  # type: ignore[no-any-return]


async def current(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: not under migrations)."""

    def read(connection: sa.Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    return await _with_connection(url, read)  # type: ignore[no-any-return]


def newest(folder: Path) -> str | None:
    """The newest revision in ``folder``."""
    return _script(folder).get_current_head()


async def revision(folder: Path, metadata: sa.MetaData, message: str) -> Path | None:
    """Write a new revision with what ``metadata`` adds to the newest revision.

    Returns the new file, or None if there is nothing to migrate.
    """
    init(folder)
    cfg = _config(folder)
    script = ScriptDirectory.from_config(cfg)
    command_args = {
        "message": message,
        "autogenerate": True,
        "sql": False,
        "head": "head",
        "splice": False,
        "branch_label": None,
        "version_path": None,
        "rev_id": None,
        "depends_on": None,
    }
    revision_context = autogenerate.RevisionContext(cfg, script, command_args)
    empty: list[bool] = []

    def autogen(rev: Any, context: Any) -> Any:
        revision_context.run_autogenerate(rev, context)
        ops = revision_context.generated_revisions[-1].upgrade_ops
        empty.append(ops is None or ops.is_empty())
        return []

    with tempfile.TemporaryDirectory(prefix="cleave-migrate-") as tmp:
        url = f"sqlite:///{tmp}/scratch.db"
        await upgrade(url, folder, sa.MetaData())

        def run(connection: sa.Connection) -> None:
            with EnvironmentContext(
                cfg,
                script,
                fn=autogen,
                as_sql=False,
                template_args=revision_context.template_args,
                revision_context=revision_context,
            ) as env:
                env.configure(
                    connection=connection,
                    target_metadata=metadata,
                    include_object=_include,
                    render_as_batch=True,
                )
                with env.begin_transaction():
                    env.run_migrations()

        await _with_connection(url, run)
    if empty and empty[-1]:
        return None
    scripts = [s for s in revision_context.generate_scripts() if s is not None]
    return Path(scripts[-1].path) if scripts else None
