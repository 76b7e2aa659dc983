from __future__ import annotations

from typing import Protocol

import pytest
import sample_app
from sample_app import Audit, FrontService, Greeted, Greeter, GreeterService

import cleave
from cleave.service import spec_of_service


def test_spec_collects_the_declarations() -> None:
    spec = spec_of_service(FrontService)
    assert spec.name == "front"
    assert spec.calls == ["greeter"]
    assert spec.database is None
    audit = spec_of_service(sample_app.AuditService)
    assert [(s.attr, s.event) for s in audit.subscriptions] == [("on_greeted", Greeted)]
    assert audit.database == "db"


async def test_decorators_register_and_do_not_wrap() -> None:
    handler = sample_app.AuditService.__dict__["on_greeted"]
    assert handler.__qualname__ == "AuditService.on_greeted"
    assert not hasattr(handler, "__wrapped__")
    # A plain coroutine function: a unit test can call the method with a fake.
    calls = []

    class FakeGreeter:
        async def greet(self, req: sample_app.Greet) -> sample_app.Greeting:
            calls.append(req.name)
            return sample_app.Greeting(text="hi")

    front = FrontService()
    front.__dict__["greeter"] = FakeGreeter()
    result = await front.hello(sample_app.Hello(name="ann"))
    assert (result.text, calls) == ("hi", ["ann"])


def test_an_unbound_client_says_how_to_test() -> None:
    with pytest.raises(cleave.LifecycleError, match=r"cleave.testing.build\(FrontService"):
        FrontService().greeter  # noqa: B018


def test_an_unbound_database_says_how_to_test() -> None:
    with pytest.raises(cleave.LifecycleError, match="not bound to a database"):
        GreeterService().db  # noqa: B018


def test_a_missing_method_is_named() -> None:
    with pytest.raises(cleave.DefinitionError, match="has no method 'names'"):

        class Half(cleave.Service, implements=Audit):
            db = cleave.Database()

            async def set_failures(self, req: sample_app.SetFailures) -> sample_app.NameList:
                raise NotImplementedError


def test_a_sync_method_is_refused() -> None:
    with pytest.raises(cleave.DefinitionError, match=r"\.names must be `async def`"):

        class Sync(cleave.Service, implements=Audit):
            db = cleave.Database()

            def names(self, req: sample_app.Names) -> sample_app.NameList:  # type: ignore[override]
                raise NotImplementedError

            async def set_failures(self, req: sample_app.SetFailures) -> sample_app.NameList:
                raise NotImplementedError


def test_wrong_request_type_is_refused() -> None:
    with pytest.raises(cleave.DefinitionError, match="takes Greet but the contract says Names"):

        class Wrong(cleave.Service, implements=Audit):
            db = cleave.Database()

            async def names(self, req: sample_app.Greet) -> sample_app.NameList:
                raise NotImplementedError

            async def set_failures(self, req: sample_app.SetFailures) -> sample_app.NameList:
                raise NotImplementedError


def test_events_need_a_database() -> None:
    with pytest.raises(cleave.DefinitionError, match="needs a database"):

        class NoDb(cleave.Service, implements=Greeter):
            greet = GreeterService.greet
            fail = GreeterService.fail
            sleep = GreeterService.sleep
            add = GreeterService.add
            wobble = GreeterService.wobble
            jolt = GreeterService.jolt


def test_one_database_per_service() -> None:
    with pytest.raises(cleave.DefinitionError, match="more than one Database"):

        class TwoDbs(GreeterService):
            other = cleave.Database()


def test_a_subclass_keeps_the_contract() -> None:
    class Double(GreeterService):
        pass

    assert spec_of_service(Double).name == "greeter"
    assert spec_of_service(Double).cls is Double


def test_subscribe_needs_an_event_and_a_coroutine() -> None:
    with pytest.raises(cleave.DefinitionError, match="takes an Event subclass"):
        cleave.subscribe(sample_app.Greet)  # type: ignore[arg-type]
    with pytest.raises(cleave.DefinitionError, match="must be `async def"):
        cleave.subscribe(Greeted)(lambda self, e: None)


def test_use_needs_a_contract() -> None:
    class NotAContract(Protocol):
        async def x(self) -> None: ...

    with pytest.raises(cleave.DefinitionError, match="is not a contract"):
        cleave.use(NotAContract)


def test_not_a_service() -> None:
    with pytest.raises(cleave.DefinitionError, match="is not a service"):
        spec_of_service(int)
