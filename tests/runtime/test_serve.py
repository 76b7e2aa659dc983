"""The pieces of `cleave serve` that need no process: its rules, its checks, its parsing.

The processes themselves are tested in tests/system/test_served.py.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa
import typer
from structlog.testing import capture_logs

from cleave._serve_cli import _duration
from cleave.app import load
from cleave.config import ServiceSettings
from cleave.data import migrations
from cleave.data.database import sqlite_engine
from cleave.errors import ConfigError, LifecycleError
from cleave.runtime.guard import Guard
from cleave.runtime.serve import _masked, check_placement, nats_url, wait_for_nats
from cleave.transport.nats import servers
from conftest import ROOT, SHOP


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("1.5m", 90.0), ("500ms", 0.5), ("0", 0.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert _duration(text, "--grace") == seconds


@pytest.mark.parametrize("text", ["soon", "-1s", "10x", ""])
def test_a_bad_duration_is_a_one_line_error(text: str) -> None:
    with pytest.raises(typer.BadParameter, match=r"is not a duration; give e\.g\. 30s"):
        _duration(text, "--grace")


def test_several_nats_urls_are_a_cluster() -> None:
    assert servers("nats://a:4222, nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]
    assert servers("tls://a:4222") == ["tls://a:4222"]
    masked = _masked("nats://u:p@a:4222,nats://v:q@b:4222")
    assert masked == "nats://u:***@a:4222,nats://v:***@b:4222"


def test_the_nats_url_comes_from_the_environment_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load(SHOP, state_dir=tmp_path)
    monkeypatch.delenv("CLEAVE_NATS_URL", raising=False)
    with pytest.raises(ConfigError, match="set CLEAVE_NATS_URL=nats://host:4222"):
        nats_url(loaded)
    loaded.plan = msgspec.structs.replace(
        loaded.plan, nats=msgspec.structs.replace(loaded.plan.nats, url="nats://plan:4222")
    )
    assert nats_url(loaded) == "nats://plan:4222"
    monkeypatch.setenv("CLEAVE_NATS_URL", "nats://env:4222")
    assert nats_url(loaded) == "nats://env:4222"


def _with_billing(loaded: object, **settings: object) -> None:
    plan = loaded.plan  # type: ignore[attr-defined]
    services = {**plan.services, "billing": ServiceSettings(**settings)}  # type: ignore[arg-type]
    loaded.plan = msgspec.structs.replace(plan, services=services)  # type: ignore[attr-defined]


def test_sqlite_is_refused_for_a_group_that_may_run_several_replicas(tmp_path: Path) -> None:
    loaded = load(SHOP, state_dir=tmp_path)
    check_placement(loaded, "billing", 0)  # one replica: its file is local to it
    with pytest.raises(ConfigError, match=r"billing keeps its data in SQLite .*\(--replica 1\)"):
        check_placement(loaded, "billing", 1)
    _with_billing(loaded, replicas=3)
    with pytest.raises(ConfigError, match="billing keeps its data in SQLite") as info:
        check_placement(loaded, "billing", 0)
    assert "(3 replicas in cleave.toml)" in str(info.value)
    assert '[services.billing] database = "postgresql+asyncpg://' in str(info.value)
    _with_billing(loaded, replicas=3, database="postgresql+asyncpg://u@db/billing")
    check_placement(loaded, "billing", 2)  # PostgreSQL: any number, anywhere


async def test_waiting_for_nats_gives_up_after_the_total(tmp_path: Path) -> None:
    from cleave.runtime.natsd import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    with capture_logs() as logs, pytest.raises(LifecycleError, match="did not answer within 1s"):
        await wait_for_nats(url, "test", {"tls": None}, total=1.0, stop=asyncio.Event())
    tries = [e for e in logs if e["event"] == "waiting for NATS"]
    assert tries
    assert all("Connect call failed" in e["error"] for e in tries)


async def test_waiting_for_nats_stops_on_a_signal() -> None:
    from cleave.runtime.natsd import free_port

    stop = asyncio.Event()
    stop.set()
    url = f"nats://127.0.0.1:{free_port()}"
    assert await wait_for_nats(url, "test", {"tls": None}, total=60.0, stop=stop) is None


async def test_waiting_for_nats_connects_to_a_cluster_member_that_answers(nats_url: str) -> None:
    from cleave.runtime.natsd import free_port

    url = f"nats://127.0.0.1:{free_port()},{nats_url}"
    nc = await wait_for_nats(url, "test", {"tls": None}, total=30.0, stop=asyncio.Event())
    assert nc is not None
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
        assert nc.connected_url.port == int(nats_url.rsplit(":", 1)[1])
    finally:
        await nc.close()


@pytest.fixture
def guarded_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server that wants user u, password p; its address (host:port)."""
    from cleave.runtime.natsd import EmbeddedNats

    authorization = 'authorization: { user: "u", password: "p" }\n'
    server = EmbeddedNats(tmp_path / "nats", name="cleave_guarded", authorization=authorization)
    server.launch()
    try:
        yield server.url.removeprefix("nats://")
    finally:
        server.shutdown()


