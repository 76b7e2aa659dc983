"""A shared watchdog that bounds in-process calls by their attempt timeout.

An in-process call runs in its caller's task, so bounding it means cancelling
that task and turning the cancel back into :class:`~cleave.errors.DeadlineExceeded`
at the call site, as ``asyncio.timeout`` does. ``asyncio.timeout`` arms a
timer handle per call (about 4.7 us, thirty times an in-process call); the
watchdog instead keeps the calls in flight in a dict and looks at them every
``tick`` seconds, so arming costs a tuple and a dict entry. The price is
precision: an attempt is cancelled up to ``tick`` late, which is nothing
against attempt timeouts of seconds.

::

    timer = watchdog.arm(2.5)
    try:
        result = await callee()
    except asyncio.CancelledError:
        if not watchdog.disarm(timer):  # someone else's cancel: pass it on
            raise
        watchdog.uncancel(timer)        # ours: the attempt ran out of time
        raise DeadlineExceeded(...) from None
    except BaseException:
        watchdog.disarm(timer)
        raise
    if watchdog.disarm(timer):          # fired, but the callee answered anyway
        watchdog.uncancel(timer)
"""

from __future__ import annotations

import asyncio
import time
from asyncio import current_task
from typing import Any

__all__ = ["Watchdog"]

_monotonic = time.monotonic


def _task_dict(loop: asyncio.AbstractEventLoop) -> dict[Any, Any] | None:
    """The dict that maps ``loop`` to its running task, if this Python has one.

    ``asyncio.current_task()`` is a Python function on 3.11 and cost 450 ns
    here, more than the whole in-process call; the dict behind it (the C
    module's, on 3.11 to 3.13) answers in a tenth of that. Used only when it
    agrees with ``current_task()``: a Python that keeps tasks elsewhere gets
    the public function.
    """
    tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(tasks, dict) and tasks.get(loop) is current_task() is not None:
        return tasks
    return None


class Watchdog:
    """Cancels in-process calls that run past their deadline; runs only while calls are armed."""

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        # Armed calls by number: (deadline on the monotonic clock, the task running it).
        self._timers: dict[int, tuple[float, Any]] = {}
        self._fired: set[int] = set()
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[Any, Any] | None = None

    def arm(self, timeout: float) -> int:
        """Bound the current task's next await by ``timeout`` seconds; the timer's number."""
        if self._task is None:
            loop = self._loop = asyncio.get_running_loop()
            self._tasks = _task_dict(loop)
            self._task = loop.create_task(self._watch(), name="call-timers")
        tasks = self._tasks
        task = tasks.get(self._loop) if tasks is not None else None
        self._next += 1
        self._timers[self._next] = (_monotonic() + timeout, task or current_task())
        return self._next

    def disarm(self, timer: int) -> bool:
        """Forget ``timer``; whether it fired (then its cancel must be taken back: ``uncancel``)."""
        del self._timers[timer]
        return bool(self._fired) and timer in self._fired

    def uncancel(self, timer: int) -> None:
        """Take back the cancel sent for ``timer``, once it has been turned into an error."""
        self._fired.discard(timer)
        task = current_task()
        if task is not None:
            task.uncancel()

    async def _watch(self) -> None:
        try:
            while self._timers or self._fired:
                await asyncio.sleep(self.tick)
                now = _monotonic()
                cancelled: set[asyncio.Task[Any]] = set()
                for timer, (deadline, task) in list(self._timers.items()):
                    if deadline <= now and timer not in self._fired:
                        self._fired.add(timer)
                        # Nested in-process calls share a task: one cancel reaches the
                        # innermost expired call first, and it turns it into an error.
                        if task not in cancelled and not task.done():
                            cancelled.add(task)
                            task.cancel()
                # A fired timer whose call has ended (and was disarmed) is forgotten.
                self._fired.intersection_update(self._timers)
        finally:
            self._task = None
