"""The shop's billing v2 rolled out under load with `cleave deploy`: nothing fails, nothing is lost.

Billing v2's charge names its currency (a breaking change for callers), so it
is a new major served beside v1 (docs/versioning.md). A copy of the shop
starts with orders still calling billing v1. Under steady orders:

1. `cleave deploy billing`: its new workers serve v2 and v1 beside old ones;
2. orders' new code (calling v2) is swapped in and `cleave deploy orders`
   runs old workers (v1 callers) and new ones (v2 callers) together;
3. v1 is retired from billing's code and billing deployed again.

No request fails, every accepted order is stored and ends confirmed or
cancelled, and money and stock add up (tests/system/shopcheck.py).
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from load import Load, errors, figures
from shopcheck import (
    COMMON,
    RICH,
    Api,
    Control,
    admin_headers,
    check_invariants,
    quiet,
    snapshot,
)

from conftest import SHOP, Up, cli, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.nats]

DEADLINE = 10.0  # the shop's [runtime] timeout


def _rewrite(path: Path, *edits: tuple[str, str]) -> None:
    """Apply regex edits to ``path``, each of which must match exactly once."""
    text = path.read_text()
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, flags=re.S)
        assert n == 1, f"{path.name}: {pattern!r} matched {n} times; the shop changed"
    path.write_text(text)


def orders_on_v1(shop: Path) -> None:
    """Orders as it was before the rollout: calling billing v1, no currency."""
    _rewrite(
        shop / "shop" / "services" / "orders.py",
        (r"import BillingV2, ChargeV2,", "import Billing, Charge,"),
        (r"cleave\.use\(BillingV2\)", "cleave.use(Billing)"),
        (r"ChargeV2\((.*?)\s*currency=CURRENCY,\n", r"Charge(\1\n"),
    )


def billing_without_v1(shop: Path) -> None:
    """Billing once every caller moved: v1 and its adapter gone."""
    _rewrite(
        shop / "shop" / "services" / "billing.py",
        (r", also=\[Billing\]", ""),
        (r"    @cleave\.adapts\(Billing\.charge\).*?(    async def charge\()", r"\1"),
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "shop"
    shutil.copytree(SHOP, target, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    return target


@pytest.fixture
def new_orders(copy: Path) -> str:
    """Orders' code after the move to billing v2 (the shop's as it is now)."""
    return (copy / "shop" / "services" / "orders.py").read_text()


@pytest.fixture
def shop(copy: Path, new_orders: str, tmp_path: Path) -> Iterator[Up]:
    orders_on_v1(copy)
    # Workers must import the code on disk at each deploy, never a stale .pyc.
    up = Up(copy, tmp_path / "state", env={"PYTHONDONTWRITEBYTECODE": "1"}).start()
    try:
        yield up
    finally:
        up.stop()


def orders(n: int) -> tuple[str, str, Any]:
    sku = COMMON[n % len(COMMON)]
    return (
        "POST",
        "/v1/orders",
        {"account_id": RICH[n % len(RICH)], "items": [{"sku": sku, "qty": 1}]},
    )


def majors(up: Up) -> dict[str, set[tuple[int, ...]]]:
    out: dict[str, set[tuple[int, ...]]] = {}
    for row in up.ps():
        out.setdefault(row["service"], set()).add(tuple(row["majors"]))
    return out


def deploy(up: Up, service: str) -> float:
    started = time.monotonic()
    cli("deploy", service, up.app_dir, "--state-dir", up.state_dir, env=up.env)
    return time.monotonic() - started


def test_billing_v2_rolls_out_under_load(shop: Up, copy: Path, new_orders: str) -> None:
    http = Api(base_url=shop.url, timeout=30, headers=admin_headers(shop.state_dir))
    assert majors(shop)["billing"] == {(2, 1)}
    initial = snapshot(http)
    loader = admin_headers(shop.state_dir, "loader")  # its own rate-limit bucket
    buy = Load(shop.url, orders, rate=8, threads=4, timeout=DEADLINE + 5, headers=loader).start()

    def answered_more(n: int) -> None:
        """Wait until ``n`` more orders are answered: the load goes on across each step."""
        target = len(buy.outcomes) + n
        wait_until(lambda: len(buy.outcomes) >= target, timeout=60, interval=0.1)

    answered_more(16)
    took = {"billing": deploy(shop, "billing")}
    (copy / "shop" / "services" / "orders.py").write_text(new_orders)
    took["orders"] = deploy(shop, "orders")
    answered_more(12)  # orders placed by v2 callers only
    billing_without_v1(copy)
    took["billing without v1"] = deploy(shop, "billing")
    answered_more(12)
    buy.stop()

    failed = errors(buy.outcomes)
    assert not failed, f"requests failed: {[(o.status, o.body) for o in failed[:3]]}"
    assert majors(shop)["billing"] == {(2,)}
    accepted = {o.body["order_id"] for o in buy.outcomes}
    wait_until(
        lambda: all(o["status"] != "pending" for o in snapshot(http)["orders"]),
        timeout=60,
        interval=0.5,
    )
    control = Control(shop.state_dir)
    wait_until(lambda: quiet(control), timeout=60, interval=0.5)
    now = snapshot(http)
    stored = {o["order_id"] for o in now["orders"]}
    assert accepted <= stored, f"lost orders: {sorted(accepted - stored)[:5]}"
    outcome = check_invariants(initial, now, http)
    reasons = Counter(
        re.sub(r"\d+", "N", o["reason"] or "") for o in now["orders"] if o["status"] == "cancelled"
    )
    # Only the shop's own refusals: no order lost to the rollout (a conflict, a currency).
    assert all("funds" in r or "stock" in r for r in reasons), reasons
    # Every billing worker now serves v2 only, and says so.
    status = control.status()
    assert all(st.get("majors", {}).get("billing", [2]) == [2] for st in status.values())
    readers = {
        name
        for st in status.values()
        for name in st.get("events", {})
        .get("orders", {})
        .get("cleave.evt.orders.order_confirmed.v1", [])
    }
    assert {"inventory-on-order-confirmed", "shipping-on-order-confirmed"} <= readers, readers
    shown = cli("status", copy, "--state-dir", shop.state_dir).stdout
    assert "events: consumers of each version" in shown
    wide = {"COLUMNS": "200"}  # the table as a terminal wide enough for it shows it
    table = cli("ps", copy, "--state-dir", shop.state_dir, env=wide).stdout
    assert re.search(r"billing .*│ v2 ", table), table
    print(
        f"\nbilling v2 rollout: {figures('orders', buy.outcomes)}; deploys "
        + ", ".join(f"{k} {v:.1f}s" for k, v in took.items())
        + f"; confirmed={outcome['confirmed']} cancelled={outcome['cancelled']} ({dict(reasons)})"
    )
