"""Contracts: the typed, versioned interface a service offers.

A contract is a :class:`typing.Protocol` of async methods, each taking one
:class:`~cleave.Message` and returning one, plus the events the service
publishes and the errors it may raise on purpose::

    @cleave.contract("billing", version=1, events=[PaymentCaptured], errors=[Declined])
    class Billing(Protocol):
        @cleave.idempotent
        async def charge(self, req: Charge) -> Receipt: ...

Callers import the contract, never the implementation. ``contract()`` only
inspects and registers: the class is returned unchanged, so an editor and
mypy see a plain Protocol.

Wire names follow from the contract: RPC subjects are
``cleave.rpc.<service>.v<major>.<method>``, event subjects
``cleave.evt.<service>.<topic>.v<major>``.

A breaking change is a new major: a second contract class with the same name
and ``version=2``. A service can serve several majors at once (see
:class:`cleave.Service`), so callers move from one to the next at their own
pace. :func:`deprecated` marks what is on its way out: a method, an event, or
a whole major; each use is logged and counted, and ``ContractSpec.deprecated``
/ ``MethodSpec.deprecated`` (the reason, or None) let tools report it.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from cleave.errors import DefinitionError, ServiceError
from cleave.messages import Event, Message, check_immutable, check_tolerant

__all__ = [
    "ContractSpec",
    "MethodSpec",
    "contract",
    "deprecated",
    "deprecation_of",
    "idempotent",
    "method_of",
    "readonly",
    "spec_of",
]

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])
D = TypeVar("D")

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SPEC_ATTR = "__cleave_contract__"
_METHOD_ATTR = "__cleave_method__"
_IDEMPOTENT_ATTR = "__cleave_idempotent__"
_READONLY_ATTR = "__cleave_readonly__"
_DEPRECATED_ATTR = "__cleave_deprecated__"


class MethodSpec:
    """One method of a contract, with everything the runtime needs to call it."""

    __slots__ = (
        "contract",
        "deprecated",
        "idempotent",
        "name",
        "qualname",
        "readonly",
        "request",
        "response",
        "store_result",
        "subject",
    )

    def __init__(
        self,
        contract: ContractSpec,
        name: str,
        request: type[Message],
        response: type[Message],
        idempotent: bool,
        *,
        store_result: bool = True,
        readonly: bool = False,
        deprecated: str | None = None,
    ) -> None:
        self.contract = contract
        self.name = name
        self.request = request
        self.response = response
        #: A repeat with the same request id has no further effect.
        self.idempotent = idempotent
        #: The framework stores the result per request id (else the method itself dedupes).
        self.store_result = idempotent and store_result
        #: The method changes nothing.
        self.readonly = readonly
        #: Why the method is deprecated (its own mark, else its contract's), or None.
        self.deprecated = deprecated
        self.qualname = f"{contract.name}.{name}"
        self.subject = f"{contract.rpc_prefix}.{name}"

    @property
    def service(self) -> str:
        return self.contract.name

    @property
    def retry_safe(self) -> bool:
        """Whether a retry after an unknown outcome is safe (idempotent or read-only)."""
        return self.idempotent or self.readonly

    def __repr__(self) -> str:
        return f"<method {self.qualname} v{self.contract.version}>"


class ContractSpec:
    """What :func:`contract` learned about a contract class."""

    def __init__(
        self,
        cls: type,
        name: str,
        version: int,
        events: tuple[type[Event], ...],
        errors: tuple[type[ServiceError], ...],
        description: str,
    ) -> None:
        self.cls = cls
        self.name = name
        self.version = version
        self.events = events
        self.errors: dict[str, type[ServiceError]] = {e.kind: e for e in errors}
        self.description = description
        self.rpc_prefix = f"cleave.rpc.{name}.v{version}"
        self.methods: dict[str, MethodSpec] = {}
        #: Why this whole major is deprecated, or None.
        self.deprecated: str | None = None

    def event_subject(self, event: type[Event]) -> str:
        """The subject ``event`` is published on by this contract's service."""
        return f"cleave.evt.{self.name}.{event.__topic__}.v{event.__version__}"

    @property
    def deprecated_events(self) -> dict[type[Event], str]:
        """The events of this contract marked :func:`deprecated`, with why."""
        marked = {ev: deprecation_of(ev) for ev in self.events}
        return {ev: reason for ev, reason in marked.items() if reason is not None}

    @property
    def stream(self) -> str:
        """The JetStream stream that holds this service's events."""
        return f"CLEAVE_{self.name.upper()}"

    def __repr__(self) -> str:
        return f"<contract {self.name} v{self.version}>"


