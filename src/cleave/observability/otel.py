"""OpenTelemetry interop: OTel spans join Cleave's traces, Cleave's spans go to OTel exporters.

Cleave records its own spans (:mod:`cleave.observability.tracing`) because the
SDK's cost ten times as much. Code that uses the OpenTelemetry API inside a
handler (the user's own ``start_as_current_span``, or the instrumentation of
httpx, SQLAlchemy or asyncpg) must still see the handler's span as its parent:

- :func:`expose` wraps OpenTelemetry's runtime context so that, while a Cleave
  call is being handled, the current OTel context holds a ``NonRecordingSpan``
  with the handler span's trace id and span id. The span is made lazily, when
  the OpenTelemetry API asks for the current context, so Cleave's call path
  pays nothing for it. A context attached inside the handler (an OTel span
  made current) wins over the handler's span, until a nested Cleave call
  begins: each attached context remembers the Cleave call it was attached in.
  OpenTelemetry offers no public hook for this (``OTEL_PYTHON_CONTEXT`` would
  replace the runtime context, not wrap it), so the module-level runtime
  context is wrapped in place; the context it held is kept and delegated to.
- :func:`export_to` sends every span Cleave finishes, as the SDK's
  ``ReadableSpan``, to a ``SpanProcessor`` (or a ``SpanExporter``, batched) the
  user configured: with the SDK's own spans going to the same processor, one
  backend gets one trace. ``[observability] opentelemetry = "module:function"``
  names a function that every process running services calls at start (the
  monolith, each worker of ``cleave up``) and whose result is passed here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cleave.context import CallContext, _current
from cleave.errors import ConfigError

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

    from cleave.observability.tracing import Span

__all__ = ["SpanBridge", "configure", "export_to", "expose", "exposed"]

_state: dict[str, Any] = {}


def _make_runtime_context() -> Any:
    """The wrapper class, built on first use so that importing this module imports no OTel."""
    from opentelemetry import trace
    from opentelemetry.context import Context, create_key
    from opentelemetry.context.context import _RuntimeContext
    from opentelemetry.trace.propagation import _SPAN_KEY as span_key

    owner_key = create_key("cleave-call")

    class CleaveRuntimeContext(_RuntimeContext):
        """OpenTelemetry's runtime context, seeing the Cleave call being handled."""

        def __init__(self, inner: _RuntimeContext) -> None:
            self.inner = inner

        def attach(self, context: Context) -> Token[Context]:
            call = _current.get()
            if call is not None and context.get(owner_key) is not call:
                stamped = dict(context)
                stamped[owner_key] = call
                context = Context(stamped)
            return self.inner.attach(context)

        def get_current(self) -> Context:
            context = self.inner.get_current()
            call = _current.get()
            if call is None or not call.traceparent or context.get(owner_key) is call:
                return context
            # A Cleave call began after (or without) the last attached context: its span is
            # the current one.
            values = dict(context)
            values[span_key] = trace.NonRecordingSpan(_span_context(call))
            values[owner_key] = call
            return Context(values)

        def detach(self, token: Token[Context]) -> None:
            self.inner.detach(token)

    return CleaveRuntimeContext


def _span_context(call: CallContext) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags

    tp = call.traceparent  # 00-<trace id>-<span id>-<flags>
    return SpanContext(
        int(tp[3:35], 16),
        int(tp[36:52], 16),
        is_remote=False,
        trace_flags=TraceFlags(int(tp[53:55], 16)),
    )


def expose() -> bool:
    """Make the Cleave call being handled the current span of OpenTelemetry's context.

    Idempotent; False (and nothing done) if ``opentelemetry-api`` is not installed.
    """
    if "runtime" in _state:
        return True
    try:
        import opentelemetry.context as otel_context
    except ImportError:
        return False
    wrapper = _make_runtime_context()
    runtime = wrapper(otel_context._RUNTIME_CONTEXT)
    otel_context._RUNTIME_CONTEXT = runtime
    _state["runtime"] = runtime
    return True


def exposed() -> bool:
    """Whether :func:`expose` has wrapped OpenTelemetry's context in this process."""
    return "runtime" in _state


class SpanBridge:
    """Hands each span Cleave finishes to an SDK ``SpanProcessor``, as a ``ReadableSpan``."""

    def __init__(self, processor: SpanProcessor) -> None:
        from cleave.observability.otlp import to_readable

        self.processor = processor
        self._convert = to_readable

    def offer(self, span: Span) -> None:
        self.processor.on_end(self._convert(span))

    def stop(self) -> None:
        self.processor.shutdown()


def export_to(target: SpanProcessor | SpanExporter | None) -> SpanProcessor | None:
    """Send every span this process's tracer finishes to ``target`` (None: stop sending).

    ``target`` is an OpenTelemetry SDK ``SpanProcessor``, or a ``SpanExporter``
    (then wrapped in a ``BatchSpanProcessor``). Also calls :func:`expose`, so
    the spans the user's SDK records inside handlers have Cleave's as parents::

        provider = TracerProvider()
        processor = BatchSpanProcessor(OTLPSpanExporter())
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        cleave.observability.otel.export_to(processor)

    Returns the processor spans now go to.
    """
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    from cleave.observability.tracing import tracer

    previous = tracer.bridge
    tracer.bridge = None
    if previous is not None:
        previous.stop()
    if target is None:
        return None
    if isinstance(target, SpanExporter):
        processor: SpanProcessor = BatchSpanProcessor(target)
    elif isinstance(target, SpanProcessor):
        processor = target
    else:
        raise ConfigError(
            f"export_to() takes an OpenTelemetry SpanProcessor or SpanExporter, got "
            f"{type(target).__name__}"
        )
    expose()
    tracer.bridge = SpanBridge(processor)
    return processor


def configure(setting: str) -> None:
    """Apply ``[observability] opentelemetry``: call the named function, export to its result.

    The function takes no arguments and returns a ``SpanProcessor``, a
    ``SpanExporter`` or None (it set OpenTelemetry up for its own spans only).
    Spans made with the OpenTelemetry API inside handlers join Cleave's traces
    either way.
    """
    expose()
    if not setting:
        return
    module_name, _, attr = setting.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f"[observability] opentelemetry = {setting!r}: name a function as "
            "'module:function', e.g. 'shop.telemetry:setup'"
        )
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"[observability] opentelemetry = {setting!r}: cannot import it ({exc}); "
            "name a function as 'module:function' importable from the app's folder"
        ) from None
    result = function()
    if result is not None:
        export_to(result)
