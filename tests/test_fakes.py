"""`cleave.testing.fake`: a fake dependency behind the contract's boundary, as a real callee."""

from __future__ import annotations

import pytest
import sample_app
from sample_app import Add, Fail, FrontService, Greet, Greeter, Greeting, Hello, Teapot, Total

import cleave
from cleave.testing import ServiceStarter, fake


class FakeGreeter:
    def __init__(self) -> None:
        self.seen: list[Greet] = []

    async def greet(self, req: Greet) -> Greeting:
        self.seen.append(req)
        return Greeting(text=f"fake {req.name}")

    async def fail(self, req: Fail) -> Greeting:
        if req.how == "teapot":
            raise Teapot("short and stout")
        if req.how == "not_found":
            raise cleave.NotFound("nobody")
        if req.how == "nested":
            raise sample_app.Undeclared("not on the allow-list")
        if req.how == "wrong_type":
            return Total(key="k", total=1, calls=1)  # type: ignore[return-value]
        raise KeyError("internal")


async def test_a_call_crosses_the_codec_both_ways() -> None:
    impl = FakeGreeter()
    greeter = fake(Greeter, impl)
    request = Greet(name="ann")
    answer = await greeter.greet(request)
    assert answer == Greeting(text="fake ann")
    assert impl.seen == [request]
    assert impl.seen[0] is not request  # decoded, as the callee would get it


async def test_errors_arrive_as_a_caller_sees_them() -> None:
    greeter = fake(Greeter, FakeGreeter())
    with pytest.raises(Teapot, match="short and stout"):  # declared by the contract
        await greeter.fail(Fail(how="teapot"))
    with pytest.raises(cleave.NotFound):  # Cleave's own kinds
        await greeter.fail(Fail(how="not_found"))
    with pytest.raises(cleave.RemoteError) as undeclared:
        await greeter.fail(Fail(how="nested"))
    assert undeclared.value.remote_kind == "Undeclared"
    with pytest.raises(cleave.RemoteError) as crash:
        await greeter.fail(Fail(how="crash"))
    assert crash.value.remote_kind == "KeyError"
    with pytest.raises(cleave.RemoteError, match="the contract says Greeting"):
        await greeter.fail(Fail(how="wrong_type"))


async def test_a_request_the_callee_would_refuse_is_refused() -> None:
    greeter = fake(Greeter, FakeGreeter())
    with pytest.raises(cleave.InvalidArgument, match=r"bad request for greeter\.greet"):
        await greeter.greet(Greet(name=""))  # min_length=1
    with pytest.raises(cleave.DefinitionError, match="the contract takes Greet"):
        await greeter.greet(Hello(name="x"))  # type: ignore[arg-type]


async def test_a_missing_method_says_what_to_write() -> None:
    greeter = fake(Greeter, FakeGreeter())
    with pytest.raises(cleave.DefinitionError, match=r"async def add\(self, req: Add\) -> Total"):
        await greeter.add(Add(key="k", amount=1))
    with pytest.raises(AttributeError, match="has no 'nope'"):
        greeter.nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(cleave.DefinitionError, match="has none of greeter's methods"):
        fake(Greeter, object())


async def test_cleave_service_wraps_fakes_and_stops_the_service(
    cleave_service: ServiceStarter,
) -> None:
    front = await cleave_service(FrontService, greeter=FakeGreeter())
    assert (await front.hello(Hello(name="bo"))).text == "fake bo"
    with pytest.raises(cleave.InvalidArgument):  # the fake's boundary, not the raw object
        await front.hello(Hello(name=""))