@overload
def idempotent(fn: F, /) -> F: ...
@overload
def idempotent(fn: None = None, /, *, store: bool = True) -> Callable[[F], F]: ...
def idempotent(fn: F | None = None, /, *, store: bool = True) -> F | Callable[[F], F]:
    """Mark a contract method safe to retry with the same request id.

    By default the service stores the method's result per request id, in the
    transaction of its effect, so a retried call returns the first result
    instead of acting twice. ``store=False`` says the method dedupes by
    itself (keying its effect by ``cleave.current().request_id``, say).
    Callers' retry policies retry such methods after a timeout.
    """

    def mark(f: F) -> F:
        setattr(f, _IDEMPOTENT_ATTR, "store" if store else "self")
        return f

    return mark(fn) if fn is not None else mark


def readonly(fn: F) -> F:
    """Mark a contract method that changes nothing: callers may retry it freely."""
    setattr(fn, _READONLY_ATTR, True)
    return fn


def deprecated(*, reason: str) -> Callable[[D], D]:
    """Mark a contract method, an event, or a whole contract major as on its way out.

    ::

        @cleave.contract("billing", version=1)
        class Billing(Protocol):
            @cleave.deprecated(reason="use billing v2, whose charge names a currency")
            async def charge(self, req: Charge) -> Receipt: ...

    Nothing is wrapped: the mark is read where the contract is declared. Each
    call of a deprecated method (each delivery of a deprecated event) is
    logged, at most once a minute per caller, and counted in
    ``cleave_deprecated_calls_total``, so you see who still uses it before
    you retire it. ``reason`` says what to use instead.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise DefinitionError(
            "cleave.deprecated(reason=...) needs a reason that says what to use instead, "
            'e.g. reason="use billing v2"'
        )

    def mark(target: D) -> D:
        spec = getattr(target, _SPEC_ATTR, None)
        if isinstance(spec, ContractSpec) and spec.cls is target:
            # Above @cleave.contract: the contract is declared already; mark it and its methods.
            spec.deprecated = reason
            for method in spec.methods.values():
                method.deprecated = method.deprecated or reason
        setattr(target, _DEPRECATED_ATTR, reason)
        return target

    return mark


def deprecation_of(target: Any) -> str | None:
    """Why ``target`` (an event class, a contract class or method) is deprecated, or None."""
    if isinstance(target, type):
        reason = vars(target).get(_DEPRECATED_ATTR)
    else:
        reason = getattr(target, _DEPRECATED_ATTR, None)
    return reason if isinstance(reason, str) else None


def contract(
    name: str,
    *,
    version: int = 1,
    events: Iterable[type[Event]] = (),
    errors: Iterable[type[ServiceError]] = (),
) -> Callable[[C], C]:
    """Declare a class of async method stubs as the contract of service ``name``."""
    if not isinstance(name, str) or not NAME.match(name):
        raise DefinitionError(
            f"contract name {name!r} must be lower snake case (letters, digits, _), "
            "starting with a letter, like 'billing'"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DefinitionError(f"contract {name}: version must be a positive int, got {version!r}")

    def decorate(cls: C) -> C:
        # @cleave.deprecated below @cleave.contract marked the class already.
        whole = vars(cls).get(_DEPRECATED_ATTR)
        spec = ContractSpec(
            cls,
            name,
            version,
            _check_events(name, tuple(events)),
            _check_errors(name, tuple(errors)),
            inspect.getdoc(cls) or "",
        )
        spec.deprecated = whole if isinstance(whole, str) else None
        for attr, fn in vars(cls).items():
            if attr.startswith("_") or not callable(fn):
                continue
            method = _method_spec(spec, cls, attr, fn)
            spec.methods[attr] = method
            setattr(fn, _METHOD_ATTR, method)
        if not spec.methods:
            raise DefinitionError(
                f"contract {name} ({cls.__qualname__}) declares no methods; add at least one "
                "`async def method(self, req: Request) -> Response: ...`"
            )
        setattr(cls, _SPEC_ATTR, spec)
        return cls

    return decorate


def _method_spec(spec: ContractSpec, cls: type, attr: str, fn: Any) -> MethodSpec:
    where = f"{cls.__qualname__}.{attr}"
    if not inspect.iscoroutinefunction(fn):
        raise DefinitionError(f"{where} must be `async def`: contract methods are coroutines")
    if not NAME.match(attr):
        raise DefinitionError(f"{where}: method names must be lower snake case")
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2 or params[1].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise DefinitionError(
            f"{where} must take exactly one request message: "
            f"`async def {attr}(self, req: SomeRequest) -> SomeResponse`"
        )
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise DefinitionError(f"{where}: cannot resolve a type annotation ({exc})") from exc
    request = hints.get(params[1].name)
    response = hints.get("return")
    for role, tp in (("request", request), ("response", response)):
        if not (isinstance(tp, type) and issubclass(tp, Message)) or issubclass(tp, Event):
            raise DefinitionError(
                f"{where}: the {role} type must be a cleave.Message subclass (not an Event), "
                f"got {tp!r}"
            )
        problems = check_immutable(tp)
        if problems:
            raise DefinitionError(
                f"{where}: {tp.__name__} must be immutable all the way down: " + "; ".join(problems)
            )
        if problems := check_tolerant(tp):
            raise DefinitionError(f"{where}: " + "; ".join(problems))
    assert request is not None  # checked above, for mypy
    assert response is not None
    marked = getattr(fn, _IDEMPOTENT_ATTR, None)
    is_readonly = bool(getattr(fn, _READONLY_ATTR, False))
    if marked and is_readonly:
        raise DefinitionError(f"{where}: a method is either @idempotent or @readonly, not both")
    return MethodSpec(
        spec,
        attr,
        request,
        response,
        bool(marked),
        store_result=marked == "store",
        readonly=is_readonly,
        deprecated=getattr(fn, _DEPRECATED_ATTR, None) or spec.deprecated,
    )


def _check_events(name: str, events: tuple[type[Event], ...]) -> tuple[type[Event], ...]:
    topics: dict[tuple[str, int], type[Event]] = {}
    for ev in events:
        if not (isinstance(ev, type) and issubclass(ev, Event)) or ev is Event:
            raise DefinitionError(
                f"contract {name}: events=[...] takes Event subclasses, got {ev!r}"
            )
        problems = check_immutable(ev)
        if problems:
            raise DefinitionError(f"event {ev.__name__} must be immutable: " + "; ".join(problems))
        if problems := check_tolerant(ev):
            raise DefinitionError(f"event {ev.__name__}: " + "; ".join(problems))
        key = (ev.__topic__, ev.__version__)
        if key in topics:
            raise DefinitionError(
                f"contract {name}: events {topics[key].__name__} and {ev.__name__} share "
                f"topic {key[0]!r} v{key[1]}; give one a different topic="
            )
        topics[key] = ev
    return events


def _check_errors(
    name: str, errors: tuple[type[ServiceError], ...]
) -> tuple[type[ServiceError], ...]:
    for err in errors:
        if not (isinstance(err, type) and issubclass(err, ServiceError)):
            raise DefinitionError(
                f"contract {name}: errors=[...] takes cleave.ServiceError subclasses, got {err!r}"
            )
    return errors


def spec_of(contract_cls: Any) -> ContractSpec:
    """The :class:`ContractSpec` of a class decorated with :func:`contract`."""
    spec = getattr(contract_cls, _SPEC_ATTR, None)
    if not isinstance(spec, ContractSpec) or spec.cls is not contract_cls:
        raise DefinitionError(
            f"{getattr(contract_cls, '__qualname__', contract_cls)!r} is not a contract; "
            "decorate it with @cleave.contract('name', version=1)"
        )
    return spec


def method_of(fn: Any) -> MethodSpec:
    """The :class:`MethodSpec` of a contract method, e.g. ``method_of(Billing.charge)``."""
    spec = getattr(fn, _METHOD_ATTR, None)
    if not isinstance(spec, MethodSpec):
        raise DefinitionError(
            f"{getattr(fn, '__qualname__', fn)!r} is not a method of a @cleave.contract class"
        )
    return spec
