"""Contract snapshots: what they record, that they are stable, and the declaration rules."""

# No `from __future__ import annotations`: the tests declare messages inside functions,
# and msgspec resolves string annotations in the module, where those names do not exist.
import json
from pathlib import Path
from typing import Annotated, Literal, Protocol

import msgspec
import pytest

import cleave
from cleave import schema_lock
from cleave.contracts import spec_of
from cleave.errors import ConfigError, DefinitionError
from conftest import SHOP


@pytest.fixture(scope="module")
def shop_lock() -> schema_lock.Lock:
    from cleave.app import load

    return schema_lock.snapshot(load(SHOP).app)


def test_the_shop_snapshot_has_every_contract_method_and_event(
    shop_lock: schema_lock.Lock,
) -> None:
    assert sorted(shop_lock["contracts"]) == [
        "billing.v1",
        "billing.v2",
        "catalog.v1",
        "inventory.v1",
        "notifications.v1",
        "orders.v1",
        "shipping.v1",
    ]
    orders = shop_lock["contracts"]["orders.v1"]
    assert orders["methods"]["place_order"] == {
        "request": "PlaceOrder",
        "response": "OrderView",
        "idempotent": True,
        "readonly": False,
        "deprecated": None,
    }
    confirmed = orders["events"]["order_confirmed.v1"]
    assert confirmed["subject"] == "cleave.evt.orders.order_confirmed.v1"
    assert confirmed["consumers"] == ["inventory", "notifications", "shipping"]


def test_fields_carry_wire_name_type_constraints_defaults_and_nullability(
    shop_lock: schema_lock.Lock,
) -> None:
    messages = shop_lock["messages"]
    qty = messages["Line"]["fields"][1]
    assert qty == {
        "name": "qty",
        "wire": "qty",
        "type": {"type": "int", "ge": 1, "le": 1000},
        "required": True,
        "nullable": False,
    }
    items = messages["PlaceOrder"]["fields"][1]["type"]
    assert items == {
        "type": "array",
        "container": "tuple",
        "item": {"type": "struct", "ref": "Line"},
        "min_length": 1,
        "max_length": 50,
    }
    reason = messages["OrderView"]["fields"][-1]
    assert reason["nullable"] is True
    assert reason["required"] is False
    assert reason["default"] is None
    status = messages["OrderView"]["fields"][2]["type"]
    assert status == {"type": "literal", "values": ["cancelled", "confirmed", "pending"]}


class Point(cleave.Message, array_like=True):
    x: int
    y: int = 0


class Shape(cleave.Message, tag="shape", tag_field="kind", rename="camel"):
    line_width: float | None = None
    points: tuple[Point, ...] = ()
    corner: tuple[int, Literal["a", "b"]] = (0, "a")


@cleave.contract("drawing", version=2)
class Drawing(Protocol):
    async def draw(self, req: Shape) -> Point: ...


def test_layout_and_nested_types_are_recorded() -> None:
    lock = schema_lock.snapshot_of("t", [spec_of(Drawing)])
    shape = lock["messages"]["Shape"]
    assert (shape["tag"], shape["tag_field"], shape["array_like"]) == ("shape", "kind", False)
    assert [f["wire"] for f in shape["fields"]] == ["lineWidth", "points", "corner"]
    assert shape["fields"][0]["type"] == {
        "type": "union",
        "of": [{"type": "float"}, {"type": "none"}],
    }
    assert shape["fields"][2]["type"] == {
        "type": "tuple",
        "items": [{"type": "int"}, {"type": "literal", "values": ["a", "b"]}],
    }
    assert shape["fields"][2]["default"] == [0, "a"]
    assert lock["messages"]["Point"]["array_like"] is True
    assert list(lock["contracts"]) == ["drawing.v2"]


def test_snapshots_are_deterministic_and_sorted(shop_lock: schema_lock.Lock) -> None:
    from cleave.app import load

    again = schema_lock.snapshot(load(SHOP).app)
    text = schema_lock.dumps(shop_lock)
    assert schema_lock.dumps(again) == text
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


def test_reading_a_missing_or_foreign_lock_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="write it with `cleave contracts snapshot`"):
        schema_lock.read(tmp_path / "contracts.lock.json")
    (tmp_path / "other.json").write_text('{"openapi": "3.1.0"}')
    with pytest.raises(ConfigError, match="is not a Cleave contracts lock"):
        schema_lock.read(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read"):
        schema_lock.read(tmp_path / "broken.json")


# -- the rules, where a contract is declared -----------------------------------------------


def test_a_message_cannot_forbid_unknown_fields() -> None:
    with pytest.raises(DefinitionError, match="must ignore the fields a newer writer adds"):

        class Strict(cleave.Message, forbid_unknown_fields=True):
            x: int


def test_a_nested_struct_that_forbids_unknown_fields_is_refused_by_the_contract() -> None:
    class Inner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
        x: int

    class Outer(cleave.Message):
        inner: Annotated[tuple[Inner, ...], msgspec.Meta(max_length=3)]

    class Fine(cleave.Message):
        pass

    with pytest.raises(DefinitionError, match="Inner cannot forbid unknown fields"):

        @cleave.contract("strict", version=1)
        class Strict(Protocol):
            async def call(self, req: Outer) -> Fine: ...

    class Evt(cleave.Event):
        inner: Inner | None = None

    with pytest.raises(DefinitionError, match="event Evt: message Inner cannot forbid"):

        @cleave.contract("strict", version=1, events=[Evt])
        class Publisher(Protocol):
            async def call(self, req: Fine) -> Fine: ...
