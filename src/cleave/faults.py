"""Fault injection: make one service slow or deaf, on purpose, to see what the rest does.

``Faults`` on a running service delays its calls, drops a share of them
(the caller gets no answer and times out, as with a lost packet) or refuses
a share at once (``Unavailable``, as an overloaded service would). Set them
in-process with :meth:`cleave.testing.Harness.inject`, or on a running
``cleave up`` with ``cleave chaos latency|drop|fail|clear SERVICE`` (which also
offers ``kill``, ``pause`` and ``resume`` of worker processes).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Annotated

import msgspec

from cleave.context import CallContext
from cleave.errors import ConfigError, DeadlineExceeded, Unavailable

__all__ = ["Faults", "chaos_faults"]


class Faults(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to do to calls of one service."""

    #: Seconds added before every call.
    latency: Annotated[float, msgspec.Meta(ge=0, le=600)] = 0.0
    #: Share of calls never answered (0 to 1).
    drop: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: Share of calls refused at once with Unavailable, as an overloaded service would.
    fail: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: Only these methods (empty: all).
    methods: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.latency > 0 or self.drop > 0 or self.fail > 0

    async def apply(self, method: str, ctx: CallContext, service: str) -> None:
        """Delay or drop one call of ``method``."""
        if self.methods and method not in self.methods:
            return
        if self.drop and random.random() < self.drop:
            # Never answered: hold the call until its caller has given up.
            await asyncio.sleep(max(0.0, ctx.deadline - time.time()) + 0.05)
            raise DeadlineExceeded(
                f"{service}.{method} dropped (fault injection)", service=service, method=method
            )
        if self.fail and random.random() < self.fail:
            raise Unavailable(
                f"{service}.{method} refused (fault injection)",
                service=service,
                method=method,
                retry_after=1.0,
                ran=False,  # refused before it ran, as a real overloaded service says
            )
        if self.latency:
            await asyncio.sleep(self.latency)


def chaos_faults(action: str, value: float | None) -> dict[str, float]:
    """The faults a ``cleave chaos`` action sets (``clear``: none), as the /faults body takes them.

    ``kill``, ``pause`` and ``resume`` act on processes, not calls: their callers handle them.
    """
    faults = {"latency": 0.0, "drop": 0.0, "fail": 0.0}
    if action in faults:
        if value is None:
            raise ConfigError(f"chaos {action} needs a value")
        faults[action] = value
    elif action != "clear":
        raise ConfigError(
            f"unknown chaos action {action!r}: kill, pause, resume, latency, drop, fail, clear"
        )
    return faults
