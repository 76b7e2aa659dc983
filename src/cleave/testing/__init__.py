"""Testing helpers: part of the product, for users' tests as much as for Cleave's own.

Unit-test one service with fakes for what it calls and a fresh SQLite
database of its own::

    async with cleave.testing.build(OrdersService, catalog=FakeCatalog(), ...) as orders:
        view = await orders.place_order(PlaceOrder(...))
        assert [type(e) for e in await cleave.testing.published(orders)] == [OrderConfirmed]

Or run a whole app in-process, exactly as ``cleave run`` does, and call it
through typed clients or over ASGI::

    async with cleave.testing.Harness(app, tmp_path) as h:
        orders = h.client(Orders)
        view = await orders.place_order(PlaceOrder(...))
        await h.settle()          # every event delivered and handled

:class:`NatsHarness` runs the same app split into several hosts in this
process that talk over a real NATS server, as the processes placement does:
run one test body under both to prove the placement changes nothing.

Fakes are plain objects with the contract's methods (``async def``); mypy
checks them against the contract Protocol. :func:`fake` puts one behind the
contract's boundary, so it validates, encodes and maps errors as a real
callee would. The pytest plugin (``cleave_pytest``, registered by entry point) gives these
as fixtures, with every test run once per placement.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from cleave.app import App, LoadedApp
from cleave.config import Plan
from cleave.contracts import spec_of
from cleave.data import schema
from cleave.data.database import Database, default_url
from cleave.data.saga import SagaRunner
from cleave.errors import DefinitionError
from cleave.faults import Faults
from cleave.messages import Event, from_msgpack
from cleave.runtime.host import Host
from cleave.runtime.monolith import Monolith
from cleave.runtime.router import make_client
from cleave.service import Service, spec_of_service
from cleave.testing.fakes import fake

__all__ = ["Harness", "NatsHarness", "ServiceStarter", "build", "fake", "published", "token"]

S = TypeVar("S", bound=Service)
C = TypeVar("C")


class ServiceStarter(Protocol):
    """The pytest plugin's ``cleave_service`` fixture: ``await cleave_service(Cls, dep=fake)``."""

    def __call__(self, service: type[S], /, **fakes: object) -> Awaitable[S]: ...


@asynccontextmanager
async def build(
    service: type[S],
    *,
    database_url: str | None = None,
    **dependencies: Any,
) -> AsyncIterator[S]:
    """A started instance of ``service`` with ``dependencies`` (fakes) and its own database.

    Every ``cleave.use(...)`` attribute must be given, by name. The database is
    a new SQLite file in a temporary folder unless ``database_url`` says
    otherwise; ``on_start`` runs (seeding it) and ``on_stop`` runs at the end.
    """
    spec = spec_of_service(service)
    missing = sorted(set(spec.dependencies) - set(dependencies))
    extra = sorted(set(dependencies) - set(spec.dependencies))
    if missing or extra:
        problems = []
        if missing:
            problems.append("pass " + ", ".join(f"{m}=<fake>" for m in missing))
        if extra:
            problems.append(f"{', '.join(extra)}: not a dependency of {service.__name__}")
        raise DefinitionError(f"cleave.testing.build({service.__name__}): " + "; ".join(problems))
    instance = service()
    for attr, stand_in in dependencies.items():
        instance.__dict__[attr] = stand_in
    with tempfile.TemporaryDirectory(prefix="cleave-test-") as tmp:
        db: Database | None = None
        if spec.database is not None:
            declared: Database = getattr(service, spec.database)
            subjects = {ev: spec.contract.event_subject(ev) for ev in spec.events}
            db = declared.bind(
                spec.name, database_url or default_url(Path(tmp), spec.name), subjects
            )
            await db.start()
            instance.__dict__[spec.database] = db
        runners = []
        for attr, saga in spec.sagas.items():
            assert db is not None
            runner = SagaRunner(saga, instance, db, service=spec.name, owner="test")
            instance.__dict__[attr] = runner
            runners.append(runner)
        try:
            await instance.on_start()
            yield instance
            await instance.on_stop()
        finally:
            for runner in runners:
                await runner.stop()
            if db is not None:
                await db.stop()


