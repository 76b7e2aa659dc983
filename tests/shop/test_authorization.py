"""Who may call what in the shop: every route x every kind of caller, in both placements.

The callers: no token, the owner of the objects asked about (Alice), another
customer (Bob) and an admin. The routes: every one the shop's gateway
declares (a test fails if one is added without a row here). The object-level
answers come from the owning services, over the placement's transport, from
the identity the call carries: so the monolith and NATS must agree.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from cleave.testing import Harness, NatsHarness

CALLERS = ("anonymous", "owner", "other", "admin")

#: (method, route path, the path asked, body) -> status for (anonymous, owner, other, admin).
MATRIX: list[tuple[str, str, str, Any, tuple[int, int, int, int]]] = [
    ("GET", "/v1/products", "/v1/products", None, (200, 200, 200, 200)),
    ("GET", "/v1/products/{sku}", "/v1/products/KB-01", None, (200, 200, 200, 200)),
    ("GET", "/v1/inventory/{sku}", "/v1/inventory/KB-01", None, (200, 200, 200, 200)),
    ("GET", "/v1/accounts", "/v1/accounts", None, (401, 403, 403, 200)),
    (
        "GET",
        "/v1/accounts/{account_id}",
        "/v1/accounts/acc-alice",
        None,
        (401, 200, 404, 200),
    ),
    (
        "POST",
        "/v1/orders",
        "/v1/orders",
        {"account_id": "acc-alice", "items": [{"sku": "CBL-01", "qty": 1}]},
        (401, 201, 403, 201),
    ),
    ("GET", "/v1/orders", "/v1/orders?account_id=acc-alice", None, (401, 200, 404, 200)),
    ("GET", "/v1/orders/{order_id}", "/v1/orders/{confirmed}", None, (401, 200, 404, 200)),
    ("GET", "/v1/shipments", "/v1/shipments?order_id={confirmed}", None, (401, 200, 404, 200)),
    # Nothing shipped for it: shipping asks orders whose it is.
    ("GET", "/v1/shipments", "/v1/shipments?order_id={cancelled}", None, (401, 200, 404, 200)),
    (
        "GET",
        "/v1/notifications",
        "/v1/notifications?order_id={confirmed}",
        None,
        (401, 200, 404, 200),
    ),
]


@pytest.fixture
def cleave_app() -> Any:
    from shop.app import app

    return app


@pytest.fixture
def shop(cleave_harness: Harness | NatsHarness) -> Harness | NatsHarness:
    """The shop in each placement (the pytest plugin's harness)."""
    return cleave_harness


def test_every_route_of_the_shop_is_in_the_matrix() -> None:
    from shop.app import gateway

    declared = {(r.http_method, r.path) for r in gateway.routes}
    assert declared == {(m, p) for m, p, *_ in MATRIX}


async def test_who_may_call_what(shop: Any) -> None:
    from shop.contracts.orders import Line, Orders, PlaceOrder

    # Alice's orders, placed by the system (a client with no identity): one confirmed
    # (shipped once its events are handled), one cancelled for want of stock.
    orders = shop.client(Orders)
    confirmed = await orders.place_order(
        PlaceOrder(account_id="acc-alice", items=(Line(sku="MS-01", qty=1),))
    )
    cancelled = await orders.place_order(
        PlaceOrder(account_id="acc-alice", items=(Line(sku="GPU-01", qty=999),))
    )
    assert (confirmed.status, cancelled.status) == ("confirmed", "cancelled")
    await shop.settle()
    tokens = {
        "anonymous": None,
        "owner": shop.token("acc-alice"),
        "other": shop.token("acc-bob"),
        "admin": shop.token("ops-1", "admin"),
    }
    got: dict[tuple[str, str], int] = {}
    want: dict[tuple[str, str], int] = {}
    transport = httpx.ASGITransport(app=shop.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        for method, _, path, body, statuses in MATRIX:
            path = path.format(confirmed=confirmed.order_id, cancelled=cancelled.order_id)
            for caller, status in zip(CALLERS, statuses, strict=True):
                headers = {"idempotency-key": os.urandom(8).hex()}
                if tokens[caller]:
                    headers["authorization"] = f"Bearer {tokens[caller]}"
                resp = await http.request(method, path, json=body, headers=headers)
                got[(f"{method} {path}", caller)] = resp.status_code
                want[(f"{method} {path}", caller)] = status
                if resp.status_code == 401:
                    assert resp.headers["www-authenticate"].startswith("Bearer ")
                if resp.status_code >= 400:
                    assert resp.json()["error"]["message"], resp.text
    wrong = {k: (got[k], w) for k, w in want.items() if got[k] != w}
    assert not wrong, f"(got, expected) by (route, caller): {wrong}"


async def test_a_customer_sees_only_its_own_orders_in_a_list(shop: Any) -> None:
    from shop.contracts.orders import Line, Orders, PlaceOrder

    orders = shop.client(Orders)
    await orders.place_order(PlaceOrder(account_id="acc-bob", items=(Line(sku="CBL-01", qty=1),)))
    transport = httpx.ASGITransport(app=shop.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        bob = {"authorization": f"Bearer {shop.token('acc-bob')}"}
        listed = await http.get("/v1/orders", params={"account_id": "acc-bob"}, headers=bob)
        assert listed.status_code == 200
        assert {o["account_id"] for o in listed.json()} == {"acc-bob"}
        # A body field cannot claim another identity: the token decides.
        resp = await http.post(
            "/v1/orders",
            json={"account_id": "acc-carol", "items": [{"sku": "CBL-01", "qty": 1}]},
            headers=bob,
        )
        assert resp.status_code == 403
        assert resp.json()["error"]["kind"] == "PermissionDenied"
        assert "acc-carol" in resp.json()["error"]["message"]


async def test_page_sizes_are_capped(shop: Any) -> None:
    transport = httpx.ASGITransport(app=shop.asgi)
    admin = {"authorization": f"Bearer {shop.token('ops-1', 'admin')}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        resp = await http.get("/v1/products", params={"limit": "101"})
        assert resp.status_code == 422
        assert "limit" in resp.json()["error"]["message"]
        page = (await http.get("/v1/products", params={"limit": "3"})).json()
        rest = (await http.get("/v1/products", params={"after": page[-1]["sku"]})).json()
        assert len(page) == 3
        assert rest[0]["sku"] > page[-1]["sku"]
        resp = await http.get("/v1/accounts", params={"limit": "1000"}, headers=admin)
        assert resp.status_code == 422
        two = await http.get("/v1/accounts", params={"limit": "2"}, headers=admin)
        assert [a["account_id"] for a in two.json()] == ["acc-alice", "acc-bob"]
        resp = await http.get(
            "/v1/orders", params={"account_id": "acc-alice", "limit": "0"}, headers=admin
        )
        assert resp.status_code == 422
