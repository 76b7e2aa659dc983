"""Metrics after a known workload: counts, histograms, consumers, process figures."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cleave.observability.metrics import registry_for, render
from cleave.runtime.hostmetrics import HostCollector
from cleave.testing import Harness


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_counts_after_three_good_orders_and_two_declined(tmp_path: Path) -> None:
    from shop.app import app

    async with Harness(app, tmp_path) as h:
        transport = httpx.ASGITransport(app=h.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for account in ["acc-alice"] * 3 + ["acc-poor"] * 2:
                await http.post(
                    "/v1/orders",
                    json={"account_id": account, "items": [{"sku": "CBL-01", "qty": 1}]},
                    headers={"authorization": f"Bearer {h.token('ops', 'admin')}"},
                )
            assert (await http.get("/v1/products/NOPE")).status_code == 404
        await h.settle()
        registry = registry_for(HostCollector(h.host))
        from cleave.runtime.hostmetrics import refresher

        await refresher(h.host)()
        m = samples(render(registry).decode())

    assert (
        value(
            m,
            "cleave_calls_total",
            caller="gateway",
            service="orders",
            method="place_order",
            outcome="ok",
        )
        == 5
    )
    assert (
        value(
            m,
            "cleave_calls_total",
            caller="gateway",
            service="catalog",
            method="get_product",
            outcome="NotFound",
        )
        == 1
    )
    assert value(m, "cleave_served_total", service="billing", method="charge", outcome="ok") == 5
    assert (
        value(
            m,
            "cleave_call_duration_seconds_bucket",
            caller="orders",
            service="billing",
            method="charge",
            le="+Inf",
        )
        == 5
    )
    assert (
        value(
            m,
            "cleave_call_duration_seconds_count",
            caller="orders",
            service="billing",
            method="charge",
        )
        == 5
    )
    assert (
        value(
            m, "cleave_events_handled_total", consumer="shipping-on-order-confirmed", outcome="ok"
        )
        == 3
    )
    assert (
        value(m, "cleave_events_handled_total", consumer="billing-on-order-cancelled", outcome="ok")
        == 2
    )
    assert value(m, "cleave_consumer_pending", consumer="shipping-on-order-confirmed") == 0
    assert value(m, "cleave_outbox_backlog", service="orders") == 0
    assert value(m, "cleave_events_published_total", service="orders") == 5
    assert value(m, "cleave_breaker_state", caller="orders", service="billing") == 0
    assert value(m, "process_resident_memory_bytes") > 10_000_000
    assert value(m, "process_cpu_seconds_total") > 0
