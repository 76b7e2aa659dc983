"""Shared fixtures: the sample app, a real nats-server, fresh state folders."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# Cleave's pytest plugin: registered by entry point when Cleave is installed, and by name
# here for runs from the source tree (the same name: pytest loads it once).
pytest_plugins = ["cleave_pytest"]

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "apps" / "sample"
SHOP = ROOT / "examples" / "shop"

for folder in (SAMPLE, SHOP):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(autouse=True)
def _reset_sample_counters() -> None:
    import sample_app

    sample_app.GreeterService.executions = 0
    sample_app.GreeterService.seen = {}
    sample_app.AuditService.failures_left = 0


@pytest.fixture(scope="session")
def nats_url(cleave_nats_url: str) -> str:
    """A real nats-server with JetStream (fsync always), on a free loopback port.

    The plugin's server: tests that use either name share one.
    """
    return cleave_nats_url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[object]:
    from cleave.transport.nats import connect

    conn = await connect(nats_url, "test")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of one database for several replicas: a SQLite file, or a new PostgreSQL one."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from cleave.data.database import default_url

    if request.param == "sqlite":
        yield default_url(tmp_path, "shared")
        return
    name = f"cleave_shared_{os.urandom(4).hex()}"
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    admin = create_async_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CLEAVE_REQUIRE_POSTGRES"):
        return
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=0.5).close()
        return
    except OSError:
        pass
    skip = pytest.mark.skip(reason="PostgreSQL is not running on 127.0.0.1:5432")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cleave_app() -> Any:
    """The app the plugin's ``cleave_harness`` runs: the sample app, unless a test overrides it."""
    import sample_app

    return sample_app.app


@pytest.fixture
def placed(cleave_harness: Any) -> Any:
    """The sample app in each placement (the plugin's harness): one test body, both placements."""
    return cleave_harness


# -- real processes --------------------------------------------------------------------------


def cli(
    *args: object, check: bool = True, timeout: float = 180, env: dict[str, str] | None = None
) -> Any:
    """Run the `cleave` command in a subprocess."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "cleave.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"cleave {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def processes_of(state_dir: Path) -> list[int]:
    """Pids of live processes whose command line mentions ``state_dir``."""
    pids = []
    marker = str(state_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z":
            pids.append(int(entry.name))
    return pids


def wait_until(condition: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s: {condition}")
        time.sleep(interval)


class Up:
    """A `cleave up --detach` of an app, for one test module."""

    def __init__(self, app_dir: Path, state_dir: Path, env: dict[str, str] | None = None) -> None:
        from cleave.runtime.natsd import free_port

        self.app_dir = app_dir
        self.state_dir = state_dir
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Up:
        cli(
            "up",
            self.app_dir,
            "--detach",
            "--port",
            self.port,
            "--state-dir",
            self.state_dir,
            env=self.env,
        )
        return self

    def ps(self) -> list[dict[str, Any]]:
        import json

        out = cli("ps", self.app_dir, "--json", "--state-dir", self.state_dir).stdout
        rows: list[dict[str, Any]] = json.loads(out)
        return rows

    def stop(self) -> None:
        cli("down", self.app_dir, "--state-dir", self.state_dir)


class Run:
    """A `cleave run` (the monolith) of an app in a subprocess."""

    def __init__(self, app_dir: Path, state_dir: Path, env: dict[str, str] | None = None) -> None:
        from cleave.runtime.natsd import free_port

        self.app_dir = app_dir
        self.state_dir = state_dir
        self.env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Any = None

    def start(self) -> Run:
        import subprocess
        import urllib.request

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cleave.cli",
                "run",
                str(self.app_dir),
                "--port",
                str(self.port),
                "--admin-port",
                "0",
                "--state-dir",
                str(self.state_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"cleave run exited: {self.proc.stdout.read().decode()}")
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(up, timeout=60)
        return self

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)


class PostgresDatabases:
    """Per-service PostgreSQL databases for one test run, dropped afterwards."""

    def __init__(self) -> None:
        self.prefix = f"cleave_t{os.urandom(3).hex()}"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.prefix}_{{service}}"

    @property
    def env(self) -> dict[str, str]:
        return {"CLEAVE_DATABASE_URL": self.url}

    def drop(self) -> None:
        import asyncio

        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        async def go() -> None:
            engine = create_async_engine(
                "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                isolation_level="AUTOCOMMIT",
            )
            async with engine.connect() as conn:
                names = (
                    (
                        await conn.execute(
                            sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                            {"p": f"{self.prefix}_%"},
                        )
                    )
                    .scalars()
                    .all()
                )
                for name in names:
                    await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            await engine.dispose()

        asyncio.run(go())
