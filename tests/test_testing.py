"""The testing helpers users get: build one service with fakes, harness a whole app."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import sample_app
from sample_app import Add, FrontService, Greet, Greeted, Greeter, GreeterService, Hello

import cleave
from cleave.testing import Harness, build, published


class FakeGreeter:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def greet(self, req: Greet) -> sample_app.Greeting:
        self.calls.append(req.name)
        return sample_app.Greeting(text=f"fake {req.name}")

    async def fail(self, req: sample_app.Fail) -> sample_app.Greeting:
        raise cleave.NotFound("fake")

    async def sleep(self, req: sample_app.Sleep) -> sample_app.Greeting:
        raise NotImplementedError

    async def add(self, req: Add) -> sample_app.Total:
        raise NotImplementedError


def _typed(fake: FakeGreeter) -> Greeter:
    return fake  # mypy checks the fake against the contract Protocol


async def test_build_binds_fakes_for_dependencies() -> None:
    fake = FakeGreeter()
    async with build(FrontService, greeter=_typed(fake)) as front:
        result = await front.hello(Hello(name="ann"))
    assert result.text == "fake ann"
    assert fake.calls == ["ann"]


async def test_build_gives_a_fresh_database_and_shows_published_events() -> None:
    async with build(GreeterService) as greeter:
        await greeter.greet(Greet(name="bo", times=2))
        assert await published(greeter) == [Greeted(name="bo"), Greeted(name="bo")]
        total = await greeter.add(Add(key="k", amount=2))
        assert total.total == 2


async def test_build_says_which_fakes_are_missing_or_extra() -> None:
    with pytest.raises(cleave.DefinitionError, match="pass greeter=<fake>"):
        async with build(FrontService):
            pass
    with pytest.raises(cleave.DefinitionError, match="billing: not a dependency of"):
        async with build(GreeterService, billing=object()):
            pass


async def test_harness_runs_the_app_and_settles() -> None:
    async with Harness(sample_app.app) as h:
        await h.client(Greeter).greet(Greet(name="cy"))
        await h.settle()
        names = await h.client(sample_app.Audit).names(sample_app.Names())
        assert names.names == ("cy",)
        assert isinstance(h.service("greeter"), GreeterService)


async def test_strict_mode_round_trips_local_calls_through_the_codec(tmp_path: object) -> None:
    from cleave.config import Plan, RuntimeSettings

    plan = Plan(runtime=RuntimeSettings(strict=True))
    async with Harness(sample_app.app, plan=plan) as h:
        greeting = await h.client(Greeter).greet(Greet(name="dee"))
        assert greeting.text == "hello dee"
        dispatcher = h.host.dispatchers["greeter"]
        assert dispatcher.strict


@pytest.mark.nats
async def test_a_harness_that_cannot_start_says_which_host_and_where(nats_url: str) -> None:
    from cleave.testing import NatsHarness

    harness = NatsHarness(sample_app.app, nats_url)
    harness.start_timeout = 0.001  # no host starts that fast
    with pytest.raises(TimeoutError, match=r"host '\w+' of sample did not start within 0.001s"):
        async with harness:
            pass
    assert all(nc.is_closed for nc in harness._connections)  # cleaned up what it opened


async def test_a_start_that_swallows_its_cancellation_is_still_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cleave.testing import NatsHarness

    stopped = []

    class Started:
        async def stop(self) -> None:
            stopped.append(self)

    async def stubborn_host(self: NatsHarness, names: list[str], label: str) -> Started:
        # Swallows its cancel, as asyncio.wait_for does on 3.11 when its future
        # finishes in the same instant.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.3)
        return Started()

    monkeypatch.setattr(NatsHarness, "_host", stubborn_host)
    harness = NatsHarness(sample_app.app, "nats://127.0.0.1:1")
    harness.start_timeout = 0.05
    with pytest.raises(TimeoutError, match=r"did not start within 0.05s"):
        async with harness:
            pass
    assert stopped  # what did start is stopped again
