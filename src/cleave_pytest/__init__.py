"""Cleave's pytest plugin: an app in every placement, fakes, one real NATS server.

Registered by entry point (``pytest11``), so installing Cleave is enough.
Nothing here runs unless a test asks for a fixture, and Cleave is imported
only then: an unrelated pytest run pays nothing. (That is why this is a
top-level module and not ``cleave_pytest``: importing anything under
``cleave`` imports the framework.)

Fixtures:

``cleave_app``
    The app under test. By default the one ``cleave.toml`` in pytest's root
    folder names; override it in ``conftest.py`` to test another.
``cleave_plan``
    The :class:`~cleave.config.Plan` the harness runs with (default: the
    defaults). Override it to test with other settings.
``cleave_placement``
    ``"monolith"`` or ``"nats"``: every test that uses the harness runs once
    per placement (the ``nats`` one marked ``nats``; ``-m "not nats"`` skips it).
``cleave_harness``
    The app, started: a :class:`~cleave.testing.Harness` (in-process, as
    ``cleave run``) or a :class:`~cleave.testing.NatsHarness` (one host per
    service over a real NATS server, as ``cleave up``).
``cleave_nats_url``
    A real ``nats-server`` with JetStream, started once per session.
``cleave_service``
    ``await cleave_service(OrdersService, visits=FakeVisits())``: one started
    service with fakes (wrapped by :func:`cleave.testing.fake`) for what it
    ``use()``\\ s, stopped after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from cleave.app import App
    from cleave.config import Plan
    from cleave.service import Service
    from cleave.testing import ServiceStarter

S = TypeVar("S", bound="Service")

F = TypeVar("F", bound=Callable[..., Any])


def _async_fixture(fn: F) -> F:
    """An async fixture: pytest-asyncio's when installed (any mode), else pytest's own."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - depends on the user's environment
        return cast(F, pytest.fixture(fn))
    return cast(F, pytest_asyncio.fixture(fn))


__all__ = [
    "cleave_app",
    "cleave_harness",
    "cleave_nats_url",
    "cleave_placement",
    "cleave_plan",
    "cleave_service",
]

PLACEMENTS = ("monolith", "nats")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nats: needs a real nats-server (started by the test)")


@pytest.fixture(scope="session")
def cleave_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real nats-server with JetStream on a free loopback port, for the whole session."""
    from cleave.runtime.natsd import EmbeddedNats

    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), name="cleave_tests")
    server.launch()
    try:
        yield server.url
    finally:
        server.shutdown()


@pytest.fixture
def cleave_app(request: pytest.FixtureRequest) -> App:
    """The app in pytest's root folder (its ``cleave.toml``); override to test another."""
    from cleave.app import load

    root = Path(request.config.rootpath)
    if not (root / "cleave.toml").is_file():
        raise pytest.UsageError(
            f"cleave_app: no cleave.toml in {root}; run pytest from the app's folder, or "
            "define a `cleave_app` fixture in conftest.py that returns your cleave.App"
        )
    return load(root).app


@pytest.fixture
def cleave_plan() -> Plan:
    """The deployment plan the harness runs with: the defaults unless overridden."""
    from cleave.config import Plan

    return Plan()


@pytest.fixture(params=[PLACEMENTS[0], pytest.param(PLACEMENTS[1], marks=pytest.mark.nats)])
def cleave_placement(request: pytest.FixtureRequest) -> str:
    """Where the app's services run: ``monolith`` (one process) or ``nats`` (split)."""
    placement: str = request.param
    return placement


@_async_fixture
async def cleave_harness(
    request: pytest.FixtureRequest,
    cleave_app: App,
    cleave_plan: Plan,
    cleave_placement: str,
    tmp_path: Path,
) -> AsyncIterator[Any]:
    """The app started in ``cleave_placement``, its state in ``tmp_path``."""
    from cleave.testing import Harness, NatsHarness

    if cleave_placement == "monolith":
        async with Harness(cleave_app, tmp_path, plan=cleave_plan) as h:
            yield h
    else:
        nats_url = request.getfixturevalue("cleave_nats_url")
        async with NatsHarness(cleave_app, nats_url, tmp_path, plan=cleave_plan) as n:
            yield n


@_async_fixture
async def cleave_service() -> AsyncIterator[ServiceStarter]:
    """Start one service with fakes of its dependencies: ``await cleave_service(Cls, dep=fake)``.

    Each fake is put behind its contract's boundary (:func:`cleave.testing.fake`)
    unless it already is; the service gets a fresh SQLite database.
    """
    from cleave.service import spec_of_service
    from cleave.testing import build
    from cleave.testing.fakes import Fake

    async with AsyncExitStack() as stack:

        async def start(service: type[S], /, **fakes: object) -> S:
            deps = spec_of_service(service).dependencies
            wrapped: dict[str, Any] = {
                name: impl if isinstance(impl, Fake) or name not in deps else Fake(deps[name], impl)
                for name, impl in fakes.items()
            }
            started: S = await stack.enter_async_context(build(service, **wrapped))
            return started

        yield start
