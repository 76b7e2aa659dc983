"""Messages and events: the only things that cross a service boundary.

A :class:`Message` is a frozen, keyword-only :class:`msgspec.Struct`::

    class Charge(cleave.Message):
        order_id: str
        amount_cents: Annotated[int, msgspec.Meta(gt=0)]

Frozen all the way down: a monolith call hands the caller's object to the
callee by reference, so neither side may be able to change what the other
holds. Collections are therefore tuples or frozensets, never lists, dicts or
sets (:func:`check_immutable` says so when a contract is declared).

An :class:`Event` is a Message that a service publishes and others consume.
Its topic defaults to the class name in snake case, its major version to 1::

    class PaymentCaptured(cleave.Event):                 # topic "payment_captured"
        order_id: str

    class OrderPlaced(cleave.Event, topic="order_placed", version=2):
        order_id: str

The codecs here are the single place where bytes become messages: MessagePack
on the wire, JSON at the HTTP edge. Decoders are cached per type.
"""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import msgspec
from typing_extensions import dataclass_transform

from cleave.errors import DefinitionError

__all__ = [
    "Event",
    "Message",
    "check_immutable",
    "check_tolerant",
    "from_json",
    "from_msgpack",
    "to_json",
    "to_msgpack",
]

M = TypeVar("M")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_TOPIC = re.compile(r"^[a-z][a-z0-9_]*$")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(msgspec.field,))
class MessageMeta(msgspec.StructMeta):
    """Metaclass of messages: frozen and keyword-only by default, event topics."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        /,
        **config: Any,
    ) -> MessageMeta:
        topic = config.pop("topic", None)
        version = config.pop("version", None)
        if config.get("frozen", True) is not True:
            raise TypeError(
                f"message {name} cannot be declared with frozen=False: messages are shared "
                "by reference between services in one process, so they must be immutable"
            )
        config["frozen"] = True
        config.setdefault("kw_only", True)
        cls: MessageMeta = super().__new__(mcls, name, bases, namespace, **config)
        if cls.__struct_config__.forbid_unknown_fields:
            raise DefinitionError(_FORBIDS.format(name))
        is_event = any(
            isinstance(b, MessageMeta) and b.__dict__.get("_is_event_root") for b in cls.__mro__[1:]
        )
        if not is_event:
            if topic is not None or version is not None:
                raise TypeError(
                    f"{name}: topic= and version= apply to events; derive it from cleave.Event"
                )
            return cls
        topic = _snake(name) if topic is None else topic
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise TypeError(
                f"event {name}: topic {topic!r} must be lower snake case, like 'order_placed'"
            )
        version = 1 if version is None else version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise TypeError(f"event {name}: version must be a positive int, got {version!r}")
        cls.__topic__ = topic  # type: ignore[attr-defined]
        cls.__version__ = version  # type: ignore[attr-defined]
        return cls


class Message(msgspec.Struct, metaclass=MessageMeta):
    """Base of every request, response and event: a frozen, keyword-only Struct."""


class Event(Message):
    """A message a service publishes and others consume, at least once.

    Consumers process it effectively once: the framework records its id in the
    consumer's inbox in the same transaction as the handler's effects.
    """

    _is_event_root: ClassVar[bool] = True
    __topic__: ClassVar[str]
    __version__: ClassVar[int]

    if TYPE_CHECKING:

        def __init_subclass__(cls, *, topic: str = ..., version: int = ..., **kw: Any) -> None: ...


def check_immutable(cls: type[Message]) -> list[str]:
    """Return one line per field of ``cls`` (recursively) whose type is mutable."""
    problems: list[str] = []
    seen: set[type] = set()

    def walk(info: msgspec.inspect.Type, where: str) -> None:
        if isinstance(info, msgspec.inspect.ListType | msgspec.inspect.SetType):
            kind = "list" if isinstance(info, msgspec.inspect.ListType) else "set"
            fix = "tuple[..., ...]" if kind == "list" else "frozenset[...]"
            problems.append(f"{where} is a {kind}; use {fix}")
        elif isinstance(info, msgspec.inspect.DictType):
            problems.append(f"{where} is a dict; use a Message or tuple of pairs")
        elif isinstance(info, msgspec.inspect.ByteArrayType):
            problems.append(f"{where} is a bytearray; use bytes")
        elif isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                return
            seen.add(info.cls)
            if not info.cls.__struct_config__.frozen:
                problems.append(f"{where} is {info.cls.__name__}, a Struct that is not frozen")
            for f in info.fields:
                walk(f.type, f"{info.cls.__name__}.{f.name}")
        elif isinstance(info, msgspec.inspect.VarTupleType | msgspec.inspect.FrozenSetType):
            walk(info.item_type, where + "[]")
        elif isinstance(info, msgspec.inspect.TupleType):
            for i, t in enumerate(info.item_types):
                walk(t, f"{where}[{i}]")
        elif isinstance(info, msgspec.inspect.UnionType):
            for t in info.types:
                walk(t, where)

    walk(msgspec.inspect.type_info(cls), cls.__name__)
    return problems


_FORBIDS = (
    "message {} cannot forbid unknown fields: a reader must ignore the fields a newer "
    "writer adds, or adding a field with a default would break every older reader; "
    "drop forbid_unknown_fields=True"
)


def check_tolerant(cls: type[Message]) -> list[str]:
    """Return one line per Struct reachable from ``cls`` that forbids unknown fields.

    Messages evolve by adding fields with defaults; that is only safe when every
    reader ignores fields it does not know (see docs/contracts.md).
    """
    problems: list[str] = []
    seen: set[type] = set()

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                return
            seen.add(info.cls)
            if info.forbid_unknown_fields:
                problems.append(_FORBIDS.format(info.cls.__name__))
            for f in info.fields:
                walk(f.type)
        elif isinstance(info, msgspec.inspect.Metadata):
            walk(info.type)
        else:
            for child in ("item_type", "key_type", "value_type"):
                if isinstance(sub := getattr(info, child, None), msgspec.inspect.Type):
                    walk(sub)
            for sub in getattr(info, "item_types", ()) or getattr(info, "types", ()):
                walk(sub)

    walk(msgspec.inspect.type_info(cls))
    return problems


_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()

to_msgpack = _msgpack_encoder.encode
to_json = _json_encoder.encode


@cache
def _msgpack_decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(tp)


@cache
def _json_decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


def from_msgpack(data: bytes | memoryview, tp: type[M]) -> M:
    """Decode MessagePack ``data`` as ``tp``; raises :class:`msgspec.DecodeError`."""
    result: M = _msgpack_decoder(cast(Any, tp)).decode(data)
    return result


def from_json(data: bytes | str, tp: type[M]) -> M:
    """Decode JSON ``data`` as ``tp``; raises :class:`msgspec.DecodeError`."""
    result: M = _json_decoder(cast(Any, tp)).decode(data)
    return result
