"""Traffic from recorded traces: how chatty each edge is, and what co-locating it would save.

Two formats are read, told apart by their shape:

- the dashboard's (``GET /api/traces/<id>``, or a list of them, or a list of
  spans): spans with ``trace_id``, ``span_id``, ``parent_id``, ``kind``,
  ``service``, ``start`` and ``end`` in seconds;
- OTLP JSON (what an OpenTelemetry collector's file exporter writes): one
  ``{"resourceSpans": [...]}`` document, or one per line.

A call from A to B is a ``client`` span of A whose child is a ``server`` span
of B. The saving of co-locating A and B is the number of calls per request
times the difference between a remote call and a co-located one, both from
Cleave's own benchmark (``make bench``; :func:`per_call_costs`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleave.errors import ConfigError

__all__ = ["CallCosts", "EdgeTraffic", "edge_traffic", "per_call_costs", "read_spans"]

_OTLP_KINDS = {
    1: "internal",
    2: "server",
    3: "client",
    4: "producer",
    5: "consumer",
    "SPAN_KIND_INTERNAL": "internal",
    "SPAN_KIND_SERVER": "server",
    "SPAN_KIND_CLIENT": "client",
    "SPAN_KIND_PRODUCER": "producer",
    "SPAN_KIND_CONSUMER": "consumer",
}
_SPAN_KEYS = {"trace_id", "span_id", "kind", "service", "start", "end"}


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans of a traces file, in the dashboard's shape; a clear error for anything else."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"--traces {path}: cannot read it ({exc.strerror}); pass a traces file exported "
            "from the dashboard or an OTLP JSON file"
        ) from None
    docs: list[Any] = []
    try:
        docs.append(json.loads(text))
    except json.JSONDecodeError:
        try:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ConfigError(
                f"--traces {path} is not JSON (nor JSON lines); pass the dashboard's trace "
                "export or an OTLP JSON file"
            ) from None
    spans: list[dict[str, Any]] = []
    for doc in docs:
        spans += _spans_of(doc, path)
    return spans


def _spans_of(doc: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and "resourceSpans" in doc:
        return list(_otlp(doc))
    if isinstance(doc, dict) and isinstance(doc.get("spans"), list):
        return _spans_of(doc["spans"], path)
    if isinstance(doc, list) and all(isinstance(s, dict) and s.keys() >= _SPAN_KEYS for s in doc):
        return doc
    if isinstance(doc, list) and all(isinstance(d, dict) and "spans" in d for d in doc):
        return [s for d in doc for s in _spans_of(d["spans"], path)]
    raise ConfigError(
        f"--traces {path}: unknown format (neither the dashboard's spans, with trace_id, span_id, "
        "kind, service, start and end, nor OTLP JSON with resourceSpans)"
    )


def _otlp(doc: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for rs in doc.get("resourceSpans", []):
        attrs = rs.get("resource", {}).get("attributes", [])
        service = next(
            (
                a.get("value", {}).get("stringValue", "")
                for a in attrs
                if a.get("key") == "service.name"
            ),
            "",
        )
        for ss in rs.get("scopeSpans", []) or rs.get("instrumentationLibrarySpans", []):
            for s in ss.get("spans", []):
                yield {
                    "trace_id": s.get("traceId", ""),
                    "span_id": s.get("spanId", ""),
                    "parent_id": s.get("parentSpanId", ""),
                    "name": s.get("name", ""),
                    "kind": _OTLP_KINDS.get(s.get("kind", 1), "internal"),
                    "service": service,
                    "start": int(s.get("startTimeUnixNano", 0)) / 1e9,
                    "end": int(s.get("endTimeUnixNano", 0)) / 1e9,
                }


@dataclass(frozen=True)
class EdgeTraffic:
    """Calls from ``source`` to ``target`` in the recorded requests."""

    source: str
    target: str
    requests: int  # requests (traces) that crossed the edge
    calls: int
    calls_per_request: float
    latency_share: float  # of those requests' time, spent in these calls (0..1)
    request_ms: float  # mean duration of those requests


def edge_traffic(spans: list[dict[str, Any]]) -> list[EdgeTraffic]:
    """Per edge: calls per request and the share of the request's time spent crossing it."""
    by_id = {s["span_id"]: s for s in spans}
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], []).append(s)
    callee: dict[str, str] = {}
    for s in spans:
        parent = by_id.get(s.get("parent_id") or "")
        if s["kind"] == "server" and parent is not None and parent["kind"] == "client":
            callee[parent["span_id"]] = s["service"]
    stats: dict[tuple[str, str], list[float]] = {}  # requests, calls, call time, request time
    for group in by_trace.values():
        ids = {s["span_id"] for s in group}
        roots = [s for s in group if not s.get("parent_id") or s["parent_id"] not in ids]
        total = max(s["end"] for s in group) - min(s["start"] for s in roots or group)
        seen: dict[tuple[str, str], list[float]] = {}
        for s in group:
            target = callee.get(s["span_id"])
            if s["kind"] != "client" or target is None or target == s["service"]:
                continue
            entry = seen.setdefault((s["service"], target), [0.0, 0.0])
            entry[0] += 1
            entry[1] += max(0.0, s["end"] - s["start"])
        for edge, (calls, spent) in seen.items():
            acc = stats.setdefault(edge, [0.0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += calls
            acc[2] += spent
            acc[3] += max(total, 1e-9)
    return sorted(
        (
            EdgeTraffic(
                a,
                b,
                int(n),
                int(calls),
                round(calls / n, 2),
                round(min(1.0, spent / took), 3),
                round(took / n * 1000, 3),
            )
            for (a, b), (n, calls, spent, took) in stats.items()
        ),
        key=lambda e: (-e.calls_per_request, e.source, e.target),
    )


@dataclass(frozen=True)
class CallCosts:
    """What one call costs remote (over NATS) and co-located, in microseconds, and from where."""

    remote_us: float
    colocated_us: float
    source: str

    @property
    def saving_us(self) -> float:
        return max(0.0, self.remote_us - self.colocated_us)


#: From bench/results/2026-12-01.json (docs/benchmarks.md): sequential remote call p50 with
#: tracing, and the co-located call with tracing. Used when no results file is found.
DEFAULT_COSTS = CallCosts(
    487.9, 6.7, "default: bench/results/2026-12-01.json, as quoted in docs/coupling.md"
)


def per_call_costs(results: Path | None = None) -> CallCosts:
    """The newest ``make bench`` results with both figures, else :data:`DEFAULT_COSTS`."""
    folder = results or Path(__file__).resolve().parents[3] / "bench" / "results"
    best: tuple[str, CallCosts] | None = None
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(file.read_text())
            remote = float(data["remote"]["cleave"]["sequential"]["p50_us"])
            local = float(data["colocated"]["tracing_on"]["cleave_ns"]) / 1000
        except (OSError, ValueError, KeyError, TypeError):
            continue
        stamp = str(data.get("date", file.stem))
        if best is None or stamp >= best[0]:
            best = (stamp, CallCosts(remote, round(local, 2), f"{file.name} ({stamp[:10]})"))
    return best[1] if best else DEFAULT_COSTS
