"""Prometheus alert rules and a Grafana dashboard over the metrics every worker serves.

They show what Cleave's own dashboard shows (calls, errors and p99 per service,
breakers, consumer lag and dead letters, outbox backlogs, sagas), from the
``cleave_*`` families of :mod:`cleave.observability.metrics`, scraped from each
pod's admin port.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cleave.deploy import _yaml
from cleave.deploy.model import Deployment

__all__ = ["dashboard", "render", "rules"]

_ERRORS = (
    'sum by (service) (rate(cleave_served_total{outcome!="ok"}[5m]))'
    " / sum by (service) (rate(cleave_served_total[5m])) > 0.05"
)
_P99 = (
    "histogram_quantile(0.99, sum by (le, service) "
    "(rate(cleave_served_duration_seconds_bucket[5m])))"
)


def _alert(name: str, expr: str, for_: str, severity: str, summary: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary}
    return rule


def rules(dep: Deployment) -> dict[str, Any]:
    timeout = dep.plan.runtime.timeout
    return {
        "groups": [
            {
                "name": f"cleave-{dep.slug}",
                "rules": [
                    _alert(
                        "CleaveHighErrorRate",
                        _ERRORS,
                        "5m",
                        "page",
                        "{{ $labels.service }}: over 5% of calls served fail",
                    ),
                    _alert(
                        "CleaveSlowCalls",
                        f"{_P99} > {timeout / 2:g}",
                        "10m",
                        "warn",
                        "{{ $labels.service }}: p99 above half the call timeout",
                    ),
                    _alert(
                        "CleaveBreakerOpen",
                        "max by (caller, service) (cleave_breaker_state) == 2",
                        "2m",
                        "page",
                        "{{ $labels.caller }} stopped calling {{ $labels.service }} (breaker open)",
                    ),
                    _alert(
                        "CleaveBulkheadRejecting",
                        "sum by (caller, service) (rate(cleave_bulkhead_rejected_total[5m])) > 0",
                        "5m",
                        "warn",
                        "{{ $labels.caller }} -> {{ $labels.service }}: too many calls in flight",
                    ),
                    _alert(
                        "CleaveConsumerLag",
                        "max by (consumer) (cleave_consumer_pending) > 1000",
                        "10m",
                        "warn",
                        "{{ $labels.consumer }} is {{ $value }} events behind",
                    ),
                    _alert(
                        "CleaveDeadLetters",
                        "sum by (consumer) (increase("
                        'cleave_events_handled_total{outcome="dead_lettered"}[15m])) > 0',
                        "",
                        "page",
                        "{{ $labels.consumer }} gave up on events: see `cleave dlq list`",
                    ),
                    _alert(
                        "CleaveOutboxBacklog",
                        "max by (service) (cleave_outbox_backlog) > 1000",
                        "10m",
                        "warn",
                        "{{ $labels.service }}: events are not reaching NATS",
                    ),
                    _alert(
                        "CleaveSagaStuck",
                        "max by (kind) (cleave_sagas_stuck) > 0",
                        "",
                        "page",
                        "a {{ $labels.kind }} saga's compensation gave up: an operator must look",
                    ),
                    _alert(
                        "CleaveSpansDropped",
                        "sum by (reason) (rate(cleave_spans_dropped_total[10m])) > 0",
                        "10m",
                        "warn",
                        "spans are dropped ({{ $labels.reason }})",
                    ),
                ],
            }
        ]
    }


def _panel(pid: int, title: str, exprs: list[tuple[str, str]], unit: str, x: int, y: int) -> Any:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


PANELS: list[tuple[str, list[tuple[str, str]], str]] = [
    (
        "Calls served per second",
        [("sum by (service) (rate(cleave_served_total[1m]))", "{{service}}")],
        "reqps",
    ),
    (
        "Error rate",
        [
            (
                'sum by (service) (rate(cleave_served_total{outcome!="ok"}[1m])) / '
                "sum by (service) (rate(cleave_served_total[1m]))",
                "{{service}}",
            )
        ],
        "percentunit",
    ),
    (
        "p99 latency served",
        [
            (
                "histogram_quantile(0.99, sum by (le, service) "
                "(rate(cleave_served_duration_seconds_bucket[1m])))",
                "{{service}}",
            )
        ],
        "s",
    ),
    (
        "Calls between services (p99)",
        [
            (
                "histogram_quantile(0.99, sum by (le, caller, service) "
                "(rate(cleave_call_duration_seconds_bucket[1m])))",
                "{{caller}} -> {{service}}",
            )
        ],
        "s",
    ),
    (
        "In flight",
        [("sum by (service) (cleave_in_flight)", "{{service}}")],
        "short",
    ),
    (
        "Circuit breakers (0 closed, 1 half-open, 2 open)",
        [("max by (caller, service) (cleave_breaker_state)", "{{caller}} -> {{service}}")],
        "short",
    ),
    (
        "Consumer lag",
        [("max by (consumer) (cleave_consumer_pending)", "{{consumer}}")],
        "short",
    ),
    (
        "Events handled",
        [
            (
                "sum by (consumer, outcome) (rate(cleave_events_handled_total[1m]))",
                "{{consumer}} {{outcome}}",
            ),
            (
                "sum by (consumer) (rate(cleave_consumer_redeliveries_total[1m]))",
                "{{consumer}} redelivered",
            ),
        ],
        "ops",
    ),
    (
        "Outbox backlog and events published",
        [
            ("max by (service) (cleave_outbox_backlog)", "{{service}} backlog"),
            (
                "sum by (service) (rate(cleave_events_published_total[1m]))",
                "{{service}} published/s",
            ),
        ],
        "short",
    ),
    (
        "Sagas",
        [
            ("sum by (kind) (cleave_sagas_running)", "{{kind}} running"),
            ("max by (kind) (cleave_sagas_stuck)", "{{kind}} stuck"),
        ],
        "short",
    ),
    (
        "Process memory",
        [("process_resident_memory_bytes", "{{pod}}")],
        "bytes",
    ),
    (
        "Process CPU",
        [("rate(process_cpu_seconds_total[1m])", "{{pod}}")],
        "percentunit",
    ),
]


def dashboard(dep: Deployment) -> dict[str, Any]:
    panels = [
        _panel(i + 1, title, exprs, unit, 12 * (i % 2), 8 * (i // 2))
        for i, (title, exprs, unit) in enumerate(PANELS)
    ]
    return {
        "uid": f"cleave-{dep.slug}"[:40],
        "title": f"{dep.app} (Cleave)",
        "tags": ["cleave"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }


def render(dep: Deployment, out: Path) -> None:
    _yaml.write(
        out / "prometheus-rules.yaml",
        rules(dep),
        header="Prometheus alert rules for the cleave_* metrics: written by `cleave build`.",
    )
    (out / "grafana-dashboard.json").write_text(json.dumps(dashboard(dep), indent=2) + "\n")
