"""Spans out over OTLP/HTTP: a bounded queue, one batching thread, and every span accounted for.

A finished span is offered to :class:`OtlpExport` on the call path (an append
to a deque). A thread takes the queue in batches, encodes them
(:mod:`cleave.observability.otlp_wire`) and posts them with the OpenTelemetry
exporter's HTTP client, which reads the usual ``OTEL_EXPORTER_OTLP_*``
variables (endpoint, headers, timeout, compression, certificates) and
retries what is worth retrying.

Every span offered is exported or dropped, and a dropped one is counted:
``queue_full`` when the queue was full (the exporter does not keep up),
``export_failed`` when the receiver refused a batch or could not be
reached. The counts are the metric ``cleave_spans_dropped_total{reason}``;
a warning says how many were dropped and what to change, at most once per
``warn_every`` seconds.

The batch processor's standard variables size the export (defaults sized
for Cleave's own load, far above OpenTelemetry's: a process of the
remote-call benchmark records about 30,000 spans/s):

- ``OTEL_BSP_MAX_QUEUE_SIZE`` (65536): spans waiting, about 2 s of that load;
- ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (4096): spans per request;
- ``OTEL_BSP_SCHEDULE_DELAY`` (500, ms): the longest a span waits while the
  queue holds less than a batch.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import time
from typing import Any

import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from cleave.errors import ConfigError
from cleave.observability.otlp_wire import encode, resource_of
from cleave.observability.tracing import Span

__all__ = ["OtlpExport", "to_readable"]

QUEUE_FULL, EXPORT_FAILED = "queue_full", "export_failed"

_DEFAULTS = {
    "OTEL_BSP_MAX_QUEUE_SIZE": 65_536,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 4096,
    "OTEL_BSP_SCHEDULE_DELAY": 500,
}


def _setting(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return _DEFAULTS[name]
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number above 0; unset it to use {_DEFAULTS[name]}"
        )
    return int(raw)


class OtlpExport:
    """Exports spans in batches from a bounded queue, counting every span it drops."""

    def __init__(
        self,
        *,
        queue_size: int = _DEFAULTS["OTEL_BSP_MAX_QUEUE_SIZE"],
        batch_size: int = _DEFAULTS["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"],
        delay: float = _DEFAULTS["OTEL_BSP_SCHEDULE_DELAY"] / 1000,
        warn_every: float = 30.0,
    ) -> None:
        self.queue_size = queue_size
        self.batch_size = min(batch_size, queue_size)
        self.delay = delay
        self.warn_every = warn_every
        self.exported = 0
        self.dropped = {QUEUE_FULL: 0, EXPORT_FAILED: 0}
        self.endpoint = ""
        self._queue: collections.deque[Span] = collections.deque()
        self._send: Any = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._sending = 0  # spans taken from the queue and not yet exported or dropped
        self._lock = threading.Lock()  # counts dropped spans; only taken when one is
        self._warned = {QUEUE_FULL: 0, EXPORT_FAILED: 0}
        self._warned_at = -float("inf")
        self._counted_since = time.monotonic()
        self._last_error = ""

    @classmethod
    def from_env(cls) -> OtlpExport:
        """An export sized by the ``OTEL_BSP_*`` variables (see the module docstring)."""
        return cls(
            queue_size=_setting("OTEL_BSP_MAX_QUEUE_SIZE"),
            batch_size=_setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
            delay=_setting("OTEL_BSP_SCHEDULE_DELAY") / 1000,
        )

    def start(self) -> None:
        """Build the HTTP exporter from the ``OTEL_EXPORTER_OTLP_*`` variables; start the thread."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
        self.endpoint = getattr(exporter, "_endpoint", "")
        post: Any = getattr(getattr(exporter, "_client", None), "export", None)
        if callable(post):
            # The SDK's HTTP client takes encoded bytes: its encoder is what is too slow here.
            def send(batch: list[Span]) -> str:
                result = post(encode(batch))
                return "" if result.success else _reason(result)
        else:  # pragma: no cover - an SDK whose client moved: slower, still correct
            from opentelemetry.sdk.trace.export import SpanExportResult

            def send(batch: list[Span]) -> str:
                ok = exporter.export([to_readable(s) for s in batch])
                return "" if ok is SpanExportResult.SUCCESS else "the exporter reported a failure"

        self._send = send
        self._thread = threading.Thread(target=self._run, name="cleave-otlp", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def offer(self, span: Span) -> None:
        """Queue ``span`` for export, or count it dropped if the queue is full (call path)."""
        if len(self._queue) < self.queue_size:
            self._queue.append(span)
        else:
            self._drop(1, QUEUE_FULL)

    @property
    def pending(self) -> int:
        """Spans offered and not yet exported or dropped."""
        return len(self._queue) + self._sending

    def flush(self, timeout: float = 10.0) -> bool:
        """Export what is queued now; False if that took longer than ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.005)
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Export what is queued (for up to ``timeout`` seconds), then stop the thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None
        atexit.unregister(self.stop)

    # -- the export thread ---------------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while not self._stopping:
            if len(queue) < self.batch_size:
                self._wake.wait(self.delay)
                self._wake.clear()
            while queue:
                self._sending = n = min(len(queue), self.batch_size)
                batch = [queue.popleft() for _ in range(n)]  # deque ends are thread-safe
                try:
                    error = self._send(batch)
                except Exception as exc:  # an exporter must never hurt the service
                    error = f"{type(exc).__name__}: {exc}"
                if error:
                    self._last_error = error
                    self._drop(n, EXPORT_FAILED)
                else:
                    self.exported += n
                self._sending = 0
            self._warn()

    # -- dropped spans -------------------------------------------------------------------------

    def _drop(self, n: int, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += n
        self._warn()

    def _warn(self) -> None:
        """Say what was dropped since the last warning, at most once per ``warn_every``."""
        now = time.monotonic()
        if now - self._warned_at < self.warn_every:
            return
        with self._lock:
            new = {r: self.dropped[r] - self._warned[r] for r in self.dropped}
            if not any(new.values()) or now - self._warned_at < self.warn_every:
                return
            self._warned = dict(self.dropped)
            seconds = now - self._counted_since
            self._warned_at = self._counted_since = now
        what = []
        if new[QUEUE_FULL]:
            what.append(
                f"{new[QUEUE_FULL]} because the export queue ({self.queue_size} spans) was full: "
                f"raise OTEL_BSP_MAX_QUEUE_SIZE or OTEL_BSP_MAX_EXPORT_BATCH_SIZE "
                f"(now {self.batch_size}), or record fewer with [observability] sample_rate "
                "in cleave.toml"
            )
        if new[EXPORT_FAILED]:
            what.append(
                f"{new[EXPORT_FAILED]} because the export to {self.endpoint or 'the collector'} "
                f"failed ({self._last_error}): check that the collector runs there, or set "
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            )
        # A fresh logger: the module's would be bound once, before tests or logs are configured.
        structlog.get_logger("cleave.tracing").warning(
            "spans dropped",
            dropped=sum(new.values()),
            queue_full=new[QUEUE_FULL],
            export_failed=new[EXPORT_FAILED],
            seconds=round(seconds, 1),
            detail="; ".join(what),
        )


def _reason(result: Any) -> str:
    """Why the SDK's client gave up on a batch, in a few words."""
    if result.status_code is not None:
        return f"HTTP {result.status_code} {result.reason or ''}".strip()
    if result.error is not None:
        return f"{type(result.error).__name__}: {result.error}"
    return result.reason or "unknown error"


_KINDS = {
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
    "internal": SpanKind.INTERNAL,
}
_SCOPE = InstrumentationScope("cleave")


def to_readable(span: Span) -> ReadableSpan:
    """``span`` as the SDK's ``ReadableSpan`` (the slow path, and the reference for the wire)."""
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
        resource=resource_of(span.service),
        attributes={k: v for k, v in span.attributes.items() if isinstance(v, str | int | float)},
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        status=status,
        start_time=int(span.start * 1e9),
        end_time=int(span.end * 1e9),
        instrumentation_scope=_SCOPE,
    )
