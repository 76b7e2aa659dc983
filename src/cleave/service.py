"""Services: plain classes that implement a contract.

::

    class OrdersService(cleave.Service, implements=Orders):
        db = cleave.Database(metadata)
        billing = cleave.use(Billing)          # typed client, declared dependency

        async def place_order(self, req: PlaceOrder) -> OrderView:
            receipt = await self.billing.charge(Charge(...))
            ...

        @cleave.subscribe(ShipmentCreated)
        async def on_shipped(self, event: ShipmentCreated) -> None: ...

Nothing here wraps a method: ``use()`` is a descriptor the runtime fills per
instance, ``subscribe()`` only marks the function. A unit test can build the
class, set ``billing`` to a fake and await ``place_order`` directly (see
:mod:`cleave.testing`).

A service may serve several majors of its contract at once, so callers move
to a new major at their own pace (see docs/versioning.md)::

    class BillingService(cleave.Service, implements=BillingV2, also=[Billing]):
        async def charge(self, req: ChargeV2) -> ReceiptV2: ...

        @cleave.adapts(Billing.charge)          # v1's charge, as an adapter onto v2
        async def charge_v1(self, req: Charge) -> Receipt:
            receipt = await self.charge(ChargeV2(..., currency="EUR"))
            return Receipt(...)

A method of an older major whose request and response did not change needs
nothing: the method of the same name serves both majors.

The declarations (contract, dependencies, subscriptions, database) are the
single source for the app's topology, start order and wiring; they are
collected once into a :class:`ServiceSpec`.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar, overload

from cleave.contracts import ContractSpec, MethodSpec, method_of, spec_of
from cleave.data.database import Database
from cleave.data.saga import Saga
from cleave.errors import DefinitionError, LifecycleError
from cleave.messages import Event

__all__ = [
    "Service",
    "ServiceSpec",
    "Subscription",
    "Use",
    "adapts",
    "spec_of_service",
    "subscribe",
    "use",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_SUBSCRIBE_ATTR = "__cleave_subscribe__"
_ADAPTS_ATTR = "__cleave_adapts__"


def adapts(method: Callable[..., Any]) -> Callable[[F], F]:
    """Mark ``async def`` as the implementation of ``method`` of an older major.

    For a service declared with ``also=[ContractV1]``, when the older major's
    method differs from the new one (other request or response types)::

        @cleave.adapts(OrdersV1.place_order)
        async def place_order_v1(self, req: PlaceOrderV1) -> OrderViewV1: ...

    Typically it translates the request, calls the new method and translates
    the answer back (an adapter), but it may be written by hand. The function
    is returned unchanged.
    """
    spec = method_of(method)

    def mark(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(
                f"{fn.__qualname__}: @cleave.adapts({spec.qualname}) marks an `async def`"
            )
        setattr(fn, _ADAPTS_ATTR, spec)
        return fn

    return mark


class Use(Generic[T]):
    """A declared dependency on another service's contract (see :func:`use`)."""

    def __init__(self, contract: Any, fallback: Any = None) -> None:
        self.contract = spec_of(contract)
        self.fallback = fallback
        self.attr = ""
        if fallback is not None:
            for name in self.contract.methods:
                answer = getattr(fallback, name, None)
                if answer is not None and not inspect.iscoroutinefunction(answer):
                    raise DefinitionError(
                        f"fallback for {self.contract.name}.{name} must be `async def`"
                    )

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    @overload
    def __get__(self, obj: None, owner: type) -> Use[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> T | Use[T]:
        if obj is None:
            return self
        # The runtime stores the bound client in the instance __dict__, which
        # shadows this (non-data) descriptor; reaching here means it did not.
        raise LifecycleError(
            f"{owner.__name__}.{self.attr} (a client of {self.contract.name}) is not bound: "
            "the service is not running in a Cleave host. In a unit test, use "
            f"cleave.testing.build({owner.__name__}, {self.attr}=<fake>)"
        )


def use(contract: Callable[..., T], *, fallback: Any = None) -> Use[T]:
    """Declare that a service calls ``contract``; on an instance it is a typed client.

    ::

        billing = cleave.use(Billing)
        ...
        receipt = await self.billing.charge(Charge(...))

    ``fallback`` is an object with some of the contract's methods (``async
    def``, same signature); each answers its method's calls that cannot be
    made (the service unavailable, its circuit open, no time left).
    """
    return Use(contract, fallback)


#: A subscription's identity: it names a durable NATS consumer (no whitespace,
#: ``.``, ``*``, ``>`` or slashes there) and the service's inbox rows.
_IDENTITY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def subscribe(
    event: type[Event],
    *,
    source: Any = None,
    name: str | None = None,
    takeover: str | None = None,
    replay: bool = False,
) -> Callable[[F], F]:
    """Mark ``async def handler(self, event)`` as the consumer of ``event``.

    ``source`` names the publishing contract when more than one in the app
    declares the same event type. The function is returned unchanged.

    ``name`` is the subscription's identity: its durable consumer is
    ``<service>-<name>`` and its inbox remembers handled events under that
    name. It defaults to the handler's name with ``_`` as ``-``, so renaming
    the method changes it; declare it to rename freely::

        @cleave.subscribe(ShipmentCreated, name="on-shipped")
        async def record_shipment(self, event: ShipmentCreated) -> None: ...

    When the identity changes while the old consumer still exists, the service
    refuses to start until you choose: ``takeover="<old name>"`` continues from
    where the old consumer stopped (its position and inbox move to the new
    identity; the old consumer is deleted), ``replay=True`` handles every
    event the stream still keeps again. ``[services.<service>.subscriptions.
    <name>]`` in cleave.toml can say the same (see :mod:`cleave.config`).
    Either is done once, at the first start after the rename; left in the
    code afterwards it changes nothing.
    """
    if not (isinstance(event, type) and issubclass(event, Event)) or event is Event:
        raise DefinitionError(f"cleave.subscribe() takes an Event subclass, got {event!r}")
    source_spec = spec_of(source) if source is not None else None
    for what, value in (("name", name), ("takeover", takeover)):
        if value is not None:
            _check_identity(value, f"cleave.subscribe({event.__name__}, {what}=...)")
    if takeover is not None and replay:
        raise DefinitionError(
            f"cleave.subscribe({event.__name__}): takeover={takeover!r} continues from the old "
            "consumer's position, replay=True handles every retained event again; choose one"
        )
    if takeover is not None and takeover == name:
        raise DefinitionError(
            f"cleave.subscribe({event.__name__}, name={name!r}, takeover={takeover!r}): a "
            "subscription cannot take over itself; takeover names the identity it had before"
        )

    def mark(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(
                f"{fn.__qualname__}: event handlers must be `async def handler(self, event)`"
            )
        setattr(fn, _SUBSCRIBE_ATTR, (event, source_spec, name, takeover or "", replay))
        return fn

    return mark


def _check_identity(value: object, where: str) -> str:
    """``value`` if it can be a subscription's identity, else a DefinitionError from ``where``."""
    if not isinstance(value, str) or not _IDENTITY.match(value):
        raise DefinitionError(
            f"{where}: {value!r} cannot name a subscription: use 1 to 64 letters, digits, "
            "'-' or '_' (it names a durable NATS consumer and the inbox key, where whitespace, "
            "'.', '*', '>' and slashes are not allowed), e.g. 'on-shipped'"
        )
    return value


class Subscription:
    """One event handler of a service.

    ``name`` is its identity (see :func:`subscribe`); ``takeover`` and
    ``replay`` say what to do when it changed ("" and False: nothing said).
    """

    __slots__ = ("attr", "event", "name", "replay", "source", "takeover")

    def __init__(
        self,
        attr: str,
        event: type[Event],
        source: ContractSpec | None,
        name: str | None = None,
        takeover: str = "",
        replay: bool = False,
    ) -> None:
        self.attr = attr
        self.event = event
        self.source = source
        # Today's consumers were named after the handler: the default keeps them.
        self.name = name or attr.replace("_", "-")
        self.takeover = takeover
        self.replay = replay

    def __repr__(self) -> str:
        return f"<subscription {self.name} ({self.attr}) <- {self.event.__name__}>"


class ServiceSpec:
    """What a :class:`Service` subclass declares."""

    def __init__(
        self,
        cls: type[Service],
        contract: ContractSpec,
        dependencies: dict[str, ContractSpec],
        subscriptions: list[Subscription],
        database: str | None,
        sagas: dict[str, Saga[Any]] | None = None,
        fallbacks: dict[str, Any] | None = None,
        also: tuple[ContractSpec, ...] = (),
        handlers: dict[MethodSpec, str] | None = None,
    ) -> None:
        self.cls = cls
        #: The newest major it serves (``implements=``).
        self.contract = contract
        #: Every major it serves, newest first: ``contract``, then ``also=``.
        self.contracts = (contract, *also)
        #: The attribute that answers each method of each major.
        self.handlers = handlers or {m: m.name for m in contract.methods.values()}
        self.name = contract.name
        self.dependencies = dependencies
        self.subscriptions = subscriptions
        self.database = database
        self.sagas = sagas or {}
        self.fallbacks = fallbacks or {}

    @property
    def majors(self) -> list[int]:
        """The major versions it serves, newest first."""
        return [c.version for c in self.contracts]

    @property
    def methods(self) -> list[MethodSpec]:
        """Every method it serves, of every major."""
        return [m for c in self.contracts for m in c.methods.values()]

    @property
    def events(self) -> tuple[type[Event], ...]:
        """Every event it publishes, of every major (each once)."""
        return tuple(dict.fromkeys(ev for c in self.contracts for ev in c.events))

    @property
    def calls(self) -> list[str]:
        """Names of the services this one calls."""
        return sorted({c.name for c in self.dependencies.values()})

    def __repr__(self) -> str:
        return f"<service {self.name} ({self.cls.__qualname__})>"


class Service:
    """Base class of services. Subclass with ``implements=SomeContract``.

    ``also=[OlderMajor, ...]`` serves older majors of the same contract too
    (see :func:`adapts`).
    """

    __cleave_service__: ClassVar[ServiceSpec]
    #: The service's name: its contract's name.
    name: ClassVar[str]

    def __init_subclass__(
        cls, *, implements: Any = None, also: Iterable[Any] = (), **kw: Any
    ) -> None:
        super().__init_subclass__(**kw)
        if implements is None:
            parent: ServiceSpec | None = getattr(cls, "__cleave_service__", None)
            if parent is None:
                if also:
                    raise DefinitionError(
                        f"{cls.__qualname__}: also=[...] names older majors of the contract "
                        "given with implements=; add implements=<newest major>"
                    )
                return  # an abstract base; spec_of_service() explains if it is used as one
            # A subclass (a test double, say) keeps the contract and its majors.
            contract, older = parent.contract, parent.contracts[1:]
        else:
            contract = spec_of(implements)
            older = _check_majors(cls.__qualname__, contract, [spec_of(c) for c in also])
        cls.name = contract.name
        cls.__cleave_service__ = _collect(cls, contract, older)

    async def on_start(self) -> None:
        """Called once its database is ready and before it takes calls: seed data here."""

    async def on_stop(self) -> None:
        """Called after the service has stopped taking calls and events."""


def _check_majors(
    where: str, contract: ContractSpec, older: list[ContractSpec]
) -> tuple[ContractSpec, ...]:
    """The older majors of ``also=``, checked: same contract name, each major once."""
    seen = {contract.version}
    for spec in older:
        if spec.name != contract.name:
            raise DefinitionError(
                f"{where} implements {contract.name} but also=[...] names {spec.name} "
                f"v{spec.version}; also= takes other majors of {contract.name} only (a service "
                "serves one contract)"
            )
        if spec.version in seen:
            raise DefinitionError(
                f"{where}: {contract.name} v{spec.version} is named twice in implements=/also="
            )
        seen.add(spec.version)
    events: dict[tuple[str, int], type[Event]] = {}
    for spec in (contract, *older):
        for ev in spec.events:
            key = (ev.__topic__, ev.__version__)
            if events.setdefault(key, ev) is not ev:
                raise DefinitionError(
                    f"{where}: events {events[key].__name__} and {ev.__name__} of different "
                    f"majors of {contract.name} share topic {key[0]!r} v{key[1]}; a changed "
                    "event needs a new version= (or the same class in both majors)"
                )
    return tuple(older)


def _older_handlers(cls: type[Service], older: tuple[ContractSpec, ...]) -> dict[MethodSpec, str]:
    """The attribute that serves each method of each older major."""
    where = cls.__qualname__
    marked: dict[MethodSpec, str] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            target = getattr(value, _ADAPTS_ATTR, None)
            if target is None:
                continue
            if target.contract not in older:
                raise DefinitionError(
                    f"{where}.{attr} adapts {target.qualname} v{target.contract.version}, a major "
                    f"{where} does not serve; add its contract to also=[...]"
                )
            marked[target] = attr
    handlers: dict[MethodSpec, str] = {}
    for spec in older:
        for name, method in spec.methods.items():
            adapter = marked.get(method)
            if adapter is not None:
                _check_signature(
                    where, adapter, getattr(cls, adapter), method.request, method.response
                )
                handlers[method] = adapter
            elif _same_signature(getattr(cls, name, None), method):
                handlers[method] = name  # unchanged between the majors: one method serves both
            else:
                raise DefinitionError(
                    f"{where} serves {spec.name} v{spec.version} (also=[...]) but nothing answers "
                    f"its {name}({method.request.__name__}) -> {method.response.__name__}; add "
                    f"`@cleave.adapts({spec.cls.__qualname__}.{name}) async def {name}_v"
                    f"{spec.version}(self, req: {method.request.__name__}) -> "
                    f"{method.response.__name__}`"
                )
    return handlers


def _same_signature(impl: Any, method: MethodSpec) -> bool:
    """Whether ``impl`` takes ``method``'s request and returns its response."""
    if impl is None or not inspect.iscoroutinefunction(impl):
        return False
    try:
        hints = typing.get_type_hints(impl)
    except NameError:
        return False
    params = list(inspect.signature(impl).parameters.values())[1:]
    return (
        len(params) == 1
        and hints.get(params[0].name) is method.request
        and hints.get("return") is method.response
    )


def _collect(
    cls: type[Service], contract: ContractSpec, older: tuple[ContractSpec, ...] = ()
) -> ServiceSpec:
    where = cls.__qualname__
    for name, method in contract.methods.items():
        impl = getattr(cls, name, None)
        if impl is None:
            raise DefinitionError(
                f"{where} implements {contract.name} but has no method {name!r}; add "
                f"`async def {name}(self, req: {method.request.__name__}) -> "
                f"{method.response.__name__}`"
            )
        if not inspect.iscoroutinefunction(impl):
            raise DefinitionError(f"{where}.{name} must be `async def`")
        _check_signature(where, name, impl, method.request, method.response)

    dependencies: dict[str, ContractSpec] = {}
    fallbacks: dict[str, Any] = {}
    # By attribute: a subclass that re-declares a handler replaces its subscription.
    subscriptions: dict[str, Subscription] = {}
    databases: list[str] = []
    sagas: dict[str, Saga[Any]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, Use):
                dependencies[attr] = value.contract
                if value.fallback is not None:
                    fallbacks[attr] = value.fallback
            elif isinstance(value, Database):
                databases.append(attr)
            elif isinstance(value, Saga):
                sagas[attr] = value
            mark = getattr(value, _SUBSCRIBE_ATTR, None)
            if mark is not None:
                subscriptions[attr] = Subscription(attr, *mark)
    if len(set(databases)) > 1:
        raise DefinitionError(
            f"{where} declares more than one Database ({', '.join(sorted(set(databases)))}); "
            "a service owns exactly one database"
        )
    for attr, dep in dependencies.items():
        if dep.name == contract.name:
            raise DefinitionError(f"{where}.{attr}: a service cannot use its own contract")
    _check_identities(where, list(subscriptions.values()))
    database = databases[0] if databases else None
    handlers = {m: m.name for m in contract.methods.values()}
    handlers.update(_older_handlers(cls, older))
    if database is None and (subscriptions or sagas or any(c.events for c in (contract, *older))):
        raise DefinitionError(
            f"{where} publishes or consumes events or runs sagas, so it needs a database for "
            "its outbox, inbox and saga records: add `db = cleave.Database()`"
        )
    for attr, saga in sagas.items():
        if not saga.steps:
            raise DefinitionError(f"{where}.{attr}: the saga has no steps; add @{attr}.step")
    return ServiceSpec(
        cls,
        contract,
        dependencies,
        list(subscriptions.values()),
        database,
        sagas,
        fallbacks,
        older,
        handlers,
    )


def _check_identities(where: str, subscriptions: list[Subscription]) -> None:
    """Each subscription of a service has its own identity, and claims one old one at most."""
    seen: dict[str, str] = {}
    for sub in subscriptions:
        if sub.name in seen:
            raise DefinitionError(
                f"{where}.{sub.attr} and {where}.{seen[sub.name]} are both subscriptions named "
                f"{sub.name!r}; each needs its own: @cleave.subscribe({sub.event.__name__}, "
                'name="...")'
            )
        seen[sub.name] = sub.attr
    taken: dict[str, str] = {}
    for sub in subscriptions:
        if not sub.takeover:
            continue
        if sub.takeover in seen:
            raise DefinitionError(
                f"{where}.{sub.attr}: takeover={sub.takeover!r} names the current subscription "
                f"{where}.{seen[sub.takeover]}; takeover names an identity no handler has any more"
            )
        if sub.takeover in taken:
            raise DefinitionError(
                f"{where}.{sub.attr} and {where}.{taken[sub.takeover]} both take over "
                f"{sub.takeover!r}; only one subscription can continue from it"
            )
        taken[sub.takeover] = sub.attr


def _check_signature(where: str, name: str, impl: Any, request: type, response: type) -> None:
    try:
        hints = typing.get_type_hints(impl)
    except NameError:
        return  # forward references not resolvable yet; the contract is the source of truth
    params = list(inspect.signature(impl).parameters.values())[1:]
    if len(params) != 1:
        raise DefinitionError(f"{where}.{name} must take exactly one argument, the request")
    got = hints.get(params[0].name)
    if got is not None and got is not request:
        raise DefinitionError(
            f"{where}.{name} takes {getattr(got, '__name__', got)} but the contract says "
            f"{request.__name__}"
        )
    ret = hints.get("return")
    if ret is not None and ret is not response:
        raise DefinitionError(
            f"{where}.{name} returns {getattr(ret, '__name__', ret)} but the contract says "
            f"{response.__name__}"
        )


def spec_of_service(cls: Any) -> ServiceSpec:
    """The :class:`ServiceSpec` of a Service subclass."""
    spec = getattr(cls, "__cleave_service__", None)
    if not isinstance(spec, ServiceSpec):
        raise DefinitionError(
            f"{getattr(cls, '__qualname__', cls)!r} is not a service: declare it as "
            "`class Name(cleave.Service, implements=SomeContract)`"
        )
    return spec
