"""Cleave spans as OpenTelemetry spans, for the OTLP exporter."""

from __future__ import annotations

from functools import cache

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from cleave.observability.tracing import Span

__all__ = ["to_readable"]

_KINDS = {
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
    "internal": SpanKind.INTERNAL,
}
_SCOPE = InstrumentationScope("cleave")


@cache
def _resource(service: str) -> Resource:
    return Resource.create({"service.name": service, "service.namespace": "cleave"})


def to_readable(span: Span) -> ReadableSpan:
    context = SpanContext(
        int(span.trace_id, 16),
        int(span.span_id, 16),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    parent = (
        SpanContext(
            int(span.trace_id, 16),
            int(span.parent_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        if span.parent_id
        else None
    )
    status = Status(StatusCode.ERROR, span.error) if span.error else Status(StatusCode.OK)
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=_resource(span.service),
        attributes={k: v for k, v in span.attributes.items() if isinstance(v, str | int | float)},
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        status=status,
        start_time=int(span.start * 1e9),
        end_time=int(span.end * 1e9),
        instrumentation_scope=_SCOPE,
    )
