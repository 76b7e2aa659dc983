"""The OpenAPI document: error responses as they apply, header constraints, links."""

from __future__ import annotations

from typing import Any

import pytest
import sample_app

import cleave
from cleave.errors import DefinitionError
from cleave.gateway.openapi import openapi
from cleave.gateway.routes import IDEMPOTENCY_KEY_SCHEMA


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi(sample_app.gateway, title="Sample")


def test_each_operation_lists_the_errors_it_can_answer(doc: dict[str, Any]) -> None:
    post = doc["paths"]["/greet"]["post"]["responses"]
    # 418: Teapot, an error of the greeter contract (its own test is below)
    assert set(post) == {
        *("201", "400", "401", "404", "409", "413", "418", "422", "429", "502", "503", "504")
    }
    get = doc["paths"]["/greet/{name}"]["get"]["responses"]
    # no 400, 413; 401 for a bad token (the route is public), 429 over the rate limit
    assert set(get) == {"200", "401", "404", "409", "418", "422", "429", "502", "503", "504"}
    assert "InvalidJSON" in post["400"]["description"]
    for responses in (post, get):
        for status, response in responses.items():
            assert response["headers"]["X-Request-Id"]["schema"] == {"type": "string"}
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}
    assert post["503"]["headers"]["Retry-After"]["required"] is True
    error = doc["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["kind", "message", "request_id"]


def test_a_contracts_own_errors_are_listed_on_its_routes(doc: dict[str, Any]) -> None:
    fail = doc["paths"]["/fail"]["post"]["responses"]  # greeter, which declares Teapot
    assert str(sample_app.Teapot.http_status) in fail
    assert "(Teapot)" in fail[str(sample_app.Teapot.http_status)]["description"]
    assert str(sample_app.Teapot.http_status) not in doc["paths"]["/hello"]["get"]["responses"]


def test_the_idempotency_key_header_is_documented_with_its_constraints(
    doc: dict[str, Any],
) -> None:
    add = doc["paths"]["/add"]["post"]
    [header] = [p for p in add["parameters"] if p["in"] == "header"]
    assert header["name"] == "Idempotency-Key"
    assert header["schema"] == IDEMPOTENCY_KEY_SCHEMA
    assert (header["schema"]["minLength"], header["schema"]["maxLength"]) == (1, 255)
    assert "Idempotency-Key" in add["responses"]["400"]["description"]
    assert "Idempotency-Key" in add["responses"]["409"]["description"]
    greet = doc["paths"]["/greet"]["post"]
    assert not [p for p in greet["parameters"] if p["in"] == "header"]


def test_links_take_their_parameters_from_the_response_or_the_request() -> None:
    gateway = cleave.Gateway()
    gateway.post("/greet", sample_app.Greeter.greet, links={"Again": sample_app.Greeter.greet})
    gateway.get("/greet/{name}", sample_app.Greeter.greet)
    gateway.post(
        "/add",
        sample_app.Greeter.add,
        links={"Hello": (sample_app.Front.hello, {"name": "$response.body#/key"})},
    )
    gateway.get("/hello", sample_app.Front.hello)
    paths = openapi(gateway, title="t")["paths"]
    again = paths["/greet"]["post"]["responses"]["200"]["links"]["Again"]
    assert again["operationId"] == "greeter_greet"
    assert again["parameters"] == {"name": "$request.body#/name", "times": "$request.body#/times"}
    hello = paths["/add"]["post"]["responses"]["200"]["links"]["Hello"]
    assert hello["operationId"] == "front_hello"
    assert hello["parameters"] == {"name": "$response.body#/key"}
    assert "links" not in paths["/hello"]["get"]["responses"]["200"]


def test_the_shop_links_a_new_order_to_its_status() -> None:
    from shop.app import gateway

    responses = openapi(gateway, title="Shop")["paths"]["/v1/orders"]["post"]["responses"]
    for status in ("201", "202"):
        link = responses[status]["links"]["GetOrder"]
        assert link["operationId"] == "orders_get_order"
        assert link["parameters"] == {"order_id": "$response.body#/order_id"}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (sample_app.Front.twice, "leads to front.twice, which no route of the gateway serves"),
        (sample_app.Front.hello, "needs `name`, which is not a field of Total nor of Add"),
        (
            (sample_app.Front.hello, {"nope": "$response.body#/key"}),
            "sets ['nope'], which are not parameters of GET /hello",
        ),
    ],
)
def test_a_link_that_cannot_be_followed_is_refused(target: Any, message: str) -> None:
    gateway = cleave.Gateway()
    gateway.post("/add", sample_app.Greeter.add, links={"Next": target})
    gateway.get("/hello", sample_app.Front.hello)
    with pytest.raises(DefinitionError, match="route POST /add: link 'Next'") as raised:
        openapi(gateway, title="t")
    assert message in str(raised.value)
