"""cancel_and_wait: the task's cancel is its end; the caller's cancel still propagates."""

from __future__ import annotations

import asyncio

import pytest

from cleave._aio import cancel_and_wait


async def test_it_cancels_the_task_and_returns_when_it_has_finished() -> None:
    finished = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            finished.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()
    assert finished.is_set()


async def test_a_cancel_of_the_caller_is_not_swallowed() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # cleanup that takes a while
            raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.01)
    stopper.cancel()  # a shutdown that gave up waiting
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert stopper.cancelled()
    release.set()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_error_of_the_task_is_not_hidden() -> None:
    async def broken() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_it_works_in_the_cleanup_of_a_cancelled_task() -> None:
    background = asyncio.create_task(asyncio.sleep(60))
    cleaned = []

    async def main() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await cancel_and_wait(background)  # cleanup while the cancel propagates
            cleaned.append(True)
            raise

    task = asyncio.create_task(main())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
    assert background.cancelled()
