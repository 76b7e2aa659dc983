"""Per-service schema migrations with Alembic, driven by Cleave."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

import cleave
from cleave.data import migrations
from cleave.data.database import Database
from conftest import SHOP, cli


def users(version: int) -> sa.MetaData:
    meta = sa.MetaData()
    columns = [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20), nullable=False),
    ]
    if version >= 2:
        columns.append(sa.Column("email", sa.String(50), nullable=True))
    sa.Table("users", meta, *columns)
    return meta


async def start(folder: Path, meta: sa.MetaData, url: str) -> Database:
    db = Database(meta, migrations=folder).bind("users", url, {})
    await db.start()
    return db


async def test_revisions_are_generated_applied_and_keep_data(tmp_path: Path) -> None:
    folder = tmp_path / "migrations" / "users"
    url = f"sqlite:///{tmp_path / 'users.db'}"
    first = await migrations.revision(folder, users(1), "create users")
    assert first is not None
    assert "op.create_table(" in first.read_text()
    assert "cleave_" not in first.read_text()  # Cleave's own tables are not yours to migrate
    assert await migrations.revision(folder, users(1), "again") is None

    db = await start(folder, users(1), url)
    assert db.revision == migrations.newest(folder)
    async with db.transaction() as tx:
        await tx.execute(sa.text("INSERT INTO users (id, name) VALUES (1, 'ann')"))
    await db.stop()

    second = await migrations.revision(folder, users(2), "add email")
    assert second is not None
    assert "add_column" in second.read_text()
    db = await start(folder, users(2), url)
    async with db.read() as tx:
        rows = (await tx.execute(sa.text("SELECT id, name, email FROM users"))).all()
    await db.stop()
    assert rows == [(1, "ann", None)]
    assert await migrations.current(url) == migrations.newest(folder)


async def test_replicas_starting_together_migrate_once(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    await migrations.revision(folder, users(2), "create")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    dbs = await asyncio.gather(*(start(folder, users(2), url) for _ in range(4)))
    assert {db.revision for db in dbs} == {migrations.newest(folder)}
    for db in dbs:
        await db.stop()


@pytest.mark.postgres
async def test_postgres_replicas_starting_together(tmp_path: Path) -> None:
    from conftest import PostgresDatabases

    folder = tmp_path / "m"
    await migrations.revision(folder, users(2), "create")
    pg = PostgresDatabases()
    url = pg.url.replace("{service}", "users")
    try:
        dbs = await asyncio.gather(*(start(folder, users(2), url) for _ in range(3)))
        assert {db.revision for db in dbs} == {migrations.newest(folder)}
        for db in dbs:
            await db.stop()
    finally:
        await asyncio.to_thread(pg.drop)


async def test_mistakes_are_explained(tmp_path: Path) -> None:
    with pytest.raises(cleave.DefinitionError, match="must be an absolute path"):
        await (
            Database(users(1), migrations="relative/path")
            .bind("users", f"sqlite:///{tmp_path / 'x.db'}", {})
            .start()
        )
    with pytest.raises(cleave.ConfigError, match="is not a migrations folder"):
        migrations.newest(tmp_path)


def test_the_db_commands(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path)]
    out = cli("db", "current", SHOP, *state).stdout
    assert "no database yet" in out
    out = cli("db", "upgrade", SHOP, *state).stdout
    for service in ("catalog", "inventory", "orders", "billing", "shipping", "notifications"):
        assert f"{service}: at " in out
    out = cli("db", "current", SHOP, *state).stdout
    assert "no database yet" not in out
    result = cli("db", "revision", "orders", SHOP, "-m", "nothing new", *state)
    assert "nothing to do" in result.stdout
    missing = cli("db", "revision", "ghost", SHOP, *state, check=False)
    assert missing.returncode == 2
    assert "has no service 'ghost'" in missing.stderr
