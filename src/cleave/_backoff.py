"""Exponential backoff: how long to wait before the next try of something that failed.

Every retry loop in Cleave (the outbox relay, saga steps and compensations,
call retries) waits ``base * 2**(attempt - 1)`` seconds, capped at ``cap``::

    await asyncio.sleep(backoff(failures, base=0.2, cap=5.0))              # 0.2, 0.4, ... 5, 5
    await asyncio.sleep(backoff(attempt, base=0.05, cap=1.0, jitter=1.0))  # "full jitter"

``jitter`` is the share of that wait drawn at random, taken off the top so
the cap still holds: 0 waits exactly, 0.5 waits between half and all of it
("equal jitter"), 1 anywhere from nothing to all of it ("full jitter").
Jitter keeps replicas that failed together from retrying together.
"""

from __future__ import annotations

import random

__all__ = ["backoff"]

# Past this the wait is at its cap for any sensible base; it also keeps 2.0**n finite.
_MAX_DOUBLINGS = 64


def backoff(attempt: int, *, base: float, cap: float, jitter: float = 0.0) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based; below 1 counts as 1)."""
    if base < 0 or cap < 0:
        raise ValueError(f"backoff needs a base and a cap of 0 s or more, got {base=}, {cap=}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"backoff jitter is a share of the wait, from 0 to 1; got {jitter}")
    doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
    wait = min(cap, base * 2.0**doublings)
    if jitter:
        wait -= wait * jitter * random.random()
    return wait