async def test_refused_credentials_stop_the_wait_at_once(guarded_nats: str) -> None:
    url = f"nats://u:wrong@{guarded_nats}"
    started = time.monotonic()
    with pytest.raises(ConfigError, match="refused this process's credentials") as info:
        await wait_for_nats(url, "test", {"tls": None}, total=60.0, stop=asyncio.Event())
    assert time.monotonic() - started < 30  # not retried until the 60 s are up
    assert "wrong" not in str(info.value)  # the URL is shown masked


async def test_credentials_in_the_url_are_used(guarded_nats: str) -> None:
    nc = await wait_for_nats(
        f"nats://u:p@{guarded_nats}", "test", {"tls": None}, total=30.0, stop=asyncio.Event()
    )
    assert nc is not None
    await nc.close()


def _billing_db(tmp_path: Path, folder: Path) -> tuple[str, str]:
    """A SQLite database at billing's newest revision in ``folder``; (url, that revision)."""
    from shop.services.billing import BillingService

    url = f"sqlite:///{tmp_path / 'billing.db'}"
    rev = asyncio.run(migrations.upgrade(url, folder, BillingService.db.metadata))
    assert rev is not None
    return url, rev


def _check(url: str, folder: Path) -> str | None:
    engine = sqlite_engine(url)
    try:
        with engine.connect() as conn:
            return migrations.check_sync(conn, folder, "billing")
    finally:
        engine.dispose()


def _copy_migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(SHOP / "shop" / "migrations" / "billing", folder)
    return folder


def _add_revision(folder: Path, down: str) -> None:
    (folder / "versions" / "feedc0de0002_more.py").write_text(
        f'revision = "feedc0de0002"\ndown_revision = "{down}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )


def test_migrations_off_serve_a_database_at_the_newest_revision(tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path)
    url, rev = _billing_db(tmp_path, folder)
    assert _check(url, folder) == rev


def test_migrations_off_refuse_a_database_behind_the_code(tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path)
    url, rev = _billing_db(tmp_path, folder)
    _add_revision(folder, rev)
    with pytest.raises(ConfigError) as info:
        _check(url, folder)
    assert str(info.value) == (
        f"billing: its database is at revision {rev}, behind this code's newest revision "
        "feedc0de0002, and migrations on start are off ([database] migrate = false, or "
        "--no-migrate); run `cleave db upgrade APP --service billing` first"
    )


def test_migrations_off_refuse_a_database_never_migrated(tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(url).dispose()
    with pytest.raises(ConfigError, match=r"at no revision \(never migrated\), behind"):
        _check(url, folder)


def test_migrations_off_serve_a_database_ahead_with_a_warning(tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path)
    url, rev = _billing_db(tmp_path, folder)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'newer0000001'"))
    engine.dispose()
    with capture_logs() as logs:
        assert _check(url, folder) == "newer0000001"
    assert logs[0]["event"].startswith("database is ahead of this code; serving it")
    assert logs[0]["newest_known"] == rev


def test_an_admin_port_open_to_probes_takes_any_host_but_changes_still_need_the_token() -> None:
    from starlette.datastructures import Headers

    local = Guard(lambda *a: None, "tok")  # type: ignore[arg-type,return-value]
    probed = Guard(lambda *a: None, "tok", ["*"])  # type: ignore[arg-type,return-value]
    pod = Headers({"host": "10.1.2.3:9000"})
    assert local.problem("GET", pod) is not None
    assert probed.problem("GET", pod) is None
    post = Headers({"host": "10.1.2.3:9000", "content-type": "application/json"})
    refused = probed.problem("POST", post)
    assert refused is not None
    assert refused[0] == 401


def test_an_unknown_group_names_the_groups(tmp_path: Path) -> None:
    from cleave.runtime.worker import Worker

    with pytest.raises(ConfigError) as info:
        Worker(load(SHOP, state_dir=tmp_path), role="service", group="payments")
    assert str(info.value) == (
        "app shop has no group 'payments'; its groups: catalog, inventory, orders, billing, "
        "shipping, notifications (cleave.toml [groups]; a service in none is a group of its own)"
    )


def test_the_gateway_of_an_app_without_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cleave
    from cleave.app import LoadedApp
    from cleave.config import Plan
    from cleave.runtime.worker import Worker

    monkeypatch.syspath_prepend(str(ROOT / "tests" / "apps" / "drain"))
    from drain_app import SlowService

    quiet = cleave.App("quiet", services=[SlowService])
    with pytest.raises(ConfigError, match="app quiet has no gateway"):
        Worker(LoadedApp(quiet, tmp_path, Plan(), tmp_path), role="gateway")
