"""Resilience policies at work, in both placements: retries, breakers, bulkheads, fallbacks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sample_app
from sample_app import Add, Front, Greet, Greeter, Hello, Wobble

import cleave
from cleave.config import Plan, ServiceSettings
from cleave.context import CallContext, _current
from cleave.resilience import ResilienceOverride, ResilienceSettings
from cleave.testing import Harness, NatsHarness

PLACEMENTS = ["monolith", pytest.param("nats", marks=pytest.mark.nats)]


@asynccontextmanager
async def running(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path, plan: Plan
) -> AsyncIterator[Any]:
    if placement == "monolith":
        async with Harness(sample_app.app, tmp_path, plan=plan) as h:
            yield h
    else:
        async with NatsHarness(
            sample_app.app, request.getfixturevalue("nats_url"), tmp_path, plan=plan
        ) as h:
            yield h


def plan(**settings: Any) -> Plan:
    calls = settings.pop("calls", {})
    return Plan(
        resilience=ResilienceSettings(**settings),
        services={caller: ServiceSettings(calls=c) for caller, c in calls.items()},
    )


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_a_safe_call_is_retried_until_it_works(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path, plan(retries=2, backoff=0.01)) as h:
        answer = await h.client(Greeter).wobble(Wobble(key="a", fail_times=2))
    assert answer.text == "steady after 3"


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_an_unsafe_call_is_not_retried(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path, plan(retries=2, backoff=0.01)) as h:
        with pytest.raises(cleave.RemoteError, match="wobble b failed"):
            await h.client(Greeter).jolt(Wobble(key="b", fail_times=1))
    assert sample_app.GreeterService.seen["b"] == 1


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_retries_give_up_at_the_limit(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(request, placement, tmp_path, plan(retries=1, backoff=0.01)) as h:
        with pytest.raises(cleave.RemoteError):
            await h.client(Greeter).wobble(Wobble(key="c", fail_times=5))
    assert sample_app.GreeterService.seen["c"] == 2


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_deadlines_win_over_retries(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with running(
        request, placement, tmp_path, plan(retries=5, backoff=1.0, backoff_max=1.0)
    ) as h:
        token = _current.set(CallContext(time.time() + 0.3, "d", "test"))
        started = time.monotonic()
        try:
            # The last error: the crash, or a retry that ran out of the time left.
            with pytest.raises((cleave.RemoteError, cleave.DeadlineExceeded)):
                await h.client(Greeter).wobble(Wobble(key="d", fail_times=100))
        finally:
            _current.reset(token)
        # Backoffs of up to 1 s with five retries allowed: only the deadline (0.3 s)
        # stopped them; the margin is for a loaded machine.
        assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_the_breaker_opens_and_fails_fast_then_heals(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    settings = plan(retries=0, breaker_min_calls=4, breaker_open_for=0.3)
    async with running(request, placement, tmp_path, settings) as h:
        greeter = h.client(Greeter, caller="front")
        for _ in range(4):
            with pytest.raises(cleave.RemoteError):
                await greeter.wobble(Wobble(key="e", fail_times=4))
        with pytest.raises(cleave.CircuitOpen) as caught:
            await greeter.wobble(Wobble(key="e", fail_times=4))
        assert caught.value.retry_after is not None
        assert sample_app.GreeterService.seen["e"] == 4  # the fifth was never sent
        await asyncio.sleep(0.35)
        answer = await greeter.wobble(Wobble(key="e", fail_times=4))  # the probe
        assert answer.text == "steady after 5"


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_the_bulkhead_rejects_fast(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    settings = plan(calls={"test": {"greeter": ResilienceOverride(bulkhead=2)}})
    async with running(request, placement, tmp_path, settings) as h:
        h.inject("greeter", latency=0.3)
        greeter = h.client(Greeter)
        started = time.monotonic()
        results = await asyncio.gather(
            *(greeter.greet(Greet(name=f"p{i}")) for i in range(5)), return_exceptions=True
        )
        rejected = [r for r in results if isinstance(r, cleave.BulkheadFull)]
        assert len(rejected) == 3
        assert len([r for r in results if isinstance(r, sample_app.Greeting)]) == 2
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_a_fallback_answers_when_the_service_cannot(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    settings = plan(retries=0, breaker_min_calls=3, breaker_open_for=30)
    async with running(request, placement, tmp_path, settings) as h:
        front = h.client(Front)
        assert (await front.hello(Hello(name="f"))).text == "hello f"
        h.inject("greeter", fail=1.0)
        for name in ("g", "h", "i", "j"):  # refused, then the circuit opens: all fall back
            answer = await front.hello(Hello(name=name))
            assert answer.text == f"hello {name} (from the fallback)"
        h.inject("greeter")
        answer = await front.hello(Hello(name="k"))  # circuit still open: still the fallback
        assert answer.text == "hello k (from the fallback)"


@pytest.mark.nats
async def test_a_remote_attempt_times_out_and_the_retry_works(
    nats_url: str, tmp_path: Path
) -> None:
    settings = plan(timeout=0.3, retries=2, backoff=0.01)
    async with NatsHarness(sample_app.app, nats_url, tmp_path, plan=settings) as h:
        h.inject("greeter", drop=1.0, methods=("add",))

        async def heal() -> None:
            await asyncio.sleep(0.2)
            h.inject("greeter")

        healing = asyncio.ensure_future(heal())
        total = await h.client(Greeter).add(Add(key="r", amount=1))
        await healing
    assert total.total == 1
    assert sample_app.GreeterService.executions == 1  # the dropped attempt never ran


@pytest.mark.nats
async def test_not_sent_is_retried_even_when_unsafe(nats_url: str, tmp_path: Path) -> None:
    """Nobody listening proves the call did not run: retrying jolt is safe then."""
    settings = plan(retries=3, backoff=0.2, backoff_max=0.2)
    async with NatsHarness(
        sample_app.app,
        nats_url,
        tmp_path,
        plan=settings,
        groups={"front": ["front"], "audit": ["audit"]},
    ) as h:
        jolt = asyncio.ensure_future(h.client(Greeter).jolt(Wobble(key="n")))
        await asyncio.sleep(0.1)
        assert not jolt.done()  # retrying: nobody serves greeter yet
        h.hosts["late"] = await h._host(["greeter"], "late")
        answer = await asyncio.wait_for(jolt, 5)
    assert answer.text == "steady after 1"
