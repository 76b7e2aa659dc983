"""The AsyncAPI 3.0 document of the shop's events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest

from cleave import asyncapi
from cleave.app import load
from cleave.messages import to_json
from conftest import SHOP, cli


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi.document(load(SHOP).app, "1.0.0")


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_one_channel_per_event_subject_and_major(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    addresses = sorted(c["address"] for c in doc["channels"].values())
    assert addresses == [
        "cleave.evt.billing.payment_captured.v1",
        "cleave.evt.billing.payment_captured.v2",
        "cleave.evt.billing.payment_refunded.v1",
        "cleave.evt.orders.order_cancelled.v1",
        "cleave.evt.orders.order_confirmed.v1",
        "cleave.evt.shipping.shipment_created.v1",
    ]


def test_the_producer_sends_and_every_consumer_receives(doc: dict[str, Any]) -> None:
    on_confirmed = {
        name: op["action"]
        for name, op in doc["operations"].items()
        if op["channel"]["$ref"] == "#/channels/orders-order_confirmed-v1"
    }
    assert on_confirmed == {
        "orders-publish-order_confirmed-v1": "send",
        "inventory-on-order-confirmed": "receive",
        "notifications-on-order-confirmed": "receive",
        "shipping-on-order-confirmed": "receive",
    }


def test_every_reference_resolves_and_ids_are_plain(doc: dict[str, Any]) -> None:
    for ref in _refs(doc):
        _resolve(doc, ref)
    for section in (doc["channels"], doc["operations"], doc["components"]["messages"]):
        for key in section:
            assert key.replace("-", "").replace("_", "").isalnum(), key


def test_payload_schemas_accept_real_events_and_reject_bad_ones(doc: dict[str, Any]) -> None:
    from shop.contracts.orders import Line, OrderConfirmed

    message = doc["components"]["messages"]["orders-order_confirmed-v1"]
    schema = {**_resolve(doc, message["payload"]["$ref"]), "components": doc["components"]}
    validator = jsonschema_rs.validator_for(schema)
    event = OrderConfirmed(
        order_id="o1", account_id="a1", total_cents=300, items=(Line(sku="s", qty=3),)
    )
    assert validator.is_valid(json.loads(to_json(event)))
    bad = msgspec.to_builtins(event) | {"items": [{"sku": "s", "qty": 0}]}
    assert not validator.is_valid(bad)


def test_the_command_writes_the_document(tmp_path: Path, doc: dict[str, Any]) -> None:
    out = tmp_path / "asyncapi.json"
    cli("contracts", "asyncapi", SHOP, "--output", out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
