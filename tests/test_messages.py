from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

import cleave
from cleave.messages import check_immutable, from_json, from_msgpack, to_json, to_msgpack


class Item(cleave.Message):
    sku: str
    qty: Annotated[int, msgspec.Meta(ge=1)]


class Order(cleave.Message):
    items: tuple[Item, ...]
    note: str = ""


def test_messages_are_frozen_and_keyword_only() -> None:
    item = Item(sku="a", qty=1)
    with pytest.raises(AttributeError):
        item.qty = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Item("a", 1)  # type: ignore[misc]


def test_a_message_cannot_opt_out_of_frozen() -> None:
    with pytest.raises(TypeError, match="must be immutable"):

        class Loose(cleave.Message, frozen=False):  # type: ignore[call-arg]
            x: int


def test_event_topic_defaults_to_snake_case_of_the_class_name() -> None:
    class OrderPlacedHTTP(cleave.Event):
        order_id: str

    assert OrderPlacedHTTP.__topic__ == "order_placed_http"
    assert OrderPlacedHTTP.__version__ == 1


def test_event_topic_and_version_can_be_given() -> None:
    class Shipped(cleave.Event, topic="parcel_shipped", version=3):
        order_id: str

    assert (Shipped.__topic__, Shipped.__version__) == ("parcel_shipped", 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"topic": "Bad-Topic"}, "lower snake case"),
        ({"topic": ""}, "lower snake case"),
        ({"version": 0}, "positive int"),
        ({"version": True}, "positive int"),
    ],
)
def test_bad_event_declarations_are_explained(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(TypeError, match=match):

        class E(cleave.Event, **kwargs):  # type: ignore[misc]
            x: int


def test_topic_is_only_for_events() -> None:
    with pytest.raises(TypeError, match="apply to events"):

        class M(cleave.Message, topic="m"):  # type: ignore[call-arg]
            x: int


class Inner(msgspec.Struct):
    values: list[int]


class Bad(cleave.Message):
    a: list[int]
    b: dict[str, int]
    c: set[str]
    d: tuple[Inner, ...]
    e: bytearray
    ok: tuple[int, ...] = ()


def test_check_immutable_names_every_mutable_field() -> None:
    problems = check_immutable(Bad)
    assert any("Bad.a is a list" in p for p in problems)
    assert any("Bad.b is a dict" in p for p in problems)
    assert any("Bad.c is a set" in p for p in problems)
    assert any("Inner, a Struct that is not frozen" in p for p in problems)
    assert any("Inner.values is a list" in p for p in problems)
    assert any("Bad.e is a bytearray" in p for p in problems)
    assert check_immutable(Order) == []


def test_codecs_round_trip() -> None:
    order = Order(items=(Item(sku="a", qty=2),), note="x")
    assert from_msgpack(to_msgpack(order), Order) == order
    assert from_json(to_json(order), Order) == order


def test_decode_errors_say_where() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.items\[0\]\.qty"):
        from_json(b'{"items": [{"sku": "a", "qty": 0}]}', Order)
