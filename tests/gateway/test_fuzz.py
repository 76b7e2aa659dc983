"""No input ever produces a 5xx or a traceback: random bodies, paths and headers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleave.config import GatewaySettings, Plan
from cleave.testing import Harness

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
order_like = st.fixed_dictionaries(
    {},
    optional={
        "account_id": json_values | st.sampled_from(["acc-alice", "acc-poor", "nobody"]),
        "items": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "sku": json_values | st.sampled_from(["KB-01", "GPU-01", "NOPE"]),
                    "qty": json_values | st.integers(-5, 2000),
                },
            ),
            max_size=4,
        )
        | json_values,
    },
)


@pytest.fixture(scope="module")
def shop_asgi(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import asyncio

    from shop.app import app

    loop = asyncio.new_event_loop()
    # No rate limit: hundreds of requests in a burst, each of which must reach the routes.
    harness = Harness(
        app, tmp_path_factory.mktemp("fuzz"), plan=Plan(gateway=GatewaySettings(rate=0))
    )
    loop.run_until_complete(harness.__aenter__())
    yield loop, harness.asgi, harness.token("ops", "admin")
    loop.run_until_complete(harness.__aexit__())
    loop.close()


def request(shop_asgi: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    loop, asgi, token = shop_asgi
    # An admin's token: the bodies reach the services, whatever account they name.
    kw["headers"] = {"authorization": f"Bearer {token}", **kw.get("headers", {})}

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            return await c.request(method, path, **kw)

    return loop.run_until_complete(go())  # type: ignore[no-any-return]


def assert_clean(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text
    assert "Traceback" not in resp.text
    assert resp.headers["content-type"] == "application/json"
    if resp.status_code >= 400:
        assert resp.json()["error"]["message"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=order_like | json_values)
def test_random_order_bodies(shop_asgi: Any, body: Any) -> None:
    assert_clean(request(shop_asgi, "POST", "/v1/orders", content=json.dumps(body)))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=200))
def test_random_bytes(shop_asgi: Any, raw: bytes) -> None:
    assert_clean(request(shop_asgi, "POST", "/v1/orders", content=raw))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    segment=st.text(min_size=1, max_size=80).filter(
        lambda s: "/" not in s and "?" not in s and "#" not in s
    ),
    route=st.sampled_from(["/v1/products/", "/v1/inventory/", "/v1/accounts/", "/v1/orders/"]),
    key=st.text(max_size=300),
)
def test_random_ids_and_keys(shop_asgi: Any, segment: str, route: str, key: str) -> None:
    from urllib.parse import quote

    assert_clean(request(shop_asgi, "GET", route + quote(segment, safe="")))
    assert_clean(request(shop_asgi, "GET", "/v1/shipments", params={"order_id": segment}))
    headers = {"Idempotency-Key": key.encode("utf-8", "ignore").decode("latin-1")}
    body = {"account_id": "acc-carol", "items": [{"sku": "CBL-01", "qty": 1}]}
    try:
        resp = request(shop_asgi, "POST", "/v1/orders", json=body, headers=headers)
    except (UnicodeEncodeError, httpx.LocalProtocolError):
        return  # the client itself refuses such a header; nothing reached the server
    assert_clean(resp)
