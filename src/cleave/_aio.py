"""asyncio helpers that keep cancellation honest."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished.

    The task's own cancellation is the expected end and is not raised; an
    error it ended with is. A cancel aimed at the caller while it waits (a
    shutdown that gave up waiting) propagates, which
    ``with suppress(CancelledError): await task`` would swallow. Safe in the
    cleanup of a task that is itself being cancelled: only a new cancel
    interrupts the wait.
    """
    task.cancel()
    await asyncio.wait([task])
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise error
