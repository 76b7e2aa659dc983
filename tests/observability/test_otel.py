"""OpenTelemetry interop: OTel spans made in handlers join Cleave's trace; Cleave's reach OTel.

One trace in the SDK's in-memory exporter, with every parent right, in both
placements: the user's own span, httpx's instrumentation inside it, a nested
Cleave call to another service and that service's own OTel span.
"""

from __future__ import annotations

import http.server
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import cleave
from cleave.errors import ConfigError
from cleave.observability import otel
from cleave.observability.tracing import tracer
from cleave.testing import Harness, NatsHarness

provider = TracerProvider()
otel_tracer = provider.get_tracer("tests")
#: The user's exporter: the SDK's spans and, through the bridge, Cleave's.
exporter = InMemorySpanExporter()
processor = SimpleSpanProcessor(exporter)
provider.add_span_processor(processor)


class Visit(cleave.Message):
    url: str


class Visited(cleave.Message):
    status: int
    text: str = ""


@cleave.contract("edge", version=1)
class Edge(Protocol):
    async def visit(self, req: Visit) -> Visited: ...


@cleave.contract("inner", version=1)
class Inner(Protocol):
    async def work(self, req: Visit) -> Visited: ...


class EdgeService(cleave.Service, implements=Edge):
    inner = cleave.use(Inner)

    async def visit(self, req: Visit) -> Visited:
        with otel_tracer.start_as_current_span("edge.fetch"):
            async with httpx.AsyncClient() as client:
                HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
                resp = await client.get(req.url)
            inner = await self.inner.work(req)
        return Visited(status=resp.status_code, text=inner.text)


class InnerService(cleave.Service, implements=Inner):
    async def work(self, req: Visit) -> Visited:
        with otel_tracer.start_as_current_span("inner.compute") as span:
            span.set_attribute("url", req.url)
        return Visited(status=200, text="done")


app = cleave.App("oteltest", services=[EdgeService, InnerService])


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/page"
    server.shutdown()
    server.server_close()


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    otel.export_to(processor)
    try:
        yield exporter
    finally:
        tracer.bridge = None  # not export_to(None): that shuts the shared processor down


@pytest.fixture(params=["monolith", pytest.param("nats", marks=pytest.mark.nats)])
async def placed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "monolith":
        async with Harness(app, tmp_path) as h:
            yield h
    else:
        async with NatsHarness(app, request.getfixturevalue("nats_url"), tmp_path) as h:
            yield h


def _by_name(spans: tuple[ReadableSpan, ...], name: str, kind: str = "") -> ReadableSpan:
    found = [s for s in spans if s.name == name and (not kind or s.kind.name.lower() == kind)]
    assert len(found) == 1, f"{name} {kind}: {[(s.name, s.kind) for s in spans]}"
    return found[0]


def _parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


async def test_otel_spans_in_handlers_join_the_cleave_trace(
    placed: Any, site: str, exported: InMemorySpanExporter
) -> None:
    result = await placed.client(Edge).visit(Visit(url=site))
    assert (result.status, result.text) == (200, "done")
    spans = exported.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1, "one trace, not several"
    client = _by_name(spans, "edge.visit", "client")
    edge = _by_name(spans, "edge.visit", "server")
    fetch = _by_name(spans, "edge.fetch")
    get = _by_name(spans, "GET")  # httpx's instrumentation
    inner_client = _by_name(spans, "inner.work", "client")
    inner = _by_name(spans, "inner.work", "server")
    compute = _by_name(spans, "inner.compute")
    assert client.parent is None
    assert _parent_of(edge) == client.context.span_id
    assert _parent_of(fetch) == edge.context.span_id  # the user's span: under the handler's
    assert _parent_of(get) == fetch.context.span_id  # the library's: under the user's
    assert _parent_of(inner_client) == edge.context.span_id
    assert _parent_of(inner) == inner_client.context.span_id
    assert _parent_of(compute) == inner.context.span_id  # the nested call's, not edge.fetch
    assert compute.attributes is not None
    assert compute.attributes["url"] == site
    assert edge.resource.attributes["service.name"] == "edge"
    # and Cleave's own store (the dashboard) has the same trace
    assert {s["span_id"] for s in tracer.trace(f"{edge.context.trace_id:032x}")} >= {
        f"{edge.context.span_id:016x}",
        f"{inner.context.span_id:016x}",
    }


def test_outside_any_call_the_otel_context_is_left_alone() -> None:
    otel.expose()
    with otel_tracer.start_as_current_span("alone") as span:
        assert span.get_span_context().is_valid
        assert otel_context.get_current() is otel_context.get_current()
    assert span.parent is None  # type: ignore[attr-defined]


def test_export_to_refuses_what_is_not_a_processor() -> None:
    with pytest.raises(ConfigError, match="SpanProcessor or SpanExporter, got str"):
        otel.export_to("console")  # type: ignore[arg-type]


def test_the_setting_names_a_function(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="'module:function'"):
        otel.configure("no_colon")
    with pytest.raises(ConfigError, match="cannot import it"):
        otel.configure("no_such_module_here:setup")
    exporter = InMemorySpanExporter()
    module = types.ModuleType("cleave_otel_setup_for_test")
    module.setup = lambda: exporter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    otel.configure(f"{module.__name__}:setup")
    try:
        assert tracer.bridge is not None
        span = tracer.start("op", "server", "svc")
        assert span is not None
        tracer.finish(span)
        tracer.bridge.processor.force_flush()
        [got] = exporter.get_finished_spans()
        assert (got.name, got.resource.attributes["service.name"]) == ("op", "svc")
    finally:
        otel.export_to(None)
