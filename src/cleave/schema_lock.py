"""Contract snapshots: what an app promises on the wire, as deterministic JSON.

``cleave contracts snapshot`` writes one next to ``cleave.toml``::

    {
      "cleave_lock": 1,
      "app": "shop",
      "contracts": {"orders.v1": {"name": "orders", "version": 1, "methods": {...},
                                  "events": {...}, "errors": {...}}},
      "messages": {"Line": {"fields": [{"name": "qty", "wire": "qty",
                                        "type": {"type": "int", "ge": 1, "le": 1000},
                                        "required": true, "nullable": false}, ...],
                            "array_like": false, "tag_field": null, ...}}
    }

Types are described from msgspec's own introspection
(:func:`msgspec.inspect.type_info`), so the snapshot sees exactly what the
decoder enforces: wire names, defaults, ``Meta`` constraints, unions, Literals,
enums and Struct layout. Messages are stored once, by class name, and
referenced as ``{"type": "struct", "ref": "Line"}``; :mod:`cleave.compat`
follows the references, so renaming a class is not a change. Keys are sorted
and field order is declaration order (it is the wire order of array-like
Structs), so the file diffs cleanly in git.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from cleave.app import App
from cleave.contracts import ContractSpec
from cleave.errors import ConfigError
from cleave.messages import Event

__all__ = [
    "LOCK_FILE",
    "Lock",
    "dumps",
    "read",
    "snapshot",
    "snapshot_of",
]

LOCK_FILE = "contracts.lock.json"
FORMAT = 1

#: A snapshot: plain JSON data (see the module docstring for its shape).
Lock = dict[str, Any]

_SCALARS: dict[type[msgspec.inspect.Type], str] = {
    msgspec.inspect.AnyType: "any",
    msgspec.inspect.NoneType: "none",
    msgspec.inspect.BoolType: "bool",
    msgspec.inspect.IntType: "int",
    msgspec.inspect.FloatType: "float",
    msgspec.inspect.StrType: "str",
    msgspec.inspect.BytesType: "bytes",
    msgspec.inspect.ByteArrayType: "bytes",
    msgspec.inspect.MemoryViewType: "bytes",
    msgspec.inspect.DateTimeType: "datetime",
    msgspec.inspect.TimeType: "time",
    msgspec.inspect.DateType: "date",
    msgspec.inspect.TimeDeltaType: "timedelta",
    msgspec.inspect.UUIDType: "uuid",
    msgspec.inspect.DecimalType: "decimal",
    msgspec.inspect.ExtType: "ext",
    msgspec.inspect.RawType: "raw",
}
# Collections that are all arrays on the wire; which one is informational.
_ARRAYS: dict[type[msgspec.inspect.Type], str] = {
    msgspec.inspect.ListType: "list",
    msgspec.inspect.VarTupleType: "tuple",
    msgspec.inspect.SetType: "set",
    msgspec.inspect.FrozenSetType: "frozenset",
}
_CONSTRAINTS = (
    "gt",
    "ge",
    "lt",
    "le",
    "multiple_of",
    "min_length",
    "max_length",
    "pattern",
    "tz",
)


def _canon(node: Any) -> str:
    return json.dumps(node, sort_keys=True, default=str)


class _Describer:
    """Turns msgspec type info into lock nodes, collecting Struct definitions."""

    def __init__(self) -> None:
        self.messages: dict[str, Any] = {}
        self._keys: dict[type, str] = {}

    def ref(self, cls: type) -> str:
        """The key of ``cls`` in ``messages``, describing it on first sight."""
        return self._ref(msgspec.inspect.type_info(cls))

    def _ref(self, info: Any) -> str:
        cls = info.cls
        key = self._keys.get(cls)
        if key is not None:
            return key
        key = cls.__name__
        taken = set(self._keys.values())
        if key in taken:  # two classes share a name: qualify the newcomer
            key = f"{cls.__module__}.{cls.__qualname__}"
        self._keys[cls] = key
        self.messages[key] = {}  # placed first: recursive Structs refer to themselves
        self.messages[key] = self._definition(info)
        return key

    def _definition(self, info: Any) -> dict[str, Any]:
        struct = isinstance(info, msgspec.inspect.StructType)
        fields = []
        for f in info.fields:
            entry: dict[str, Any] = {
                "name": f.name,
                "wire": f.encode_name,
                "type": self.node(f.type),
                "required": f.required,
                "nullable": _nullable(f.type),
            }
            if not f.required:
                entry["default"] = _default(f)
            fields.append(entry)
        return {
            "fields": fields,
            "array_like": bool(struct and info.array_like),
            "forbid_unknown_fields": bool(struct and info.forbid_unknown_fields),
            "omit_defaults": bool(struct and info.cls.__struct_config__.omit_defaults),
            "tag_field": info.tag_field if struct else None,
            "tag": info.tag if struct else None,
        }

    def node(self, info: Any) -> dict[str, Any]:
        """The lock node of one msgspec type."""
        if isinstance(info, msgspec.inspect.Metadata):
            return self.node(info.type)  # docs and extra JSON schema: not the wire
        kind = type(info)
        if kind in _SCALARS:
            return {"type": _SCALARS[kind], **_constraints(info)}
        if kind in _ARRAYS:
            return {
                "type": "array",
                "container": _ARRAYS[kind],
                "item": self.node(info.item_type),
                **_constraints(info),
            }
        if isinstance(info, msgspec.inspect.TupleType):
            return {"type": "tuple", "items": [self.node(t) for t in info.item_types]}
        if isinstance(info, msgspec.inspect.NamedTupleType):
            return {"type": "tuple", "items": [self.node(f.type) for f in info.fields]}
        if isinstance(info, msgspec.inspect.DictType):
            return {
                "type": "dict",
                "key": self.node(info.key_type),
                "value": self.node(info.value_type),
                **_constraints(info),
            }
        if isinstance(info, msgspec.inspect.LiteralType):
            return {"type": "literal", "values": _sorted_values(info.values)}
        if isinstance(info, msgspec.inspect.EnumType):
            values = [m.value for m in info.cls]
            return {"type": "enum", "name": info.cls.__name__, "values": _sorted_values(values)}
        if isinstance(
            info,
            msgspec.inspect.StructType
            | msgspec.inspect.DataclassType
            | msgspec.inspect.TypedDictType,
        ):
            return {"type": "struct", "ref": self._ref(info)}
        if isinstance(info, msgspec.inspect.UnionType):
            members = sorted((self.node(t) for t in info.types), key=_canon)
            return {"type": "union", "of": members}
        what = getattr(getattr(info, "cls", None), "__qualname__", None) or repr(info)
        raise ConfigError(
            f"a contract message has a field of type {what}, which msgspec cannot encode without "
            "hooks, so neither can another service; use types msgspec knows (str, int, float, "
            "Message, tuple, Literal, enum, datetime, ...)"
        )


def _constraints(info: Any) -> dict[str, Any]:
    out = {}
    for name in _CONSTRAINTS:
        value = getattr(info, name, None)
        if value is not None:
            out[name] = value
    return out


def _nullable(info: Any) -> bool:
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.NoneType):
        return True
    return isinstance(info, msgspec.inspect.UnionType) and any(
        isinstance(t, msgspec.inspect.NoneType) for t in info.types
    )


def _default(f: Any) -> Any:
    if f.default is not msgspec.NODEFAULT:
        value = f.default
    elif f.default_factory is not msgspec.NODEFAULT:
        value = f.default_factory()
    else:
        return None  # a TypedDict key that may be missing: no value stands in for it
    try:
        return msgspec.to_builtins(value)
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def _sorted_values(values: Any) -> list[Any]:
    plain = [v.value if isinstance(v, enum.Enum) else v for v in values]
    return sorted(plain, key=lambda v: (type(v).__name__, v))


def _contract(
    spec: ContractSpec, described: _Describer, consumers: Mapping[type[Event], list[str]]
) -> Any:
    methods = {
        name: {
            "request": described.ref(m.request),
            "response": described.ref(m.response),
            "idempotent": m.idempotent,
            "readonly": m.readonly,
            "deprecated": m.deprecated,
        }
        for name, m in spec.methods.items()
    }
    events = {
        f"{ev.__topic__}.v{ev.__version__}": {
            "topic": ev.__topic__,
            "version": ev.__version__,
            "subject": spec.event_subject(ev),
            "message": described.ref(ev),
            "consumers": sorted(consumers.get(ev, [])),
            "deprecated": spec.deprecated_events.get(ev),
        }
        for ev in spec.events
    }
    errors = {kind: {"http_status": e.http_status} for kind, e in spec.errors.items()}
    return {
        "name": spec.name,
        "version": spec.version,
        "deprecated": spec.deprecated,
        "methods": methods,
        "events": events,
        "errors": errors,
    }


def snapshot(app: App) -> Lock:
    """The snapshot of every contract ``app`` serves, every major of each."""
    consumers: dict[type[Event], list[str]] = {}
    for service in app.services.values():
        for sub in service.subscriptions:
            consumers.setdefault(sub.event, []).append(service.name)
    served = [c for s in app.services.values() for c in s.contracts]
    return snapshot_of(app.name, served, consumers)


def snapshot_of(
    name: str,
    contracts: Iterable[ContractSpec],
    consumers: Mapping[type[Event], list[str]] | None = None,
) -> Lock:
    """The snapshot of some contracts; ``consumers`` names the services reading each event."""
    described = _Describer()
    found: dict[str, Any] = {}
    for spec in sorted(contracts, key=lambda c: (c.name, c.version)):
        found[f"{spec.name}.v{spec.version}"] = _contract(spec, described, consumers or {})
    lock = {"cleave_lock": FORMAT, "app": name, "contracts": found, "messages": described.messages}
    # Through JSON and back: what is compared is exactly what a lock file holds.
    result: Lock = json.loads(dumps(lock))
    return result


def dumps(lock: Lock) -> str:
    """``lock`` as the text of a lock file: sorted keys, two-space indents, a final newline."""
    return json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def read(path: Path) -> Lock:
    """Read a lock file, saying what to do when it is missing or not a lock."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist; write it with `cleave contracts snapshot` and commit it"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("cleave_lock") != FORMAT:
        raise ConfigError(
            f"{path} is not a Cleave contracts lock (format {FORMAT}); "
            "write one with `cleave contracts snapshot`"
        )
    return data
