"""What the NATS server refused, brought back to the call that caused it.

A NATS server that denies a publish (a ``Permissions Violation``) says so
asynchronously, on the connection, not to the request: left alone, a refused
call would wait for its deadline and fail as if the callee were slow. The
transport registers each call and publish under its subject here; when the
connection's error callback hears of a refusal, :meth:`Refusals.refuse`
cancels the tasks waiting on that subject and remembers why, so the
transport raises an error naming the declaration that is missing.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Iterable
from typing import Any

__all__ = ["Refusals", "refusals_of", "release"]

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "?([^"\s]+)"?', re.I)
_all: weakref.WeakKeyDictionary[Any, Refusals] = weakref.WeakKeyDictionary()


class Refusals:
    """Tasks waiting on subjects of one connection, and the refusals that hit them."""

    __slots__ = ("_refused", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Task[Any]]] = {}
        self._refused: dict[asyncio.Task[Any], str] = {}

    def watch(self, subject: str) -> set[asyncio.Task[Any]]:
        """Register the current task as waiting on ``subject``; discard it from the set after."""
        waiting = self._waiting.setdefault(subject, set())
        task = asyncio.current_task()
        assert task is not None
        waiting.add(task)
        return waiting

    def watch_all(self, subjects: Iterable[str]) -> list[set[asyncio.Task[Any]]]:
        """:meth:`watch` for each of ``subjects`` (exact ones: a refusal of another
        task's subject must not cancel this one); undo with :func:`release`."""
        return [self.watch(s) for s in subjects]

    def refuse(self, message: str) -> str | None:
        """Handle a server error; returns the refused subject if it was a refusal."""
        m = _VIOLATION.search(message)
        if m is None:
            return None
        # nats-py lowercases the server's message: find the subject it names by case.
        # Refusals are rare; the scan keeps the path of every call free of it.
        said = m.group(2).lower()
        subject = next((s for s in self._waiting if s.lower() == said), said)
        # Permissions are fixed per connection: every task waiting on a refused subject
        # was refused too, none can have had its answer.
        for task in list(self._waiting.get(subject, ())):
            if not task.done() and task not in self._refused:
                self._refused[task] = subject
                task.cancel()
        return subject

    def take(self, task: asyncio.Task[Any] | None) -> str | None:
        """The subject refused to ``task`` (which was cancelled for it), or None.

        Undoes the cancel, so the task goes on to raise its own error.
        """
        if task is None:
            return None
        subject = self._refused.pop(task, None)
        if subject is not None:
            task.uncancel()
        return subject


def release(watched: list[set[asyncio.Task[Any]]]) -> None:
    """Stop watching what :meth:`Refusals.watch_all` watched for the current task."""
    task = asyncio.current_task()
    for waiting in watched:
        waiting.discard(task)


def refusals_of(nc: Any) -> Refusals:
    """The one :class:`Refusals` of connection ``nc``."""
    found = _all.get(nc)
    if found is None:
        found = _all[nc] = Refusals()
    return found
