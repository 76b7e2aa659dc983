"""Traces: recording, sampling, search, OTLP export, and continuity in both placements."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cleave.observability.tracing import SERVER, Tracer, id_attributes, summaries, tracer

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_child_joins_its_parents_trace() -> None:
    t = Tracer()
    span = t.start("op", SERVER, "svc", PARENT)
    assert span is not None
    assert span.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_id == "b7ad6b7169203331"
    assert span.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    t.finish(span, "boom")
    [recorded] = t.trace(span.trace_id)
    assert (recorded["error"], recorded["service"]) == ("boom", "svc")


def test_an_unsampled_trace_records_nothing() -> None:
    t = Tracer()
    assert t.start("op", SERVER, "svc", PARENT[:-2] + "00") is None
    t.configure(sample_rate=0.0)
    assert t.start("op", SERVER, "svc") is None


def test_search_finds_traces_by_id_attributes() -> None:
    t = Tracer()
    for order in ("ord_a", "ord_b"):
        root = t.start("POST /v1/orders", SERVER, "gateway")
        assert root is not None
        root.attributes["order_id"] = order
        child = t.start("orders.place_order", SERVER, "orders", root.traceparent)
        assert child is not None
        t.finish(child, "payment declined" if order == "ord_b" else "")
        t.finish(root)
    [found] = t.search("ord_b")
    assert found["name"] == "POST /v1/orders"
    assert found["errors"] == ["orders orders.place_order: payment declined"]
    assert "ord_b" in found["ids"]
    assert len(t.search()) == 2
    assert summaries([], 5) == []


def test_id_attributes_copy_string_ids_only() -> None:
    import cleave

    class Thing(cleave.Message):
        order_id: str
        account_id: str
        qty_id: int
        name: str

    into: dict[str, Any] = {}
    id_attributes(Thing(order_id="o", account_id="a", qty_id=3, name="n"), into)
    assert into == {"order_id": "o", "account_id": "a"}


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []  # noqa: RUF012 - shared on purpose, read by the test

    def do_POST(self) -> None:
        self.received.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Collector.received = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield _Collector.received
    server.shutdown()


def test_spans_are_exported_over_otlp(otlp: list[bytes]) -> None:
    import time

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    t = Tracer()
    t.configure()
    span = t.start("billing.charge", SERVER, "billing", PARENT)
    assert span is not None
    span.attributes["order_id"] = "ord_x"
    t.finish(span, "declined")
    deadline = time.monotonic() + 20
    while not otlp and time.monotonic() < deadline:
        time.sleep(0.05)
    assert t.export is not None
    t.export.stop()
    request = ExportTraceServiceRequest()
    request.ParseFromString(otlp[0])
    [resource_spans] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "billing"
    [exported] = resource_spans.scope_spans[0].spans
    assert exported.name == "billing.charge"
    assert exported.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert exported.status.message == "declined"


@pytest.fixture
def cleave_app() -> Any:
    from shop.app import app

    return app


@pytest.fixture
def shop(cleave_harness: Any) -> Any:
    """The shop in each placement (the pytest plugin's harness)."""
    return cleave_harness


async def test_one_trace_from_the_gateway_to_the_shipment(shop: Any) -> None:
    """gateway -> orders -> billing -> OrderConfirmed (outbox, relay) -> shipping, one trace."""
    transport = httpx.ASGITransport(app=shop.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        resp = await http.post(
            "/v1/orders",
            json={"account_id": "acc-alice", "items": [{"sku": "MS-01", "qty": 1}]},
            headers={"authorization": f"Bearer {shop.token('acc-alice')}"},
        )
    order = resp.json()
    assert order["status"] == "confirmed"
    await shop.settle()
    [summary] = tracer.search(order["order_id"])
    spans = tracer.trace(summary["trace_id"])
    names = {(s["service"], s["name"]) for s in spans}
    for expected in [
        ("gateway", "POST /v1/orders"),
        ("gateway", "orders.place_order"),  # the client side
        ("orders", "orders.place_order"),  # the server side
        ("billing", "billing.charge"),
        ("orders", "publish order_confirmed"),
        ("orders", "relay order_confirmed"),
        ("shipping", "handle order_confirmed"),
        ("shipping", "publish shipment_created"),
        ("notifications", "handle shipment_created"),
    ]:
        assert expected in names, f"{expected} missing from the trace: {sorted(names)}"
    by_id = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_id"] not in by_id]
    assert [r["name"] for r in roots] == ["POST /v1/orders"]  # every other span has its parent
    assert resp.headers["traceparent"].split("-")[1] == summary["trace_id"]
    assert not summary["errors"]
