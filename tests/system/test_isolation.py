"""Fault isolation, independent scaling and deploys, on the shop under steady load.

- billing paused (SIGSTOP): catalog and inventory reads keep answering with
  unchanged latency; every order answers within its deadline; after SIGCONT
  every order ends confirmed or cancelled and the money adds up.
- billing killed with 3 replicas: no order fails.
- `cleave deploy orders` under load: no 5xx, no lost order.
- `cleave scale inventory=3`, then `=1`, under load: no failed request.

Each prints its figures (requests, errors, p50/p99 during the fault).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from load import Load, errors, figures, p99
from shopcheck import Control, admin_headers, all_orders

from conftest import SHOP, Up, cli, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.nats]

DEADLINE = 10.0  # the shop's [runtime] timeout


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Up]:
    up = Up(SHOP, tmp_path).start()
    try:
        yield up
    finally:
        up.stop()


def reads(n: int) -> tuple[str, str, Any]:
    return ("GET", "/v1/products/KB-01", None) if n % 2 else ("GET", "/v1/inventory/KB-01", None)


def orders(n: int) -> tuple[str, str, Any]:
    return (
        "POST",
        "/v1/orders",
        {"account_id": "acc-carol", "items": [{"sku": "CBL-01", "qty": 1}]},
    )


def customer(up: Up) -> dict[str, str]:
    """The headers of acc-carol, the customer who orders in these tests."""
    out = cli("token", SHOP, "--sub", "acc-carol", "--state-dir", up.state_dir)
    return {"authorization": f"Bearer {out.stdout.strip()}"}


def final_orders(up: Up) -> list[dict[str, Any]]:
    with httpx.Client(base_url=up.url, timeout=30, headers=admin_headers(up.state_dir)) as http:
        return all_orders(http, "acc-carol")


def all_final(up: Up) -> bool:
    return all(o["status"] != "pending" for o in final_orders(up))


def balance_of_carol(up: Up) -> int:
    resp = httpx.get(f"{up.url}/v1/accounts/acc-carol", headers=customer(up), timeout=30)
    return int(resp.json()["balance_cents"])


def test_a_paused_billing_does_not_take_the_shop_down(shop: Up) -> None:
    control = Control(shop.state_dir)
    balance = balance_of_carol(shop)
    browse = Load(shop.url, reads, rate=30, threads=3).start()
    buy = Load(
        shop.url, orders, rate=4, threads=4, timeout=DEADLINE + 5, headers=customer(shop)
    ).start()
    time.sleep(5)
    paused_at = time.monotonic()
    httpx.post(
        f"{control.base}/api/chaos",
        json={"action": "pause", "service": "billing"},
        headers=control.headers,
        timeout=10,
    ).raise_for_status()
    time.sleep(8)
    httpx.post(
        f"{control.base}/api/chaos",
        json={"action": "resume", "service": "billing"},
        headers=control.headers,
        timeout=10,
    ).raise_for_status()
    resumed_at = time.monotonic()
    time.sleep(4)
    browse.stop()
    buy.stop()

    before = browse.between(0, paused_at)
    during = browse.between(paused_at, resumed_at)
    assert not errors(before + during), "reads failed while billing was paused"
    assert p99(during) <= max(2 * p99(before), p99(before) + 0.05), (
        f"reads slowed down: p99 {p99(before):.3f}s before, {p99(during):.3f}s during"
    )
    slowest = max(o.latency for o in buy.outcomes)
    assert slowest <= DEADLINE + 1.0, f"an order hung for {slowest:.1f}s"
    unclean = errors(buy.outcomes, allowed=(503, 504))
    assert not unclean, f"orders failed uncleanly: {[(o.status, o.body) for o in unclean[:3]]}"

    wait_until(lambda: all_final(shop), timeout=45, interval=0.5)
    placed = final_orders(shop)
    spent = sum(o["total_cents"] for o in placed if o["status"] == "confirmed")
    after = balance_of_carol(shop)
    assert balance - after == spent
    buys_during = buy.between(paused_at, resumed_at)
    print(
        f"\nbilling paused 8s: {figures('reads before', before)}; "
        f"{figures('reads during', during)}; {figures('orders during', buys_during)} "
        f"(503/504: {len(errors(buys_during))}); orders placed={len(placed)} "
        f"confirmed={sum(o['status'] == 'confirmed' for o in placed)}"
    )


def test_a_killed_billing_replica_fails_no_order(shop: Up) -> None:
    control = Control(shop.state_dir)
    cli("scale", "billing=3", SHOP, "--state-dir", shop.state_dir)
    buy = Load(
        shop.url, orders, rate=10, threads=5, timeout=DEADLINE + 5, headers=customer(shop)
    ).start()
    time.sleep(4)
    victim = next(
        r
        for r in httpx.get(f"{control.base}/api/ps").json()["processes"]
        if r["service"] == "billing" and r["replica"] == 1
    )
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(6)
    buy.stop()
    failed = errors(buy.outcomes)
    assert not failed, f"orders failed: {[(o.status, o.body) for o in failed[:3]]}"
    wait_until(lambda: all_final(shop), timeout=30, interval=0.5)
    after_kill = buy.between(killed_at, killed_at + 6)
    print(
        f"\nbilling replica killed (3 running): {figures('orders', buy.outcomes)}; "
        f"{figures('orders after the kill', after_kill)}"
    )


def test_deploying_orders_under_load_loses_nothing(shop: Up) -> None:
    buy = Load(
        shop.url, orders, rate=10, threads=5, timeout=DEADLINE + 5, headers=customer(shop)
    ).start()
    browse = Load(shop.url, reads, rate=10, threads=2).start()
    time.sleep(3)
    started = time.monotonic()
    result = cli("deploy", "orders", SHOP, "--state-dir", shop.state_dir)
    deployed = time.monotonic()
    time.sleep(3)
    buy.stop()
    browse.stop()
    server_errors = [o for o in buy.outcomes + browse.outcomes if o.status >= 500 or o.status == 0]
    assert not server_errors, (
        f"5xx during the deploy: {[(o.status, o.body) for o in server_errors[:3]]}"
    )
    accepted = {o.body["order_id"] for o in buy.outcomes if 200 <= o.status < 300}
    wait_until(lambda: all_final(shop), timeout=30, interval=0.5)
    stored = {o["order_id"] for o in final_orders(shop)}
    assert accepted <= stored, f"lost orders: {sorted(accepted - stored)[:5]}"
    during = buy.between(started, deployed)
    print(
        f"\ndeploy orders ({deployed - started:.1f}s): {figures('orders', buy.outcomes)}; "
        f"{figures('orders during the deploy', during)}; lost={len(accepted - stored)}; "
        f"{result.stdout.strip()}"
    )


def test_scaling_inventory_up_and_down_under_load(shop: Up) -> None:
    browse = Load(shop.url, reads, rate=30, threads=3).start()
    buy = Load(
        shop.url, orders, rate=6, threads=3, timeout=DEADLINE + 5, headers=customer(shop)
    ).start()
    time.sleep(3)
    started = time.monotonic()
    cli("scale", "inventory=3", SHOP, "--state-dir", shop.state_dir)
    rows = [
        r
        for r in httpx.get(f"{Control(shop.state_dir).base}/api/ps").json()["processes"]
        if r["service"] == "inventory"
    ]
    assert len(rows) == 3
    time.sleep(3)
    cli("scale", "inventory=1", SHOP, "--state-dir", shop.state_dir)
    ended = time.monotonic()
    time.sleep(2)
    browse.stop()
    buy.stop()
    failed = errors(browse.outcomes + buy.outcomes)
    assert not failed, f"requests failed: {[(o.status, o.body) for o in failed[:3]]}"
    rows = [
        r
        for r in httpx.get(f"{Control(shop.state_dir).base}/api/ps").json()["processes"]
        if r["service"] == "inventory"
    ]
    assert len(rows) == 1
    during = browse.between(started, ended) + buy.between(started, ended)
    print(
        f"\nscale inventory 1->3->1: {figures('all requests', browse.outcomes + buy.outcomes)}; "
        f"{figures('while scaling', during)}"
    )
