"""The shop, end to end over HTTP, in both placements (`cleave run` and `cleave up`).

The app runs once per placement for the whole module, so every test works
with differences: it reads balances and stock before and after.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import SHOP, PostgresDatabases, Run, Up, cli, wait_until

PRICES = {"KB-01": 8_900, "MS-01": 2_900, "MN-27": 24_900, "CBL-01": 900, "GPU-01": 59_900}


class Shop:
    def __init__(self, runner: Run | Up, placement: str) -> None:
        self.runner = runner
        self.placement = placement
        # An admin reaches every account: these tests are about the shop's workings;
        # test_a_customer_reaches_only_its_own_account is about who sees what.
        admin = self.token("ops", "--scope", "admin")
        self.http = httpx.Client(
            base_url=runner.url, timeout=30, headers={"authorization": f"Bearer {admin}"}
        )

    def token(self, *args: str) -> str:
        """A token from the app's dev issuer, by `cleave token` as a user would get one."""
        out = cli("token", SHOP, "--sub", *args, "--state-dir", self.runner.state_dir)
        return str(out.stdout.strip())

    def get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def order(self, account: str, items: list[tuple[str, int]], **headers: str) -> Any:
        body = {"account_id": account, "items": [{"sku": s, "qty": q} for s, q in items]}
        return self.http.post("/v1/orders", json=body, headers=headers)

    def balance(self, account: str) -> int:
        return int(self.get(f"/v1/accounts/{account}")["balance_cents"])

    def stock(self, sku: str) -> tuple[int, int]:
        s = self.get(f"/v1/inventory/{sku}")
        return s["available"], s["reserved"]

    def settled_stock(self, sku: str) -> tuple[int, int]:
        """Stock once no reservation of it is in flight."""
        return wait_until(lambda: (s := self.stock(sku))[1] == 0 and s, timeout=20)


PROCESSES = [pytest.mark.processes, pytest.mark.nats]


@pytest.fixture(
    scope="module",
    params=[
        "monolith",
        pytest.param("processes", marks=PROCESSES),
        pytest.param("monolith-postgres", marks=[pytest.mark.postgres]),
        pytest.param("processes-postgres", marks=[*PROCESSES, pytest.mark.postgres]),
    ],
)
def shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    placement, _, storage = request.param.partition("-")
    state = tmp_path_factory.mktemp(f"shop-{request.param}")
    pg = PostgresDatabases() if storage == "postgres" else None
    env = pg.env if pg else {}
    runner: Run | Up = Run(SHOP, state, env) if placement == "monolith" else Up(SHOP, state, env)
    runner.start()
    try:
        yield Shop(runner, placement)
    finally:
        runner.stop()
        if pg is not None:
            pg.drop()


def test_the_catalog(shop: Shop) -> None:
    products = shop.get("/v1/products")
    assert {p["sku"] for p in products} >= set(PRICES)
    for p in products:
        assert set(p) == {"sku", "name", "price_cents"}
    assert shop.get("/v1/products/KB-01") == {
        "sku": "KB-01",
        "name": "Mechanical keyboard",
        "price_cents": 8_900,
    }


def test_accounts_and_stock_views(shop: Shop) -> None:
    accounts = {a["account_id"]: a for a in shop.get("/v1/accounts")}
    assert {"acc-alice", "acc-poor"} <= set(accounts)
    assert set(accounts["acc-alice"]) == {"account_id", "balance_cents"}
    assert set(shop.get("/v1/inventory/KB-01")) == {"sku", "available", "reserved"}


@pytest.mark.parametrize(
    "path",
    ["/v1/products/NOPE", "/v1/accounts/nobody", "/v1/inventory/NOPE", "/v1/orders/ord_missing"],
)
def test_unknown_ids_are_404(shop: Shop, path: str) -> None:
    resp = shop.http.get(path)
    assert resp.status_code == 404
    assert resp.json()["error"]["kind"] == "NotFound"


def test_a_confirmed_order(shop: Shop) -> None:
    balance = shop.balance("acc-alice")
    kb, ms = shop.settled_stock("KB-01"), shop.settled_stock("MS-01")
    resp = shop.order("acc-alice", [("KB-01", 2), ("MS-01", 1)])
    assert resp.status_code == 201
    order = resp.json()
    assert set(order) == {"order_id", "account_id", "status", "total_cents", "items", "reason"}
    assert order["status"] == "confirmed"
    assert order["reason"] is None
    total = 2 * PRICES["KB-01"] + PRICES["MS-01"]
    assert order["total_cents"] == total
    assert order["items"] == [{"sku": "KB-01", "qty": 2}, {"sku": "MS-01", "qty": 1}]
    assert shop.get(f"/v1/orders/{order['order_id']}") == order
    assert shop.balance("acc-alice") == balance - total
    assert shop.settled_stock("KB-01") == (kb[0] - 2, 0)
    assert shop.settled_stock("MS-01") == (ms[0] - 1, 0)
    shipments = wait_until(lambda: shop.get("/v1/shipments", order_id=order["order_id"]))
    assert len(shipments) == 1
    assert shipments[0]["order_id"] == order["order_id"]
    kinds = wait_until(
        lambda: (
            {n["kind"] for n in shop.get("/v1/notifications", order_id=order["order_id"])}
            >= {"order_confirmed", "shipment_created"}
        )
    )
    assert kinds


def test_a_declined_payment_cancels_and_releases_the_stock(shop: Shop) -> None:
    balance = shop.balance("acc-poor")
    before = shop.settled_stock("CBL-01")
    resp = shop.order("acc-poor", [("CBL-01", 1)])
    assert resp.status_code == 201
    order = resp.json()
    assert order["status"] == "cancelled"
    assert "insufficient funds" in order["reason"]
    assert shop.balance("acc-poor") == balance
    assert shop.settled_stock("CBL-01") == before
    notified = wait_until(lambda: shop.get("/v1/notifications", order_id=order["order_id"]))
    assert [n["kind"] for n in notified] == ["order_cancelled"]
    assert shop.get("/v1/shipments", order_id=order["order_id"]) == []


