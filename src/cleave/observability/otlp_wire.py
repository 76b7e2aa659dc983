"""Cleave spans as OTLP/protobuf bytes (an ``ExportTraceServiceRequest``), written directly.

OpenTelemetry's own path, a ``ReadableSpan`` per span and then the SDK's
protobuf encoder, costs about 45 us a span on this machine: at the 30,000
spans/s that one process records under the remote-call benchmark, more than
a whole core. A span has few fields, so they are written here by hand, in
a few microseconds. The bytes decode to the same message as the SDK's
(``tests/observability/test_otlp.py`` compares the two), so any OTLP/HTTP
receiver takes them.

Wire format reminder: every field is a tag (``field << 3 | wire type``)
then a varint, a fixed 4 or 8 bytes, or a length-prefixed payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from opentelemetry.sdk.resources import Resource

from cleave.observability.tracing import Span

__all__ = ["encode", "resource_of"]

# SpanKind of opentelemetry/proto/trace/v1/trace.proto, by Cleave's kind names.
_KIND = {
    "internal": b"\x30\x01",
    "server": b"\x30\x02",
    "client": b"\x30\x03",
    "producer": b"\x30\x04",
    "consumer": b"\x30\x05",
}
_STATUS_OK = b"\x7a\x02\x18\x01"  # Status{code: STATUS_CODE_OK}
# Span.flags (field 16, fixed32): "is_remote is known" (0x100), and set (0x200) for a parent,
# as the SDK's exporter writes them for the spans Cleave hands it.
_FLAGS_ROOT = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_CHILD = b"\x85\x01" + struct.pack("<I", 0x300)
_SCOPE = b"\x0a\x08\x0a\x06cleave"  # ScopeSpans.scope = InstrumentationScope{name: "cleave"}
_TIMES = struct.Struct("<BQBQ")  # start (field 7) and end (field 8), fixed64 nanoseconds
_DOUBLE = struct.Struct("<d")
_INT64 = (-(1 << 63), (1 << 63) - 1)


# One-byte varints, looked up rather than built: most lengths in a span are below 128.
_BYTE = [bytes((i,)) for i in range(128)]
_CACHE_MAX = 4096  # names and keys repeat (methods, routes, event types): encode each once


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: a message, a string or bytes."""
    n = len(payload)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _any_value(value: Any) -> bytes | None:
    """An ``AnyValue``, or None for a value OTLP cannot carry (it is left out)."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8", "replace"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            return _field(b"\x0a", str(value).encode())
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    return None


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """``KeyValue.key``, encoded."""
    encoded = _KEYS.get(key)
    if encoded is None:
        if len(_KEYS) >= _CACHE_MAX:
            _KEYS.clear()
        encoded = _KEYS[key] = _field(b"\x0a", key.encode("utf-8", "replace"))
    return encoded


def _resource_attributes(attributes: Any) -> list[bytes]:
    out = []
    for key, value in attributes.items():
        if isinstance(value, Sequence) and not isinstance(value, str):
            items = [e for e in map(_any_value, value) if e is not None]
            encoded: bytes | None = _field(b"\x2a", b"".join(_field(b"\x0a", e) for e in items))
        else:
            encoded = _any_value(value)
        if encoded is not None:
            out.append(_field(b"\x0a", _key(key) + _field(b"\x12", encoded)))
    return out


@cache
def resource_of(service: str) -> Resource:
    """The OpenTelemetry resource of ``service``'s spans (the SDK's defaults and
    ``OTEL_RESOURCE_ATTRIBUTES``, then ``service.name``), one per service and process."""
    return Resource.create({"service.name": service, "service.namespace": "cleave"})


@cache
def _resource_field(service: str) -> bytes:
    """``ResourceSpans.resource`` for ``service``, encoded once."""
    return _field(b"\x0a", b"".join(_resource_attributes(resource_of(service).attributes)))


_HEADS: dict[tuple[str, str], bytes] = {}


def _head(name: str, kind: str) -> bytes:
    """``Span.name`` and ``Span.kind``, encoded."""
    encoded = _HEADS.get((name, kind))
    if encoded is None:
        if len(_HEADS) >= _CACHE_MAX:
            _HEADS.clear()
        encoded = _field(b"\x2a", name.encode("utf-8", "replace")) + _KIND.get(kind, b"\x30\x01")
        _HEADS[(name, kind)] = encoded
    return encoded


def _span(span: Span, fromhex: Any = bytes.fromhex) -> bytes:
    """One span as field 2 of ``ScopeSpans``."""
    # The ids are hex: one fromhex over the ids and their tags writes them all at once.
    if span.parent_id:
        ids = fromhex(f"0a10{span.trace_id}1208{span.span_id}2208{span.parent_id}")
        flags = _FLAGS_CHILD
    else:
        ids = fromhex(f"0a10{span.trace_id}1208{span.span_id}")
        flags = _FLAGS_ROOT
    parts = [
        ids,
        _HEADS.get((span.name, span.kind)) or _head(span.name, span.kind),
        _TIMES.pack(0x39, int(span.start * 1e9), 0x41, int(span.end * 1e9)),
        flags,
    ]
    for key, value in span.attributes.items():
        if type(value) is str:  # the usual case: an id
            encoded: bytes | None = _field(b"\x0a", value.encode("utf-8", "replace"))
        else:
            encoded = _any_value(value)
        if encoded is not None:
            parts.append(_field(b"\x4a", _key(key) + _field(b"\x12", encoded)))
    if span.error:
        message = _field(b"\x12", span.error.encode("utf-8", "replace"))
        parts.append(_field(b"\x7a", message + b"\x18\x02"))
    else:
        parts.append(_STATUS_OK)
    return _field(b"\x12", b"".join(parts))


def encode(spans: Iterable[Span]) -> bytes:
    """An OTLP ``ExportTraceServiceRequest`` holding ``spans``, one resource per service."""
    by_service: dict[str, list[bytes]] = {}
    for span in spans:
        encoded = by_service.get(span.service)
        if encoded is None:
            encoded = by_service[span.service] = []
        encoded.append(_span(span))
    return b"".join(
        _field(b"\x0a", _resource_field(service) + _field(b"\x12", _SCOPE + b"".join(encoded)))
        for service, encoded in by_service.items()
    )
