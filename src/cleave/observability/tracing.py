"""Tracing: a span per gateway request, call (both sides), event publish, relay and delivery.

Spans follow the W3C trace context: the ``traceparent`` of the span that is
current travels with every call (in the RPC envelope), with every event (in
the outbox row, then the message headers) and into every saga step, so an
event handled minutes later, in another process, joins the trace that
caused it.

Recording is Cleave's own and cheap (about 1 us a span, against 9 to 14 us
for the OpenTelemetry SDK's, measured here), because the monolith makes a
call in about 2 us and traces every one of them. Finished spans go to a
bounded in-memory store that the dashboard reads: the most recent
``[observability] spans`` of the process, older ones giving way. When
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set they are also queued for export over OTLP (``service.name`` is the
service that recorded the span): see :mod:`cleave.observability.otlp`, which
counts every span it cannot export. Spans made with the OpenTelemetry API
inside a handler join the handler's trace, and Cleave's spans can go to an
OpenTelemetry SDK processor: see :mod:`cleave.observability.otel`.
"""

from __future__ import annotations

import collections
import os
import random
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cleave.observability.otel import SpanBridge
    from cleave.observability.otlp import OtlpExport

__all__ = [
    "CLIENT",
    "CONSUMER",
    "INTERNAL",
    "PRODUCER",
    "SERVER",
    "Span",
    "Tracer",
    "id_attributes",
    "summaries",
    "summarize",
    "tracer",
]

SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL = (
    "server",
    "client",
    "producer",
    "consumer",
    "internal",
)

_getrandbits = random.getrandbits


class Span:
    """One timed operation of one service."""

    __slots__ = (
        "attributes",
        "end",
        "error",
        "kind",
        "name",
        "parent_id",
        "service",
        "span_id",
        "start",
        "trace_id",
    )

    def __init__(
        self, trace_id: str, span_id: str, parent_id: str, name: str, kind: str, service: str
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.service = service
        self.start = time.time()
        self.end = 0.0
        self.error = ""
        self.attributes: dict[str, Any] = {}

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "kind": self.kind,
            "service": self.service,
            "start": self.start,
            "end": self.end,
            "duration_ms": round((self.end - self.start) * 1000, 3) if self.end else None,
            "error": self.error,
            "attributes": self.attributes,
        }


class Tracer:
    """Records spans for this process into a bounded store (and OTLP, when configured)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.enabled = True
        self.sample_rate = 1.0
        self.spans: collections.deque[Span] = collections.deque(maxlen=capacity)
        #: Where finished spans are also sent, if anywhere (OTLP; see ``configure``).
        self.export: OtlpExport | None = None
        #: An OpenTelemetry SDK processor finished spans also go to (see ``otel.export_to``).
        self.bridge: SpanBridge | None = None

    def configure(
        self, *, enabled: bool = True, sample_rate: float = 1.0, capacity: int = 20_000
    ) -> None:
        """Apply ``[observability]``; start the OTLP export if an endpoint is set."""
        self.enabled = enabled
        self.sample_rate = sample_rate
        self.spans = collections.deque(self.spans, maxlen=capacity)
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        if endpoint and self.export is None:
            from cleave.observability.otlp import OtlpExport

            export = OtlpExport.from_env()
            export.start()
            self.export = export

    def start(self, name: str, kind: str, service: str, parent: str = "") -> Span | None:
        """A new span under ``parent`` (a traceparent), or None if this trace is not sampled.

        With no parent a new trace begins (sampled at ``sample_rate``).
        """
        if parent and len(parent) == 55:
            if parent[54] != "1":
                return None  # the trace was not sampled upstream
            trace_id = parent[3:35]
            parent_id = parent[36:52]
        else:
            if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
                return None
            trace_id = f"{_getrandbits(128):032x}"
            parent_id = ""
        return Span(trace_id, f"{_getrandbits(64):016x}", parent_id, name, kind, service)

    def finish(self, span: Span, error: str = "") -> None:
        span.end = time.time()
        span.error = error
        self.spans.append(span)
        export = self.export
        if export is not None:
            export.offer(span)
        bridge = self.bridge
        if bridge is not None:
            bridge.offer(span)

    # -- reading ---------------------------------------------------------------------------

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of one trace recorded in this process."""
        return [s.to_dict() for s in list(self.spans) if s.trace_id == trace_id]

    def recent(self, query: str = "", limit: int = 50) -> list[dict[str, Any]]:
        """The spans of the ``limit`` most recent traces that ``query`` matches (all if empty).

        A query matches a trace id (or its start) or any attribute value: an
        order id, an account id, a request id.
        """
        spans = list(self.spans)
        wanted = {s.trace_id for s in spans if _matches(s, query)} if query else None
        traces: list[str] = []
        seen: set[str] = set()
        for s in reversed(spans):
            if s.trace_id not in seen and (wanted is None or s.trace_id in wanted):
                seen.add(s.trace_id)
                traces.append(s.trace_id)
                if len(traces) >= limit:
                    break
        chosen = set(traces)
        return [s.to_dict() for s in spans if s.trace_id in chosen]

    def search(self, query: str = "", limit: int = 50) -> list[dict[str, Any]]:
        """Summaries of recent traces, newest first (see :func:`summaries`)."""
        return summaries(self.recent(query, limit), limit)


def summaries(spans: list[dict[str, Any]], limit: int = 50) -> list[dict[str, Any]]:
    """One summary per trace in ``spans`` (from any number of processes), newest first."""
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], []).append(s)
    out = [summarize(group) for group in by_trace.values()]
    out.sort(key=lambda t: t["start"], reverse=True)
    return out[:limit]


def summarize(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """What a trace did: its root, duration, services, errors and the ids it touched."""
    spans = sorted(spans, key=lambda s: s["start"])
    ids_in = {s["span_id"] for s in spans}
    root = next((s for s in spans if not s["parent_id"] or s["parent_id"] not in ids_in), spans[0])
    ids = sorted({str(v) for s in spans for k, v in s["attributes"].items() if k.endswith("_id")})
    end = max((s["end"] for s in spans), default=root["end"])
    return {
        "trace_id": root["trace_id"],
        "name": root["name"],
        "service": root["service"],
        "start": spans[0]["start"],
        "duration_ms": round((end - spans[0]["start"]) * 1000, 3),
        "spans": len(spans),
        "services": sorted({s["service"] for s in spans}),
        "errors": [f"{s['service']} {s['name']}: {s['error']}" for s in spans if s["error"]],
        "ids": ids[:12],
    }


def _matches(span: Span, query: str) -> bool:
    if span.trace_id.startswith(query):
        return True
    return any(str(v) == query for v in span.attributes.values())


_ID_FIELDS: dict[type, tuple[str, ...]] = {}


def id_attributes(message: object, into: dict[str, Any]) -> None:
    """Copy a message's top-level ``*_id`` string fields into span attributes."""
    tp = type(message)
    fields = _ID_FIELDS.get(tp)
    if fields is None:
        names = getattr(tp, "__struct_fields__", ())
        fields = _ID_FIELDS[tp] = tuple(n for n in names if n.endswith("_id"))
    for name in fields:
        value = getattr(message, name)
        if isinstance(value, str):
            into[name] = value


#: The tracer of this process.
tracer = Tracer()
