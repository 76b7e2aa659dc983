"""The watchdog that bounds in-process attempts: it fires, it stays out of others' cancels."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from cleave.runtime.timers import Watchdog


class TimedOut(Exception):
    pass


async def bounded(watchdog: Watchdog, seconds: float, work: Awaitable[object]) -> object:
    """What the router does around an in-process call."""
    timer = watchdog.arm(seconds)
    try:
        result = await work
    except asyncio.CancelledError:
        if not watchdog.disarm(timer):
            raise
        watchdog.uncancel(timer)
        raise TimedOut from None
    except BaseException:
        watchdog.disarm(timer)
        raise
    if watchdog.disarm(timer):
        watchdog.uncancel(timer)
    return result


async def test_a_call_past_its_time_is_cancelled_and_reported() -> None:
    watchdog = Watchdog(tick=0.005)
    with pytest.raises(TimedOut):
        await bounded(watchdog, 0.05, asyncio.sleep(5))
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # the cancel was taken back: the task goes on normally
    assert await bounded(watchdog, 1.0, asyncio.sleep(0, "fine")) == "fine"


async def test_nested_calls_each_keep_their_own_time() -> None:
    watchdog = Watchdog(tick=0.005)

    async def inner() -> object:
        return await bounded(watchdog, 0.05, asyncio.sleep(5))

    # The inner call runs out first: the outer one sees the inner's error, not a cancel.
    with pytest.raises(TimedOut):
        await bounded(watchdog, 5.0, inner())

    async def slow_inner() -> object:
        return await bounded(watchdog, 5.0, asyncio.sleep(5))

    # The outer call runs out first: the inner one passes the cancel on, the outer reports.
    with pytest.raises(TimedOut):
        await bounded(watchdog, 0.05, slow_inner())
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_someone_elses_cancel_passes_through() -> None:
    watchdog = Watchdog(tick=0.005)
    call = asyncio.ensure_future(bounded(watchdog, 5.0, asyncio.sleep(5)))
    await asyncio.sleep(0.02)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_callee_that_swallows_the_cancel_still_answers() -> None:
    watchdog = Watchdog(tick=0.005)

    async def stubborn() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "answered anyway"
        return "slept"

    assert await bounded(watchdog, 0.05, stubborn()) == "answered anyway"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_it_stops_watching_when_nothing_is_armed() -> None:
    watchdog = Watchdog(tick=0.005)
    await bounded(watchdog, 1.0, asyncio.sleep(0.02))
    for _ in range(100):
        if watchdog._task is None:
            break
        await asyncio.sleep(0.01)
    assert watchdog._task is None
