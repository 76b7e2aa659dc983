"""The catalogue of schema changes: each with its verdict per direction.

Every case declares a message twice, old and new, from source text; the same
fields serve as a method's request, its response and an event, so one compare
gives the three verdicts: request (old callers -> new server), response (new
server -> old callers) and event (both, over the retained stream).
"""

from __future__ import annotations

import enum
import itertools
import sys
import textwrap
import types
from typing import Annotated, Any, Literal, NamedTuple, Protocol

import msgspec
import pytest

import cleave
from cleave import compat, schema_lock
from cleave.contracts import spec_of


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Color3(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


_NAMES = {
    "cleave": cleave,
    "msgspec": msgspec,
    "Annotated": Annotated,
    "Any": Any,
    "Literal": Literal,
    "Meta": msgspec.Meta,
    "Protocol": Protocol,
    "Color": Color,
    "Color3": Color3,
}


_CASES = itertools.count()


def lock_of(fields: str, prelude: str = "", options: str = "", source: str = "") -> Any:
    """A snapshot of contract `things` whose method and event carry ``fields``."""
    options = f", {options}" if options else ""
    body = textwrap.indent(textwrap.dedent(fields).strip() or "pass", "    ")
    src = source or (
        textwrap.dedent(prelude)
        + f"\nclass Msg(cleave.Message{options}):\n{body}\n"
        + f"\nclass Thing(cleave.Event, topic='thing'{options}):\n{body}\n"
        + "\n@cleave.contract('things', version=1, events=[Thing])\n"
        + "class Things(Protocol):\n    async def call(self, req: Msg) -> Msg: ...\n"
    )
    # A real module, so msgspec resolves the case's forward references in it.
    module = types.ModuleType(f"compat_case_{next(_CASES)}")
    sys.modules[module.__name__] = module
    names = module.__dict__
    names.update(_NAMES)
    exec(compile(src, "<case>", "exec", dont_inherit=True), names)  # the case's declarations
    contracts = [spec_of(v) for v in list(names.values()) if hasattr(v, "__cleave_contract__")]
    return schema_lock.snapshot_of("case", contracts, {names["Thing"]: ["consumer"]})


def verdicts(changes: list[compat.Change]) -> tuple[str, str, str]:
    """The worst verdict on the request, response and event paths."""
    worst = {"request": "safe", "response": "safe", "event": "safe"}
    rank = {"safe": 0, "warning": 1, "breaking": 2}
    for c in changes:
        role = "event" if ".events." in c.path else c.path.split(".")[3]
        if rank[c.verdict] > rank[worst[role]]:
            worst[role] = c.verdict
    return worst["request"], worst["response"], worst["event"]


class Case(NamedTuple):
    name: str
    old: str
    new: str
    request: str
    response: str
    event: str
    change: str = ""  # the change the check must name ("" for none)
    prelude_old: str = ""
    prelude_new: str = ""
    options_old: str = ""
    options_new: str = ""
    where: str = ""  # the path below the message root, e.g. "items[].qty"


S, W, B = "safe", "warning", "breaking"
LINE = "class Line(cleave.Message):\n    sku: str\n    qty: Annotated[int, Meta(ge=1)]\n"
LINE_QTY2 = "class Line(cleave.Message):\n    sku: str\n    qty: Annotated[int, Meta(ge=2)]\n"
LINE_NEW = "class Line(cleave.Message):\n    sku: str\n    qty: int\n    unit: str\n"
LINE_RENAMED = (
    "class OrderLine(cleave.Message):\n    sku: str\n    qty: Annotated[int, Meta(ge=1)]\n"
)
AB = (
    "class A(cleave.Message, tag=True):\n    x: int\n"
    "class B(cleave.Message, tag=True):\n    y: int\n"
    "class C(cleave.Message, tag=True):\n    z: int\n"
)

CATALOGUE = [
    Case(
        "field added with default",
        "a: int",
        "a: int\nb: int = 0",
        S,
        S,
        S,
        "field added with default",
        where="b",
    ),
    Case(
        "nullable field added, default None",
        "a: int",
        "a: int\nb: str | None = None",
        S,
        S,
        S,
        "field added with default",
    ),
    Case(
        "field added without default",
        "a: int",
        "a: int\nb: int",
        B,
        B,
        B,
        "field added without default",
        where="b",
    ),
    Case("required field removed", "a: int\nb: int", "a: int", W, B, B, "field removed", where="b"),
    Case(
        "optional field removed", "a: int\nb: int = 0", "a: int", W, W, W, "optional field removed"
    ),
    Case(
        "optional made required", "a: int = 0", "a: int", B, S, B, "field made required", where="a"
    ),
    Case("required made optional", "a: int", "a: int = 0", S, S, S, "field made optional"),
    Case(
        "made optional, omitted by omit_defaults",
        "a: int",
        "a: int = 0",
        S,
        B,
        B,
        "field made optional and omitted",
        options_new="omit_defaults=True",
    ),
    Case("default changed", "a: int = 0", "a: int = 1", W, S, W, "default changed"),
    Case("made nullable", "a: str", "a: str | None", S, B, B, "made nullable", where="a"),
    Case("made non-nullable", "a: str | None", "a: str", B, S, B, "made non-nullable"),
    Case(
        "optional made nullable, default None",
        "a: str = ''",
        "a: str | None = None",
        W,
        B,
        B,
        "made nullable",
    ),
    Case("int widened to float", "a: int", "a: float", S, B, B, "type widened", where="a"),
    Case("float narrowed to int", "a: float", "a: int", B, S, B, "type narrowed"),
    Case("str narrowed to Literal", "a: str", "a: Literal['x', 'y']", B, S, B, "type narrowed"),
    Case("Literal widened to str", "a: Literal['x', 'y']", "a: str", S, B, B, "type widened"),
    Case("int narrowed to Literal", "a: int", "a: Literal[1, 2]", B, S, B, "type narrowed"),
    Case("Literal value added", "a: Literal['x']", "a: Literal['x', 'y']", S, B, B, "value added"),
    Case(
        "Literal value removed", "a: Literal['x', 'y']", "a: Literal['x']", B, S, B, "value removed"
    ),
    Case("enum value added", "a: Color", "a: Color3", S, B, B, "value added"),
    Case("enum value removed", "a: Color3", "a: Color", B, S, B, "value removed"),
    Case("str narrowed to enum", "a: str", "a: Color", B, S, B, "type narrowed"),
    Case("union member added", "a: int", "a: int | str", S, B, B, "union member added"),
    Case("union member removed", "a: int | str", "a: int", B, S, B, "union member removed"),
    Case("type changed str to int", "a: str", "a: int", B, B, B, "type changed"),
    Case("Any narrowed to int", "a: Any", "a: int", B, S, B, "type narrowed"),
    Case("int widened to Any", "a: int", "a: Any", S, B, B, "type widened"),
    Case(
        "lower bound raised",
        "a: Annotated[int, Meta(ge=0)]",
        "a: Annotated[int, Meta(ge=1)]",
        B,
        S,
        B,
        "constraint tightened",
        where="a",
    ),
    Case(
        "lower bound lowered",
        "a: Annotated[int, Meta(ge=1)]",
        "a: Annotated[int, Meta(ge=0)]",
        S,
        B,
        B,
        "constraint loosened",
    ),
    Case(
        "ge made gt at the same value",
        "a: Annotated[int, Meta(ge=1)]",
        "a: Annotated[int, Meta(gt=1)]",
        B,
        S,
        B,
        "constraint tightened",
    ),
    Case(
        "upper bound added",
        "a: float",
        "a: Annotated[float, Meta(le=9.5)]",
        B,
        S,
        B,
        "constraint tightened",
    ),
    Case(
        "upper bound removed",
        "a: Annotated[float, Meta(lt=9.5)]",
        "a: float",
        S,
        B,
        B,
        "constraint loosened",
    ),
    Case(
        "max_length added",
        "a: str",
        "a: Annotated[str, Meta(max_length=10)]",
        B,
        S,
        B,
        "constraint tightened",
    ),
    Case(
        "min_length lowered",
        "a: Annotated[str, Meta(min_length=3)]",
        "a: Annotated[str, Meta(min_length=1)]",
        S,
        B,
        B,
        "constraint loosened",
    ),
    Case(
        "pattern changed",
        "a: Annotated[str, Meta(pattern='^a')]",
        "a: Annotated[str, Meta(pattern='^b')]",
        B,
        B,
        B,
        "constraint changed",
    ),
    Case(
        "multiple_of made stricter",
        "a: Annotated[int, Meta(multiple_of=2)]",
        "a: Annotated[int, Meta(multiple_of=4)]",
        B,
        S,
        B,
        "constraint tightened",
    ),
    Case(
        "tuple length limit raised",
        "a: Annotated[tuple[int, ...], Meta(max_length=5)]",
        "a: Annotated[tuple[int, ...], Meta(max_length=9)]",
        S,
        B,
        B,
        "constraint loosened",
    ),
    Case(
        "wire rename",
        "a: int",
        "a: int = msgspec.field(name='b')",
        B,
        B,
        B,
        "wire rename",
        where="a",
    ),
    Case("python rename, same wire name", "a: int", "b: int = msgspec.field(name='a')", S, S, S),
    Case(
        "struct renamed on the wire (rename=camel)",
        "order_id: str",
        "order_id: str",
        B,
        B,
        B,
        "wire rename",
        options_new="rename='camel'",
    ),
    Case(
        "array_like switched on",
        "a: int",
        "a: int",
        B,
        B,
        B,
        "array-like layout changed",
        options_new="array_like=True",
    ),
    Case(
        "array_like fields reordered",
        "a: int\nb: str",
        "b: str\na: int",
        B,
        B,
        B,
        "array-like field moved",
        options_old="array_like=True",
        options_new="array_like=True",
    ),
    Case(
        "array_like field appended with default",
        "a: int",
        "a: int\nb: int = 0",
        S,
        S,
        S,
        "field added with default",
        options_old="array_like=True",
        options_new="array_like=True",
    ),
    Case("tag added", "a: int", "a: int", B, B, B, "tag changed", options_new="tag=True"),
    Case(
        "tag field renamed",
        "a: int",
        "a: int",
        B,
        B,
        B,
        "tag changed",
        options_old="tag=True",
        options_new="tag=True, tag_field='kind'",
    ),
    Case(
        "tagged union member added",
        "a: A | B",
        "a: A | B | C",
        S,
        B,
        B,
        "union member added",
        prelude_old=AB,
        prelude_new=AB,
    ),
    Case(
        "tagged union member removed",
        "a: A | B | C",
        "a: A | B",
        B,
        S,
        B,
        "union member removed",
        prelude_old=AB,
        prelude_new=AB,
    ),
    Case(
        "tuple element widened",
        "a: tuple[int, str]",
        "a: tuple[float, str]",
        S,
        B,
        B,
        "type widened",
        where="a[0]",
    ),
    Case(
        "tuple element narrowed",
        "a: tuple[int, str]",
        "a: tuple[int, Literal['x']]",
        B,
        S,
        B,
        "type narrowed",
        where="a[1]",
    ),
    Case(
        "tuple length changed",
        "a: tuple[int, str]",
        "a: tuple[int, str, int]",
        B,
        B,
        B,
        "type changed",
    ),
    Case(
        "array item narrowed",
        "a: tuple[int, ...]",
        "a: tuple[Literal[1, 2], ...]",
        B,
        S,
        B,
        "type narrowed",
        where="a[]",
    ),
    Case(
        "nested constraint tightened",
        "items: tuple[Line, ...]",
        "items: tuple[Line, ...]",
        B,
        S,
        B,
        "constraint tightened",
        prelude_old=LINE,
        prelude_new=LINE_QTY2,
        where="items[].qty",
    ),
    Case(
        "nested field added without default",
        "items: tuple[Line, ...]",
        "items: tuple[Line, ...]",
        B,
        B,
        B,
        "field added without default",
        prelude_old=LINE,
        prelude_new=LINE_NEW,
        where="items[].unit",
    ),
    Case(
        "nested message class renamed",
        "items: tuple[Line, ...]",
        "items: tuple[OrderLine, ...]",
        S,
        S,
        S,
        prelude_old=LINE,
        prelude_new=LINE_RENAMED,
    ),
    Case("nothing changed", "a: int\nb: str = ''", "a: int\nb: str = ''", S, S, S),
]


def test_the_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 40
    assert len({c.name for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_verdict_per_direction(case: Case) -> None:
    old = lock_of(case.old, case.prelude_old, case.options_old)
    new = lock_of(case.new, case.prelude_new, case.options_new)
    changes = compat.compare(old, new)
    got = verdicts(changes)
    assert got == (case.request, case.response, case.event), changes
    kinds = {c.change for c in changes}
    if case.change:
        assert case.change in kinds, changes
    else:
        assert not changes
    if case.where:
        paths = {c.path for c in changes if c.change == case.change}
        assert f"things.v1.call.request.{case.where}" in paths
        assert f"things.v1.call.response.{case.where}" in paths
        assert f"things.v1.events.thing.v1.{case.where}" in paths


def test_every_rule_says_why_in_both_directions() -> None:
    for kind, rules in compat.RULES.items():
        for verdict, why in rules:
            assert verdict in ("safe", "warning", "breaking"), kind
            assert len(why) > 15, kind


def test_an_event_verdict_names_the_consumers_and_direction() -> None:
    changes = compat.compare(lock_of("a: int"), lock_of("a: int | None"))
    [event] = [c for c in changes if ".events." in c.path]
    assert event.verdict == "breaking"
    assert event.reason.startswith("new events -> old consumers (consumer):")
    [request] = [c for c in changes if ".request" in c.path]
    assert request.reason.startswith("old callers -> new server:")


def test_a_recursive_message_is_compared_once_per_level() -> None:
    tree = "class Node(cleave.Message):\n    value: int\n    children: tuple['Node', ...] = ()\n"
    wider = "class Node(cleave.Message):\n    value: float\n    children: tuple['Node', ...] = ()\n"
    changes = compat.compare(
        lock_of("root: Node", prelude=tree), lock_of("root: Node", prelude=wider)
    )
    assert {c.path for c in changes if ".request" in c.path} == {
        "things.v1.call.request.root.value"
    }


# -- changes to the contract itself ---------------------------------------------------------

BASE = """
class Req(cleave.Message):
    a: int

class Gone(cleave.ServiceError):
    pass

class Thing(cleave.Event, topic="thing"):
    a: int

@cleave.contract("things", version=1, events=[Thing], errors=[Gone])
class Things(Protocol):
    @cleave.idempotent
    async def call(self, req: Req) -> Req: ...

    async def other(self, req: Req) -> Req: ...
"""


def _edited(old: str, new: str) -> list[compat.Change]:
    edited = BASE.replace(old, new)
    assert edited != BASE
    return compat.compare(lock_of("", source=BASE), lock_of("", source=edited))


def _only(changes: list[compat.Change]) -> tuple[str, str, str]:
    [c] = changes
    return c.change, c.verdict, c.path


def test_method_removed_is_breaking() -> None:
    changes = _edited("    async def other(self, req: Req) -> Req: ...\n", "")
    assert _only(changes) == ("method removed", "breaking", "things.v1.other")


def test_method_added_is_safe() -> None:
    changes = _edited(
        "    async def other(",
        "    async def third(self, req: Req) -> Req: ...\n    async def other(",
    )
    assert _only(changes) == ("method added", "safe", "things.v1.third")


def test_event_removed_is_breaking_and_names_its_consumers() -> None:
    changes = _edited("events=[Thing], ", "")
    assert _only(changes) == ("event removed", "breaking", "things.v1.events.thing.v1")
    assert "consumer" in changes[0].reason


def test_a_new_event_major_beside_the_old_is_safe() -> None:
    thing2 = "class Thing2(cleave.Event, topic='thing', version=2):\n    a: str\n\n"
    edited = BASE.replace("@cleave.contract", thing2 + "@cleave.contract").replace(
        "events=[Thing]", "events=[Thing, Thing2]"
    )
    changes = compat.compare(lock_of("", source=BASE), lock_of("", source=edited))
    assert _only(changes) == ("event added", "safe", "things.v1.events.thing.v2")


def test_errors_added_or_removed_are_warnings() -> None:
    assert _only(_edited(", errors=[Gone]", ""))[:2] == ("error removed", "warning")
    added = _edited("errors=[Gone]", "errors=[Gone, cleave.Conflict]")
    assert _only(added) == ("error added", "warning", "things.v1.errors.Conflict")


def test_dropping_idempotency_breaks_callers_that_retry() -> None:
    changes = _edited("    @cleave.idempotent\n", "")
    assert _only(changes)[:2] == ("retry guarantee dropped", "breaking")
    assert "retry" in changes[0].reason


def test_a_new_contract_major_is_safe_and_removing_a_major_is_breaking() -> None:
    v1 = lock_of("", source=BASE)
    v2 = lock_of("", source=BASE.replace("version=1", "version=2"))
    both = {**v1, "contracts": {**v1["contracts"], **v2["contracts"]}}
    assert [(c.change, c.verdict, c.path) for c in compat.compare(v1, both)] == [
        ("contract added", "safe", "things.v2")
    ]
    assert [(c.change, c.verdict, c.path) for c in compat.compare(both, v2)] == [
        ("contract removed", "breaking", "things.v1")
    ]


def test_the_docs_table_says_what_the_rules_say() -> None:
    from conftest import ROOT

    rows: dict[str, list[str]] = {}
    for line in (ROOT / "docs" / "contracts.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in compat.RULES:
            rows[cells[0]] = cells[1:]
    assert set(rows) == set(compat.RULES)
    for kind, (old_new, new_old) in compat.RULES.items():
        if len(rows[kind]) == 2:  # a change to the contract: one verdict
            assert rows[kind] == [old_new[0], old_new[1]], kind
        else:
            worst = max(old_new[0], new_old[0], key=("safe", "warning", "breaking").index)
            assert rows[kind] == [old_new[0], new_old[0], worst], kind
