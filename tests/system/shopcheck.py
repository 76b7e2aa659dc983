"""What the crash tests share: order plans, retrying clients, invariants from the API.

Every request goes as an admin (a token from the app's dev issuer, made for the
state folder the test runs the shop with): the checks read every account.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

RICH = ["acc-alice", "acc-bob", "acc-carol", "acc-dave"]
COMMON = ["KB-01", "MS-01", "HUB-01", "CBL-01", "LMP-01", "MN-27"]
SCARCE = ["CHR-01", "GPU-01"]


def admin_headers(state_dir: Path, subject: str = "ops") -> dict[str, str]:
    """Headers with an admin's token for the shop run with ``state_dir``."""
    from cleave.testing import token

    return {"authorization": f"Bearer {token(state_dir, subject, 'admin', audience='shop')}"}


class Api(httpx.Client):
    """An httpx client that waits out the gateway's rate limit (429, Retry-After) and retries."""

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        for _ in range(60):
            resp = super().request(*args, **kwargs)
            if resp.status_code != 429:
                return resp
            time.sleep(float(resp.headers.get("retry-after", "1")))
        return resp


class Control:
    """The supervisor's control API (what `cleave ps` and `cleave status` use)."""

    def __init__(self, state_dir: Path) -> None:
        state = json.loads((state_dir / "run" / "supervisor.json").read_text())
        self.base = f"http://127.0.0.1:{state['control_port']}"
        self.nats_url = state["nats_url"]
        from cleave.runtime.guard import TOKEN_HEADER, read_token

        #: What a POST to the control API needs: this run's token.
        self.headers = {TOKEN_HEADER: read_token(state_dir / "run")}

    def ps(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(f"{self.base}/api/ps", timeout=10).json()["processes"]
        return {r["service"]: r for r in rows}

    def status(self) -> dict[str, Any]:
        workers: dict[str, Any] = httpx.get(f"{self.base}/api/status", timeout=30).json()["workers"]
        return workers


def plans(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.15:
            account, items = "acc-poor", [("CBL-01", 1)]
        elif roll < 0.35:
            account, items = rng.choice(RICH), [(rng.choice(SCARCE), rng.randint(1, 2))]
        else:
            skus = rng.sample(COMMON, rng.randint(1, 2))
            account, items = rng.choice(RICH), [(s, rng.randint(1, 2)) for s in skus]
        out.append(
            {
                "key": f"crash-{i}-{rng.getrandbits(32):08x}",
                "body": {"account_id": account, "items": [{"sku": s, "qty": q} for s, q in items]},
            }
        )
    return out


class Client(threading.Thread):
    """Places orders from a queue; retries a failed one with the same key."""

    def __init__(
        self,
        url: str,
        work: queue.Queue[dict[str, Any]],
        results: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, timeout=30, headers=headers)
        self.work = work
        self.results = results
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                try:
                    plan = self.work.get_nowait()
                except queue.Empty:
                    return
                self.results[plan["key"]] = self.place(plan)
                time.sleep(0.03)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def place(self, plan: dict[str, Any]) -> Any:
        delay = 0.2
        for _ in range(40):
            try:
                resp = self.http.post(
                    "/v1/orders", json=plan["body"], headers={"Idempotency-Key": plan["key"]}
                )
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        raise AssertionError(
                            f"a {resp.status_code} that is not JSON: {resp.text[:300]!r}"
                        ) from None
                if resp.status_code < 500 and resp.status_code not in (408, 429):
                    raise AssertionError(f"order refused: {resp.status_code} {resp.text}")
            except httpx.TransportError:
                pass
            self.retries += 1
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        return None  # gave up: the order may or may not exist


def snapshot(http: httpx.Client) -> dict[str, Any]:
    accounts = {a["account_id"]: a["balance_cents"] for a in http.get("/v1/accounts").json()}
    skus = [p["sku"] for p in http.get("/v1/products").json()]
    stock = {}
    for sku in skus:
        s = http.get(f"/v1/inventory/{sku}").json()
        stock[sku] = (s["available"], s["reserved"])
    orders = []
    for account in accounts:
        orders += all_orders(http, account)
    return {"balances": accounts, "stock": stock, "orders": orders}


def all_orders(http: httpx.Client, account: str) -> list[dict[str, Any]]:
    """Every order of ``account``, page after page."""
    found: list[dict[str, Any]] = []
    while True:
        params = {"account_id": account, "after": found[-1]["order_id"] if found else ""}
        page = http.get("/v1/orders", params=params).json()
        found += page
        if len(page) < 100:
            return found


def per_order(http: httpx.Client, orders: list[dict[str, Any]], path: str) -> dict[str, int]:
    return {
        o["order_id"]: len(http.get(path, params={"order_id": o["order_id"]}).json())
        for o in orders
    }


def check_invariants(
    initial: dict[str, Any], now: dict[str, Any], http: httpx.Client
) -> dict[str, Any]:
    confirmed = [o for o in now["orders"] if o["status"] == "confirmed"]
    cancelled = [o for o in now["orders"] if o["status"] == "cancelled"]
    assert len(confirmed) + len(cancelled) == len(now["orders"]), "orders still pending"
    spent: Counter[str] = Counter()
    sold: Counter[str] = Counter()
    for o in confirmed:
        spent[o["account_id"]] += o["total_cents"]
        for line in o["items"]:
            sold[line["sku"]] += line["qty"]
    for account, before in initial["balances"].items():
        after = now["balances"][account]
        assert after >= 0, f"{account} has a negative balance"
        assert before - after == spent[account], (
            f"{account}: balance moved by {before - after}, confirmed orders total {spent[account]}"
        )
    for sku, (available, reserved) in now["stock"].items():
        before = initial["stock"][sku][0] + initial["stock"][sku][1]
        assert available >= 0, f"{sku}: negative stock"
        assert reserved == 0, f"{sku}: {reserved} still reserved"
        assert before - available - reserved == sold[sku], (
            f"{sku}: stock moved by {before - available}, confirmed orders hold {sold[sku]}"
        )
    shipments = per_order(http, now["orders"], "/v1/shipments")
    for o in confirmed:
        assert shipments[o["order_id"]] == 1, f"{o['order_id']} has {shipments[o['order_id']]}"
    for o in cancelled:
        assert shipments[o["order_id"]] == 0, f"cancelled {o['order_id']} was shipped"
    return {"confirmed": len(confirmed), "cancelled": len(cancelled), "shipments": shipments}


def unquiet(control: Control) -> dict[str, Any]:
    """What is still in motion, by worker: outbox rows, running sagas, pending deliveries."""
    out: dict[str, Any] = {}
    for label, st in control.status().items():
        if "error" in st:
            out[label] = st["error"]
            continue
        busy = {k: v for k, v in {**st["outbox"], **st["sagas"]}.items() if v}
        busy |= {k: c["pending"] for k, c in st["consumers"].items() if c["pending"]}
        if busy:
            out[label] = busy
    return out


def quiet(control: Control) -> bool:
    """Every outbox empty, every consumer caught up, no saga running."""
    return not unquiet(control)