def test_missing_stock_cancels_without_charging(shop: Shop) -> None:
    balance = shop.balance("acc-carol")
    available, _ = shop.settled_stock("GPU-01")
    resp = shop.order("acc-carol", [("GPU-01", available + 1)])
    order = resp.json()
    assert order["status"] == "cancelled"
    assert "out of stock" in order["reason"]
    assert shop.balance("acc-carol") == balance
    assert shop.settled_stock("GPU-01") == (available, 0)
    assert shop.get("/v1/shipments", order_id=order["order_id"]) == []


def test_the_same_idempotency_key_is_the_same_order(shop: Shop) -> None:
    key = f"key-{os.urandom(4).hex()}"
    balance = shop.balance("acc-bob")
    first = shop.order("acc-bob", [("MS-01", 1)], **{"Idempotency-Key": key}).json()
    again = shop.order("acc-bob", [("MS-01", 1)], **{"Idempotency-Key": key}).json()
    assert first["order_id"] == again["order_id"]
    assert shop.balance("acc-bob") == balance - PRICES["MS-01"]
    other = shop.order("acc-bob", [("MS-01", 2)], **{"Idempotency-Key": key})
    assert other.status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'"a string"', 422, "must be a JSON object"),
        (b'{"account_id": "acc-alice"}', 422, "missing required field `items`"),
        (b'{"account_id": "acc-alice", "items": []}', 422, "length >= 1 - at `$.items`"),
        (
            b'{"account_id": 7, "items": [{"sku": "KB-01", "qty": 1}]}',
            422,
            "Expected `str`, got `int` - at `$.account_id`",
        ),
        (
            b'{"account_id": "acc-alice", "items": [{"sku": "KB-01", "qty": "2"}]}',
            422,
            "Expected `int`, got `str` - at `$.items[0].qty`",
        ),
        (
            b'{"account_id": "acc-alice", "items": [{"sku": "KB-01", "qty": -3}]}',
            422,
            "Expected `int` >= 1 - at `$.items[0].qty`",
        ),
        (
            b'{"account_id": "acc-alice", "items": [{"sku": "KB-01", "qty": 0}]}',
            422,
            "Expected `int` >= 1 - at `$.items[0].qty`",
        ),
        (
            b'{"account_id": "acc-alice", "items": [{"sku": "NOPE", "qty": 1}]}',
            422,
            "unknown sku 'NOPE' at `$.items[0].sku`",
        ),
        (
            b'{"account_id": "nobody", "items": [{"sku": "KB-01", "qty": 1}]}',
            422,
            "unknown account 'nobody' at `$.account_id`",
        ),
        (
            b'{"account_id": "acc-alice", "items": [{"sku": "KB-01", "qty": 1}, '
            b'{"sku": "KB-01", "qty": 1}]}',
            422,
            "appears twice",
        ),
        (
            b'{"account_id": "acc-alice", "items": [{"sku": "KB-01", "qty": 1e9}]}',
            422,
            "$.items[0].qty",
        ),
    ],
)
def test_bad_orders_get_a_4xx_that_names_the_problem(
    shop: Shop, body: bytes, status: int, needle: str
) -> None:
    resp = shop.http.post("/v1/orders", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]["message"]


def test_a_customer_reaches_only_its_own_account(shop: Shop) -> None:
    alice = {"authorization": f"Bearer {shop.token('acc-alice')}"}
    bob = {"authorization": f"Bearer {shop.token('acc-bob')}"}
    anonymous = httpx.Client(base_url=shop.runner.url, timeout=30)
    assert anonymous.get("/v1/accounts/acc-alice").status_code == 401
    assert anonymous.get("/v1/products").status_code == 200  # the catalog is public
    placed = shop.order("acc-bob", [("CBL-01", 1)], **bob)
    assert placed.status_code == 201, placed.text
    bobs = placed.json()["order_id"]
    assert anonymous.get(f"/v1/orders/{bobs}").status_code == 401
    assert anonymous.get(f"/v1/orders/{bobs}", headers=alice).status_code == 404
    assert anonymous.get(f"/v1/orders/{bobs}", headers=bob).status_code == 200
    assert anonymous.get("/v1/accounts/acc-bob", headers=alice).status_code == 404
    assert anonymous.get("/v1/accounts", headers=alice).status_code == 403
    on_bobs = shop.order("acc-bob", [("CBL-01", 1)], **alice)
    assert on_bobs.status_code == 403, on_bobs.text


def test_openapi(shop: Shop) -> None:
    doc = shop.get("/openapi.json")
    assert {"/v1/products", "/v1/orders", "/v1/orders/{order_id}", "/v1/shipments"} <= set(
        doc["paths"]
    )


def test_a_killed_idle_worker_comes_back(shop: Shop) -> None:
    if shop.placement != "processes":
        pytest.skip("only the processes placement has workers to kill")
    assert isinstance(shop.runner, Up)
    rows = {r["service"]: r for r in shop.runner.ps()}
    for service in ("billing", "inventory"):
        os.kill(rows[service]["pid"], signal.SIGKILL)

    def back() -> bool:
        now = {r["service"]: r for r in shop.runner.ps()}
        return all(
            now[s]["status"] == "ready" and now[s]["pid"] != rows[s]["pid"]
            for s in ("billing", "inventory")
        )

    wait_until(back, timeout=30)
    resp = shop.order("acc-dave", [("CBL-01", 1)])
    assert resp.json()["status"] == "confirmed"
