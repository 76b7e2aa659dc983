"""A host runs some of an app's services in this process.

The monolith runs one host with every service; the processes placement runs
one per worker with the services of its group; the gateway runs one with
none. A host wires each service it runs: its database (bound and started),
its clients (through this process's :class:`~cleave.runtime.router.Router`),
its outbox relay, its event consumers, and, when a server is given, its
remote endpoints.

Start order: databases and ``on_start`` hooks (callees first), then streams
and consumers, then relays, then endpoints, so a service takes calls only
when it is ready. Stop runs the other way round.

A service may serve several majors of its contract and publish several
versions of an event: the host binds every event of every major, keeps an
:class:`~cleave.audience.Audience` per publisher (who still consumes each
version), and counts uses of deprecated methods and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from cleave.audience import Audience
from cleave.contracts import deprecation_of
from cleave.data.database import Database
from cleave.data.deadletters import DeadLetterStore, Replayer
from cleave.data.inbox import EventConsumer
from cleave.data.janitor import Janitor, Retention
from cleave.data.outbox import OutboxRelay
from cleave.data.saga import SagaRunner
from cleave.errors import CleaveError, LifecycleError
from cleave.observability import otel
from cleave.runtime.deprecation import Deprecations
from cleave.runtime.dispatch import Dispatcher
from cleave.runtime.router import Router, make_client
from cleave.runtime.subscriptions import plan_subscriptions
from cleave.transport.base import ConsumerPolicy

if TYPE_CHECKING:
    from cleave.app import App
    from cleave.config import Plan
    from cleave.faults import Faults
    from cleave.messages import Event
    from cleave.service import Service
    from cleave.transport.base import Broker, RpcClient, Subscription

__all__ = ["Host", "HostState", "RpcServer"]


class RpcServer(Protocol):
    """Takes remote calls for the dispatchers of a host (see the NATS transport)."""

    async def serve(self, dispatchers: Sequence[Dispatcher]) -> None: ...
    async def stop(self, grace: float = 10.0) -> None: ...


class HostState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Host:
    """Runs the services ``names`` of ``app`` in this process."""

    def __init__(
        self,
        app: App,
        plan: Plan,
        names: Sequence[str],
        *,
        broker: Broker,
        data_dir: Path,
        instance: str,
        remote: RpcClient | None = None,
        server: RpcServer | None = None,
        consumer_policy: ConsumerPolicy | None = None,
    ) -> None:
        unknown = [n for n in names if n not in app.services]
        if unknown:
            raise LifecycleError(f"app {app.name} has no service {unknown[0]!r}")
        self.app = app
        self.plan = plan
        self.names = [n for n in app.start_order() if n in names]
        self.broker = broker
        self.data_dir = data_dir
        self.instance = instance
        self.server = server
        # An unacknowledged delivery comes back once its handler must have given up.
        self.consumer_policy = consumer_policy or ConsumerPolicy(
            ack_wait=plan.runtime.event_timeout + 5.0
        )
        self.router = Router(
            remote=remote,
            timeout=plan.runtime.timeout,
            resilience=plan.resilience,
            overrides=plan.overrides(),
        )
        self.instances: dict[str, Service] = {}
        self.databases: dict[str, Database] = {}
        self.dispatchers: dict[str, Dispatcher] = {}
        self.relays: dict[str, OutboxRelay] = {}
        #: Who consumes the events of each publishing service here.
        self.audiences: dict[str, Audience] = {}
        #: Uses of deprecated methods and events seen here.
        self.deprecations = Deprecations()
        self.consumers: list[EventConsumer] = []
        self.sagas: list[SagaRunner[Any]] = []
        self.janitors: list[Janitor] = []
        #: Replays the dead letters marked for replay of this host's consumers.
        self.replayer = Replayer([])
        self.subscriptions: list[Subscription] = []
        self.consumer_subscriptions: list[tuple[EventConsumer, Subscription]] = []
        self.state = HostState.NEW

    def client(self, contract: object, caller: str = "client") -> object:
        """A client of ``contract`` calling through this host, e.g. for tests or tools."""
        from cleave.contracts import spec_of

        return make_client(spec_of(contract), self.router, caller)

    async def start(self) -> None:
        if self.state is not HostState.NEW:
            raise LifecycleError(f"host already {self.state.value}; create a new one")
        self.state = HostState.STARTING
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.state = HostState.RUNNING

    async def _start(self) -> None:
        # OpenTelemetry spans made inside handlers join the handler's trace (no cost until used).
        otel.expose()
        for name in self.names:
            await self._start_service(name)
        for name in self.names:
            await self._start_events(name)
        for relay in self.relays.values():
            relay.start()
        for runner in self.sagas:
            runner.start_recovery()
        self.replayer = Replayer(self.consumers)
        self.replayer.start()
        retention = Retention.of(self.plan.events)
        for db in self.databases.values():
            janitor = Janitor(db, retention=retention)
            janitor.start()
            self.janitors.append(janitor)
        if self.server is not None:
            await self.server.serve([self.dispatchers[n] for n in self.names])

    async def _start_service(self, name: str) -> None:
        spec = self.app.services[name]
        instance = spec.cls()
        db: Database | None = None
        if spec.database is not None:
            declared: Database = getattr(spec.cls, spec.database)
            url = self.plan.database_url(name, self.data_dir)
            subjects = {ev: spec.contract.event_subject(ev) for ev in spec.events}
            db = declared.bind(
                name,
                url,
                subjects,
                synchronous=self.plan.database.synchronous,
                migrate=self.plan.database.migrate,
            )
            await db.start()
            self.databases[name] = db
            instance.__dict__[spec.database] = db
        for attr, dep in spec.dependencies.items():
            fallback = spec.fallbacks.get(attr)
            instance.__dict__[attr] = make_client(dep, self.router, name, fallback)
        for attr, saga in spec.sagas.items():
            assert db is not None  # checked when the service was declared
            runner = SagaRunner(saga, instance, db, service=name, owner=self.instance)
            instance.__dict__[attr] = runner
            self.sagas.append(runner)
        dispatcher = Dispatcher(
            spec, instance, db, strict=self.plan.runtime.strict, deprecations=self.deprecations
        )
        self.instances[name] = instance
        self.dispatchers[name] = dispatcher
        self.router.local[name] = dispatcher
        await instance.on_start()

    async def _start_events(self, name: str) -> None:
        spec = self.app.services[name]
        db = self.databases.get(name)
        if spec.events and db is not None:
            subjects = [f"cleave.evt.{name}.>"]
            await self.broker.ensure_stream(spec.contract.stream, subjects)
            self.relays[name] = OutboxRelay(db, self.broker, holder=self.instance)
            declared = {ev for ev, src in self.app.event_sources.items() if src.name == name}
            audience = Audience(
                spec.contract.stream,
                {ev: spec.contract.event_subject(ev) for ev in spec.events},
                declared,
            )
            await audience.refresh(self.broker)
            audience.attach(db)
            audience.start(self.broker)
            self.audiences[name] = audience
        if not spec.subscriptions:
            return
        assert db is not None  # checked when the service was declared
        for sub in spec.subscriptions:
            source = self.app.event_sources[sub.event]
            await self.broker.ensure_stream(source.stream, [f"cleave.evt.{source.name}.>"])
        # Where each consumer starts; refuses a renamed subscription the author said nothing of.
        for start in await plan_subscriptions(self.app, name, self.plan, self.broker, db):
            sub = start.sub
            consumer = EventConsumer(
                service=name,
                name=start.durable,
                event=sub.event,
                handler=self._handler(name, sub.attr, sub.event),
                db=db,
                broker=self.broker,
                policy=self.consumer_policy,
                timeout=self.plan.runtime.event_timeout,
            )
            self.consumers.append(consumer)
            await start.prepare(db)
            subscription = await self.broker.subscribe(
                start.stream,
                consumer.name,
                start.subject,
                consumer.deliver,
                self.consumer_policy,
                consumer.deliver_batch,
                start=start.start,
            )
            self.subscriptions.append(subscription)
            self.consumer_subscriptions.append((consumer, subscription))
            await start.finish(self.broker)

    def _handler(self, service: str, attr: str, event: type[Event]) -> Any:
        """The consumer's handler; for a deprecated event, one that counts each delivery."""
        handler = getattr(self.instances[service], attr)
        reason = deprecation_of(event)
        if reason is None:
            return handler
        source = self.app.event_sources[event].name
        use = ("event", source, event.__version__, event.__topic__, service)
        deprecations = self.deprecations

        async def counted(received: Event) -> Any:
            deprecations.record(use, reason)
            return await handler(received)

        return counted

    def inject(self, service: str, faults: Faults | None) -> None:
        """Set (or with None, clear) injected faults on a service of this host."""
        dispatcher = self.dispatchers.get(service)
        if dispatcher is None:
            raise LifecycleError(f"{service} does not run in this host ({', '.join(self.names)})")
        dispatcher.faults = faults if faults is not None and faults.active else None

    async def status(self) -> dict[str, Any]:
        """What this host is doing: backlogs, consumers, sagas (for ``cleave status``)."""
        consumers = {}
        kept: dict[str, int] = {}  # dead letters in the databases now, per consumer
        for service, db in {c.service: c.db for c in self.consumers}.items():
            kept.update(await DeadLetterStore(db, service).counts())
        for audience in self.audiences.values():
            with contextlib.suppress(CleaveError):  # the broker away: the last view
                await audience.refresh(self.broker)
        for consumer, subscription in self.consumer_subscriptions:
            consumers[consumer.name] = {
                "processed": consumer.processed,
                "duplicates": consumer.duplicates,
                "failures": consumer.failures,
                "dead_lettered": consumer.dead_lettered,
                "dead_letters": kept.get(consumer.name, 0),
                "pending": await subscription.pending(),
            }
        return {
            "services": self.names,
            "state": self.state.value,
            "outbox": {name: await relay.backlog() for name, relay in self.relays.items()},
            "published": {name: relay.published for name, relay in self.relays.items()},
            "sagas": {runner.kind: await runner.pending() for runner in self.sagas},
            "sagas_stuck": {runner.kind: await runner.stuck() for runner in self.sagas},
            "consumers": consumers,
            "majors": {name: self.app.services[name].majors for name in self.names},
            # Each event subject of the services here, with the durable consumers that read it.
            "events": {name: a.consumers() for name, a in self.audiences.items()},
            "in_flight": getattr(self.server, "in_flight", 0),
            "faults": {
                name: msgspec.to_builtins(d.faults)
                for name, d in self.dispatchers.items()
                if d.faults is not None
            },
            "breakers": {
                f"{caller}->{target}": {"state": b.state, "opened": b.opened}
                for (caller, target), b in self.router.breakers.items()
            },
            "bulkheads": {
                f"{caller}->{target}": {"active": b.active, "rejected": b.rejected}
                for (caller, target), b in self.router.bulkheads.items()
            },
        }

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking calls and events, let work in progress finish, close databases.

        Calls and event deliveries stop together; calls in progress get up to
        ``grace`` seconds. Each relay publishes what its outbox holds before it
        stops (events committed by the last calls go out now, not at the next start).
        """
        if self.state in (HostState.STOPPING, HostState.STOPPED):
            return
        self.state = HostState.STOPPING
        stopping = [sub.stop() for sub in self.subscriptions]
        if self.server is not None:
            stopping.append(self.server.stop(grace))
        await asyncio.gather(*stopping)
        await self.replayer.stop()
        for runner in self.sagas:
            await runner.stop()
        for janitor in self.janitors:
            await janitor.stop()
        for relay in self.relays.values():
            await relay.stop(flush=grace)
        for audience in self.audiences.values():
            await audience.stop()
        for name in reversed(self.names):
            instance = self.instances.get(name)
            if instance is not None:
                await instance.on_stop()
        for db in self.databases.values():
            await db.stop()
        self.state = HostState.STOPPED
