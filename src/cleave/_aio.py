"""asyncio helpers that keep cancellation honest."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished.

    The task's own ``CancelledError`` is the expected end and is dropped; a
    cancel aimed at the caller (say a shutdown that gave up waiting) still
    propagates, which ``with suppress(CancelledError): await task`` would
    swallow.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
