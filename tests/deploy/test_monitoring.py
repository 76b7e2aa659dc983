"""The alert rules and the Grafana dashboard ask for metrics a real worker serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml
from deploy_support import built, grouped_shop, lock  # noqa: F401 - fixtures
from prometheus_client.parser import text_string_to_metric_families

from cleave.observability.metrics import registry_for, render
from cleave.runtime.hostmetrics import HostCollector, refresher
from cleave.testing import Harness

NAME = re.compile(r"\b((?:cleave|process)_[a-z_]+)\b")


def names_in(built: Path) -> set[str]:
    rules = yaml.safe_load((built / "monitoring" / "prometheus-rules.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    board = json.loads((built / "monitoring" / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    return {m for e in exprs for m in NAME.findall(e)}


async def test_every_metric_asked_for_is_served(built: Path, tmp_path: Path) -> None:
    from shop.app import app

    async with Harness(app, tmp_path) as h:
        transport = httpx.ASGITransport(app=h.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            await http.post(
                "/v1/orders",
                json={"account_id": "acc-alice", "items": [{"sku": "CBL-01", "qty": 1}]},
                headers={"authorization": f"Bearer {h.token('ops', 'admin')}"},
            )
        await h.settle()
        await refresher(h.host)()
        text = render(registry_for(HostCollector(h.host))).decode()
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    asked = names_in(built)
    assert len(asked) >= 15
    assert asked <= served, f"not served: {sorted(asked - served)}"


def test_rules_and_dashboard_shape(built: Path) -> None:
    rules = yaml.safe_load((built / "monitoring" / "prometheus-rules.yaml").read_text())
    alerts = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    assert {"CleaveHighErrorRate", "CleaveConsumerLag", "CleaveDeadLetters"} <= set(alerts)
    assert all(r["labels"]["severity"] in {"page", "warn"} for r in alerts.values())
    board = json.loads((built / "monitoring" / "grafana-dashboard.json").read_text())
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
