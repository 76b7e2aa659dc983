"""OTLP export against a real receiver on 127.0.0.1: every span exported or counted dropped."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cleave.errors import ConfigError
from cleave.observability.metrics import SpanCollector, registry_for, render
from cleave.observability.otlp import OtlpExport, to_readable
from cleave.observability.otlp_wire import encode
from cleave.observability.tracing import CLIENT, SERVER, Span, Tracer

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

#: What one process of the remote-call benchmark records with tracing on: a span per call,
#: at about 30,000 calls/s (docs/benchmarks.md); the export must keep up with it.
BENCHMARK_SPANS_PER_S = 30_000


class Receiver:
    """An OTLP/HTTP receiver that counts the spans it is sent; ``gate`` holds its answers."""

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self.gate = threading.Event()
        self.gate.set()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.gate.wait(30)
                receiver.spans += sum(
                    len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
                )
                receiver.requests += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    threading.Thread(target=r.server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.url)
    yield r
    r.gate.set()
    r.server.shutdown()
    r.server.server_close()


def record(tracer: Tracer, n: int, service: str = "orders") -> None:
    for i in range(n):
        span = tracer.start("orders.place_order", SERVER, service, PARENT)
        assert span is not None
        span.attributes["request_id"] = f"req_{i}"
        tracer.finish(span)


def exporting(export: OtlpExport) -> Tracer:
    t = Tracer()
    export.start()
    t.export = export
    return t


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not true after {timeout}s: {condition}"
        time.sleep(0.01)


def dropped_metric(export: OtlpExport) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpanCollector(lambda: export))
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(render(registry).decode())
        for s in family.samples
        if s.name == "cleave_spans_dropped_total"
    }


def test_past_a_full_queue_spans_are_counted_dropped_and_warned_once_per_period(
    receiver: Receiver,
) -> None:
    # The receiver holds its answer: the exporter is stuck on its first batch, the queue fills.
    receiver.gate.clear()
    export = OtlpExport(queue_size=1000, batch_size=200, delay=0.02, warn_every=0.5)
    t = exporting(export)
    recorded = 0
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        while time.monotonic() - started < 1.6:  # three periods and more of dropping
            record(t, 500)
            recorded += 500
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        receiver.gate.set()
        assert export.flush(timeout=20)
    dropped = export.dropped["queue_full"]
    assert dropped >= recorded - 1000 - 200  # all but a queue and a batch
    assert export.exported + dropped + export.dropped["export_failed"] == recorded
    assert receiver.spans == export.exported
    assert dropped_metric(export) == {"queue_full": dropped, "export_failed": 0}

    warnings = [e for e in logs if e["event"] == "spans dropped"]
    # One at the first drop, then at most one per 0.5 s period.
    assert 2 <= len(warnings) <= int(elapsed / 0.5) + 1, warnings
    assert sum(w["queue_full"] for w in warnings) <= dropped
    assert "OTEL_BSP_MAX_QUEUE_SIZE" in warnings[0]["detail"]
    assert "export queue (1000 spans) was full" in warnings[0]["detail"]
    export.stop()


def test_a_refused_export_is_counted_dropped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(400)  # not retried: the batch is lost
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        export = OtlpExport(delay=0.02, warn_every=60)
        t = exporting(export)
        with structlog.testing.capture_logs() as logs:
            record(t, 300)
            assert export.flush(timeout=20)
            wait_for(lambda: any(e["event"] == "spans dropped" for e in logs))
        export.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert export.dropped == {"queue_full": 0, "export_failed": 300}
    assert dropped_metric(export)["export_failed"] == 300
    [warning] = [e for e in logs if e["event"] == "spans dropped"]
    assert "HTTP 400" in warning["detail"]
    assert "/v1/traces" in warning["detail"]


def test_at_the_benchmarks_rate_nothing_is_dropped(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    export = OtlpExport.from_env()  # the defaults, as shipped
    t = exporting(export)
    seconds, tick = 3.0, 0.01
    total = int(BENCHMARK_SPANS_PER_S * seconds)
    recorded = 0
    started = time.monotonic()
    while recorded < total:  # on schedule: what is due by now, in 10 ms steps
        due = min(total, int((time.monotonic() - started) * BENCHMARK_SPANS_PER_S) + 1)
        record(t, due - recorded)
        recorded = due
        time.sleep(tick)
    assert export.flush(timeout=20)
    assert export.dropped == {"queue_full": 0, "export_failed": 0}
    assert export.exported == receiver.spans == recorded
    export.stop()


def test_bad_settings_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
    with pytest.raises(ConfigError, match="OTEL_BSP_MAX_QUEUE_SIZE='lots' is not a whole number"):
        OtlpExport.from_env()
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "500")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    export = OtlpExport.from_env()
    assert (export.queue_size, export.batch_size, export.delay) == (500, 500, 0.1)


def test_the_metric_is_served_with_the_others() -> None:
    text = render(registry_for()).decode()
    assert 'cleave_spans_dropped_total{reason="queue_full"}' in text
    assert "cleave_spans_exported_total" in text


def test_the_wire_encoding_is_the_sdks_message() -> None:
    """The hand-written encoder and OpenTelemetry's agree on every field."""
    t = Tracer()
    spans: list[Span] = []
    for i, (kind, parent, service) in enumerate(
        [(SERVER, PARENT, "orders"), (CLIENT, "", "gateway"), (SERVER, "", "orders")]
    ):
        span = t.start(f"op{i} é", kind, service, parent)
        assert span is not None
        span.attributes.update(order_id=f"ord_{i}", attempt=-i, ratio=0.5, retried=True, n=2**40)
        t.finish(span, "declined: é" if i == 1 else "")
        spans.append(span)
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(encode(spans))
    theirs = encode_spans([to_readable(s) for s in spans])
    assert ours == theirs
