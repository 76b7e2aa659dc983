"""The gateway over HTTP, in both placements: mapping, validation, error statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest


@pytest.fixture
async def http(placed: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=placed.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client


def error(resp: httpx.Response) -> dict[str, str]:
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, dict[str, str]] = resp.json()
    return body["error"]


async def test_body_path_and_query_fill_the_request(http: httpx.AsyncClient) -> None:
    resp = await http.post("/greet", json={"name": "ann"})
    assert resp.status_code == 201
    assert resp.json()["text"] == "hello ann"
    assert resp.headers["x-request-id"]
    assert (await http.get("/greet/bo")).json()["text"] == "hello bo"
    assert (await http.get("/greet/bo", params={"times": "2"})).status_code == 200
    assert (await http.get("/hello", params={"name": "cy"})).json()["text"] == "hello cy"


async def test_unwrap_returns_one_field(http: httpx.AsyncClient, placed: Any) -> None:
    await http.post("/greet", json={"name": "dee"})
    await placed.settle()
    assert await (await http.get("/audit")).aread() == b'["dee"]'


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        (b"{bad", 400, "InvalidJSON", "not valid JSON"),
        (b"[1, 2]", 422, "InvalidArgument", "must be a JSON object, got list"),
        (b"", 422, "InvalidArgument", "the request body is empty"),
        (b'{"name": 5}', 422, "InvalidArgument", "Expected `str`, got `int` - at `$.name`"),
        (b'{"name": ""}', 422, "InvalidArgument", "length >= 1 - at `$.name`"),
        (b'{"name": "a", "times": 9}', 422, "InvalidArgument", "<= 3 - at `$.times`"),
        (b'{"name": "a", "times": "2"}', 422, "InvalidArgument", "got `str` - at `$.times`"),
        (b"{}", 422, "InvalidArgument", "missing required field `name`"),
    ],
)
async def test_bad_input_is_a_4xx_that_names_the_problem(
    http: httpx.AsyncClient, body: bytes, status: int, kind: str, message: str
) -> None:
    resp = await http.post("/greet", content=body)
    assert resp.status_code == status
    err = error(resp)
    assert err["kind"] == kind
    assert message in err["message"]


async def test_bad_path_and_query_parameters(http: httpx.AsyncClient) -> None:
    resp = await http.get("/greet/ann", params={"times": "many"})
    assert resp.status_code == 422
    assert "query parameter `times`" in error(resp)["message"]
    resp = await http.get("/hello")
    assert resp.status_code == 422
    assert error(resp)["message"] == "missing query parameter `name`"


async def test_too_large_a_body(http: httpx.AsyncClient) -> None:
    resp = await http.post("/greet", content=b'{"name": "' + b"x" * (1 << 20) + b'"}')
    assert resp.status_code == 413


async def test_unknown_routes_and_methods_answer_json(http: httpx.AsyncClient) -> None:
    resp = await http.get("/nowhere")
    assert (resp.status_code, error(resp)["kind"]) == (404, "NotFound")
    resp = await http.delete("/greet")
    assert (resp.status_code, error(resp)["kind"]) == (405, "MethodNotAllowed")


@pytest.mark.parametrize(
    ("how", "status", "kind"),
    [
        ("not_found", 404, "NotFound"),
        ("invalid", 422, "InvalidArgument"),
        ("conflict", 409, "Conflict"),
        ("teapot", 418, "Teapot"),
        ("crash", 502, "RemoteError"),
    ],
)
async def test_service_errors_map_to_statuses(
    http: httpx.AsyncClient, how: str, status: int, kind: str
) -> None:
    resp = await http.post("/fail", json={"how": how})
    assert resp.status_code == status
    assert error(resp)["kind"] == kind


async def test_an_internal_error_does_not_leak(http: httpx.AsyncClient) -> None:
    resp = await http.post("/fail", json={"how": "crash"})
    text = resp.text
    assert "secret-internal-detail" not in text
    assert "Traceback" not in text
    assert "greeter.fail failed (KeyError)" in error(resp)["message"]


async def test_the_idempotency_key_makes_a_repeat_the_same_call(http: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "abc"}
    first = await http.post("/add", json={"key": "k", "amount": 3}, headers=headers)
    again = await http.post("/add", json={"key": "k", "amount": 3}, headers=headers)
    assert first.json() == again.json() == {"key": "k", "total": 3, "calls": 1}
    other = await http.post("/add", json={"key": "k", "amount": 4}, headers=headers)
    assert other.status_code == 409
    assert "different request" in error(other)["message"]
    fresh = await http.post("/add", json={"key": "k", "amount": 3})
    assert fresh.json()["total"] == 6
    bad = await http.post(
        "/add", json={"key": "k", "amount": 3}, headers={"Idempotency-Key": "x" * 300}
    )
    assert bad.status_code == 400


async def test_openapi_is_generated_from_the_types(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "Sample", "version": "1.2.3", "description": ""}
    post = doc["paths"]["/greet"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["times"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 3,
        "default": 1,
    }
    assert set(post["responses"]) >= {"201", "422", "503", "504"}
    get = doc["paths"]["/greet/{name}"]["get"]
    assert [(p["name"], p["in"]) for p in get["parameters"]] == [
        ("name", "path"),
        ("times", "query"),
    ]
    add_params = doc["paths"]["/add"]["post"]["parameters"]
    assert any(p["name"] == "Idempotency-Key" for p in add_params)
    assert "Greeting" in doc["components"]["schemas"]


async def test_a_slow_call_is_a_504_at_the_deadline(tmp_path: Any) -> None:
    import time

    import sample_app

    from cleave.config import Plan, RuntimeSettings
    from cleave.testing import Harness

    plan = Plan(runtime=RuntimeSettings(timeout=0.3))
    async with Harness(sample_app.app, tmp_path, plan=plan) as h:
        transport = httpx.ASGITransport(app=h.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            started = time.monotonic()
            resp = await http.post("/sleep", json={"seconds": 3})
            assert time.monotonic() - started < 1.5
    assert resp.status_code == 504
    assert error(resp)["kind"] == "DeadlineExceeded"


@pytest.mark.nats
async def test_a_missing_service_is_a_503_with_retry_after(tmp_path: Any, nats_url: str) -> None:
    import sample_app

    from cleave.testing import NatsHarness

    async with NatsHarness(sample_app.app, nats_url, tmp_path, groups={"audit": ["audit"]}) as h:
        transport = httpx.ASGITransport(app=h.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            resp = await http.post("/greet", json={"name": "x"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert "no replica of greeter is running" in error(resp)["message"]


async def test_a_405_names_every_method_of_the_path(tmp_path: Any) -> None:
    import sample_app

    import cleave
    from cleave.config import AuthSettings
    from cleave.gateway.asgi import build_asgi
    from cleave.gateway.auth import Authenticator
    from cleave.gateway.limits import RateLimiter
    from cleave.testing import Harness

    gateway = cleave.Gateway()
    gateway.post("/greet", sample_app.Greeter.greet, status=201, auth="public")
    gateway.get("/greet", sample_app.Greeter.greet, auth="public")
    async with Harness(sample_app.app, tmp_path) as h:
        auth = Authenticator(AuthSettings(), app_name="t", root=tmp_path, state_dir=tmp_path)
        asgi = build_asgi(
            gateway,
            h.host.router,
            timeout=5,
            app_name="t",
            auth=auth,
            limiter=RateLimiter(0, 1),
        )
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for method in ("DELETE", "PUT", "OPTIONS"):
                resp = await http.request(method, "/greet")
                assert resp.status_code == 405
                assert resp.headers["allow"] == "GET, HEAD, POST"
                assert error(resp)["message"] == (
                    f"{method} is not allowed on /greet; use GET, HEAD, POST"
                )
            assert (await http.get("/greet", params={"name": "ann"})).status_code == 200
            assert (await http.head("/greet", params={"name": "ann"})).status_code == 200
            assert (await http.post("/greet", json={"name": "ann"})).status_code == 201
            resp = await http.post("/openapi.json")
            assert (resp.status_code, resp.headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("x" * 256, "the Idempotency-Key header is 256 characters long"),
        ("caf\xe9", "holds 'é' at position 3, which is not printable ASCII"),
        ("a\tb", "holds '\\t' at position 1, which is not printable ASCII"),
    ],
)
async def test_a_bad_idempotency_key_is_a_400_that_says_what_is_wrong(
    http: httpx.AsyncClient, key: str, message: str
) -> None:
    headers = [("Idempotency-Key", key.encode("latin-1"))]
    resp = await http.post("/add", json={"key": "k", "amount": 1}, headers=headers)
    assert resp.status_code == 400
    assert message in error(resp)["message"]
    assert "send 1 to 255 printable ASCII characters" in error(resp)["message"]


def test_the_idempotency_key_format_is_the_documented_one() -> None:
    import re

    from cleave.gateway.routes import IDEMPOTENCY_KEY_SCHEMA, idempotency_key_problem

    pattern = re.compile(IDEMPOTENCY_KEY_SCHEMA["pattern"])
    for key in ["a", "x" * 255, "a b", "~!#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}", *"!~"]:
        assert idempotency_key_problem(key) == "", key
        assert pattern.fullmatch(key), key
    for key in ["", " ", " a", "a ", "x" * 256, "\x7f", "é", "a\nb"]:
        assert idempotency_key_problem(key), key
        assert not (pattern.fullmatch(key) and 1 <= len(key) <= 255), key
    assert "starts or ends with a space" in idempotency_key_problem(" a")
    assert "is empty" in idempotency_key_problem("")


async def test_a_whole_number_written_as_a_float_is_an_integer(http: httpx.AsyncClient) -> None:
    # JSON Schema (and so the OpenAPI document) counts 2.0 and 2e0 as integers.
    for body in (b'{"name": "ann", "times": 2.0}', b'{"name": "ann", "times": 2e0}'):
        resp = await http.post("/greet", content=body)
        assert resp.status_code == 201, resp.text
        assert resp.json()["text"] == "hello ann"
    resp = await http.post("/greet", content=b'{"name": "ann", "times": 2.5}')
    assert resp.status_code == 422
    assert "Expected `int`, got `float` - at `$.times`" in error(resp)["message"]