async def published(instance: Service) -> list[Event]:
    """The events ``instance`` has written to its outbox (not yet relayed), oldest first."""
    spec = spec_of_service(type(instance))
    if spec.database is None:
        return []
    db: Database = getattr(instance, spec.database)
    by_subject = {spec.contract.event_subject(ev): ev for ev in spec.events}
    async with db.read() as tx:
        rows = (
            await tx.execute(
                sa.select(schema.outbox.c.subject, schema.outbox.c.payload).order_by(
                    schema.outbox.c.seq
                )
            )
        ).all()
    return [from_msgpack(r.payload, by_subject[r.subject]) for r in rows]


def token(
    state_dir: Path | str,
    subject: str,
    *scopes: str,
    audience: str,
    ttl: float = 3600.0,
) -> str:
    """A dev-issuer token for ``subject`` that an app run with ``state_dir`` accepts.

    For tests of a running app (``cleave run`` / ``cleave up`` with that state
    folder); ``audience`` is the app's name unless ``[auth] audience`` says
    otherwise. The key is made on first use, as ``cleave token`` does.
    """
    from cleave.gateway.devissuer import mint

    return mint(Path(state_dir), subject=subject, audience=audience, scopes=scopes, ttl=ttl)


class Harness:
    """A whole app in this process (the monolith placement), for tests."""

    def __init__(
        self, app: App, state_dir: Path | str | None = None, *, plan: Plan | None = None
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cleave-harness-")
            state_dir = self._tmp.name
        state = Path(state_dir)
        self.loaded = LoadedApp(app, Path(os.getcwd()), plan or Plan(), state)
        self.monolith = Monolith(self.loaded)
        self._asgi: Any = None

    @property
    def host(self) -> Host:
        return self.monolith.host

    @property
    def asgi(self) -> Any:
        """The gateway as an ASGI app (e.g. for ``httpx.ASGITransport``).

        Built once, like a server's: its key cache and rate limits last the harness's life.
        """
        if self._asgi is None:
            self._asgi = self.monolith.asgi()
        return self._asgi

    def token(self, subject: str, *scopes: str, ttl: float = 3600.0) -> str:
        """A token for ``subject`` (e.g. an account id) from this harness's dev issuer.

        ::

            headers = {"authorization": f"Bearer {h.token('acc-alice')}"}
        """
        return token(
            self.loaded.state_dir,
            subject,
            *scopes,
            audience=self.loaded.plan.auth.audience or self.loaded.app.name,
            ttl=ttl,
        )

    def client(self, contract: Callable[..., C], caller: str = "test") -> C:
        """A typed client of ``contract``, calling as ``caller``."""
        client: C = make_client(spec_of(contract), self.host.router, caller)
        return client

    def service(self, name: str) -> Service:
        """The running instance of service ``name``."""
        return self.host.instances[name]

    def inject(
        self,
        service: str,
        *,
        latency: float = 0.0,
        drop: float = 0.0,
        fail: float = 0.0,
        methods: tuple[str, ...] = (),
    ) -> None:
        """Slow down, drop or refuse calls to ``service`` (all zero: back to normal)."""
        self.host.inject(service, Faults(latency=latency, drop=drop, fail=fail, methods=methods))

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every outbox is empty and every event has been handled."""
        deadline = time.monotonic() + timeout
        while True:
            backlog = sum([await r.backlog() for r in self.host.relays.values()])
            busy = self.monolith.broker.busy()
            if backlog == 0 and not busy:
                # Handlers may have published more; look twice before saying settled.
                await asyncio.sleep(0.02)
                backlog = sum([await r.backlog() for r in self.host.relays.values()])
                if backlog == 0 and not self.monolith.broker.busy():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not settled after {timeout}s: {backlog} outbox rows, broker busy={busy}"
                )
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Harness:
        await self.monolith.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.monolith.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()


class NatsHarness:
    """An app split into hosts (one per service by default) that talk over real NATS.

    Like the processes placement but in one process, so tests can look
    inside. ``prefix`` keeps apps that share one NATS server apart.
    """

    def __init__(
        self,
        app: App,
        nats_url: str,
        state_dir: Path | str | None = None,
        *,
        groups: dict[str, list[str]] | None = None,
        plan: Plan | None = None,
        prefix: str | None = None,
    ) -> None:
        self.app = app
        self.nats_url = nats_url
        self.plan = plan or Plan()
        self.prefix = prefix or f"t{os.urandom(4).hex()}"
        self.groups = groups or {name: [name] for name in app.services}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cleave-harness-")
            state_dir = self._tmp.name
        self.state_dir = Path(state_dir)
        self.data_dir = self.state_dir / "data"
        self.hosts: dict[str, Host] = {}
        self._connections: list[Any] = []
        self._edge: Host | None = None
        self._asgi: Any = None

    async def _host(self, names: list[str], label: str) -> Host:
        from cleave.transport.jetstream import JetStreamBroker
        from cleave.transport.nats import NatsRpcClient, NatsRpcServer, connect

        nc = await connect(self.nats_url, f"{self.app.name}.{label}")
        self._connections.append(nc)
        server = (
            NatsRpcServer(nc, instance=label, version="0.0.0", prefix=self.prefix)
            if names
            else None
        )
        host = Host(
            self.app,
            self.plan,
            names,
            broker=JetStreamBroker(
                nc, prefix=self.prefix, max_age=self.plan.events.retention_days * 24 * 3600.0
            ),
            data_dir=self.data_dir,
            instance=label,
            remote=NatsRpcClient(nc, prefix=self.prefix),
            server=server,
        )
        await host.start()
        return host

    @property
    def edge(self) -> Host:
        """A host with no services: every call it makes crosses NATS."""
        if self._edge is None:
            raise RuntimeError("NatsHarness not started")
        return self._edge

    @property
    def asgi(self) -> Any:
        from cleave.gateway.asgi import build_asgi
        from cleave.gateway.auth import Authenticator
        from cleave.gateway.limits import RateLimiter

        if self.app.gateway is None:
            raise LookupError(f"app {self.app.name} declares no gateway")
        if self._asgi is not None:
            return self._asgi
        self._asgi = build_asgi(
            self.app.gateway,
            self.edge.router,
            timeout=self.plan.runtime.timeout,
            app_name=self.app.name,
            auth=Authenticator(
                self.plan.auth, app_name=self.app.name, root=Path.cwd(), state_dir=self.state_dir
            ),
            limiter=RateLimiter(self.plan.gateway.rate, self.plan.gateway.burst),
        )
        return self._asgi

    def token(self, subject: str, *scopes: str, ttl: float = 3600.0) -> str:
        """A token for ``subject`` (e.g. an account id) from this harness's dev issuer."""
        audience = self.plan.auth.audience or self.app.name
        return token(self.state_dir, subject, *scopes, audience=audience, ttl=ttl)

    def client(self, contract: Callable[..., C], caller: str = "test") -> C:
        client: C = make_client(spec_of(contract), self.edge.router, caller)
        return client

    def service(self, name: str) -> Service:
        for host in self.hosts.values():
            if name in host.instances:
                return host.instances[name]
        raise KeyError(name)

    def inject(
        self,
        service: str,
        *,
        latency: float = 0.0,
        drop: float = 0.0,
        fail: float = 0.0,
        methods: tuple[str, ...] = (),
    ) -> None:
        """Slow down, drop or refuse calls to ``service`` (all zero: back to normal)."""
        faults = Faults(latency=latency, drop=drop, fail=fail, methods=methods)
        for host in self.hosts.values():
            if service in host.dispatchers:
                host.inject(service, faults)
                return
        raise KeyError(service)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every outbox is empty and every consumer has acked everything."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2:
            busy = 0
            for host in self.hosts.values():
                busy += sum([await r.backlog() for r in host.relays.values()])
                busy += sum([await s.pending() for s in host.subscriptions])
            quiet = quiet + 1 if busy == 0 else 0
            if time.monotonic() > deadline:
                raise TimeoutError(f"not settled after {timeout}s: {busy} events in flight")
            await asyncio.sleep(0.02)

    #: How long starting every host may take before it is an error, not a hang.
    start_timeout = 60.0

    async def __aenter__(self) -> NatsHarness:
        label = ""
        try:
            async with asyncio.timeout(self.start_timeout) as limit:
                for label, names in self.groups.items():
                    self.hosts[label] = await self._host(list(names), label)
                label = "edge"
                self._edge = await self._host([], label)
            if limit.expired():
                # The cancel that enforces the limit was swallowed: Python 3.11's
                # asyncio.wait_for (inside nats-py) does so when its future
                # finishes in the same instant. Late is late all the same.
                raise TimeoutError
        except TimeoutError:
            await self.__aexit__()
            raise TimeoutError(
                f"NatsHarness: host {label!r} of {self.app.name} did not start within "
                f"{self.start_timeout:g}s on {self.nats_url}; is the NATS server (with "
                "JetStream) answering?"
            ) from None
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for host in [*self.hosts.values(), *([self._edge] if self._edge else [])]:
                await host.stop()
            for nc in self._connections:
                await nc.close()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
