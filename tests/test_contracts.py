from __future__ import annotations

from typing import Protocol

import pytest

import cleave
from cleave.contracts import method_of, spec_of


class Req(cleave.Message):
    x: int


class Resp(cleave.Message):
    y: int


class ListReq(cleave.Message):
    xs: list[int]


class Happened(cleave.Event):
    x: int


class AlsoHappened(cleave.Event, topic="happened"):
    x: int


class Oops(cleave.ServiceError):
    pass


@cleave.contract("calc", version=2, events=[Happened], errors=[Oops])
class Calc(Protocol):
    """Calculates."""

    async def double(self, req: Req) -> Resp: ...

    @cleave.idempotent
    async def store(self, req: Req) -> Resp: ...


def test_spec_describes_the_contract() -> None:
    spec = spec_of(Calc)
    assert (spec.name, spec.version, spec.description) == ("calc", 2, "Calculates.")
    assert list(spec.methods) == ["double", "store"]
    double = spec.methods["double"]
    assert double.subject == "cleave.rpc.calc.v2.double"
    assert (double.request, double.response, double.idempotent) == (Req, Resp, False)
    assert spec.methods["store"].idempotent
    assert spec.event_subject(Happened) == "cleave.evt.calc.happened.v1"
    assert spec.stream == "CLEAVE_CALC"
    assert spec.errors == {"Oops": Oops}
    assert method_of(Calc.double) is double


def test_the_class_is_returned_unchanged() -> None:
    assert Calc.__name__ == "Calc"
    assert Calc.double.__qualname__ == "Calc.double"


def _declare(body: dict[str, object], **kw: object) -> None:
    cls = type("C", (Protocol,), body)
    cleave.contract("c", **kw)(cls)  # type: ignore[arg-type]


async def _sync(self: object, req: Req) -> Resp: ...


async def _two(self: object, a: Req, b: Req) -> Resp: ...


async def _untyped(self: object, req: int) -> Resp: ...


async def _event_in(self: object, req: Happened) -> Resp: ...


async def _mutable(self: object, req: ListReq) -> Resp: ...


def _not_async(self: object, req: Req) -> Resp: ...


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"m": _not_async}, "must be `async def`"),
        ({"m": _two}, "exactly one request message"),
        ({"m": _untyped}, "must be a cleave.Message subclass"),
        ({"m": _event_in}, "not an Event"),
        ({"m": _mutable}, "immutable all the way down.*ListReq.xs is a list"),
        ({"BadName": _sync}, "lower snake case"),
        ({}, "declares no methods"),
    ],
)
def test_bad_methods_are_explained(body: dict[str, object], match: str) -> None:
    with pytest.raises(cleave.DefinitionError, match=match):
        _declare(body)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"version": 0}, "positive int"),
        ({"events": [Req]}, "takes Event subclasses"),
        ({"events": [Happened, AlsoHappened]}, "share topic 'happened'"),
        ({"errors": [ValueError]}, "ServiceError subclasses"),
    ],
)
def test_bad_contract_options_are_explained(kw: dict[str, object], match: str) -> None:
    with pytest.raises(cleave.DefinitionError, match=match):
        _declare({"m": _sync}, **kw)


@pytest.mark.parametrize("name", ["Billing", "9lives", "with-dash", ""])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(cleave.DefinitionError, match="lower snake case"):
        cleave.contract(name)


def test_lookups_of_things_that_are_not_contracts() -> None:
    with pytest.raises(cleave.DefinitionError, match="is not a contract"):
        spec_of(Req)
    with pytest.raises(cleave.DefinitionError, match=r"not a method of a @cleave\.contract"):
        method_of(len)
