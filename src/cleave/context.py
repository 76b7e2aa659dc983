"""The context every call carries: deadline, request id, caller, trace.

A :class:`CallContext` is created at the edge (an HTTP request, an event
delivery) and travels with every call made while handling it, in-process
through a context variable and across processes in the wire envelope.

- The **deadline** is absolute (seconds since the epoch, so it survives a hop
  between processes). A nested call inherits it; :func:`timeout` tightens it
  for the calls inside its block, never loosens it.
- The **request id** is stable across retries of the same call, so it is the
  idempotency key. Nested calls get ids derived from their parent's id and the
  order in which the parent made them (``<parent>.1``, ``<parent>.2``, ...),
  so a retried handler repeats the same ids for the same calls.
- The **caller** names the service (or ``gateway``) that made the call.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import msgspec

from cleave.errors import ConfigError

__all__ = [
    "CallContext",
    "current",
    "new_request_id",
    "remaining",
    "timeout",
]


class CallContext(msgspec.Struct, gc=False):
    """Deadline, request id, caller and trace parent of the call being handled.

    A Struct, not a plain class: one is made per call, and msgspec builds it
    in a third of the time.
    """

    deadline: float
    request_id: str
    caller: str
    traceparent: str = ""
    #: Calls made so far while handling this one (numbers the children's ids).
    calls: int = 0
    #: The service handling this call (set by whoever runs it; names its log lines).
    service: str = ""

    def child_request_id(self) -> str:
        """The request id of the next call made while handling this one."""
        self.calls += 1
        return f"{self.request_id}.{self.calls}"

    def __repr__(self) -> str:
        left = self.deadline - time.time()
        return f"<CallContext {self.request_id} from {self.caller} {left:.3f}s left>"


_current: ContextVar[CallContext | None] = ContextVar("cleave_call", default=None)
_tightened: ContextVar[float | None] = ContextVar("cleave_deadline", default=None)

_prefix = ""
_counter = itertools.count(1)


def new_request_id() -> str:
    """A fresh, process-unique request id: cheap, sortable within a process."""
    global _prefix
    pid = os.getpid()
    if not _prefix or not _prefix.startswith(f"{pid:x}-"):
        # Re-seed after fork so children never reuse the parent's ids.
        _prefix = f"{pid:x}-{os.urandom(4).hex()}-"
    return f"{_prefix}{next(_counter):x}"


def current() -> CallContext | None:
    """The context of the call being handled, or None outside any call."""
    return _current.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (tightened ones included), or None."""
    ctx = _current.get()
    tight = _tightened.get()
    deadline = ctx.deadline if ctx is not None else None
    if tight is not None and (deadline is None or tight < deadline):
        deadline = tight
    return None if deadline is None else deadline - time.time()


@contextmanager
def timeout(seconds: float) -> Iterator[None]:
    """Tighten the deadline of every call made inside the block.

    ::

        with cleave.timeout(0.5):
            receipt = await self.billing.charge(req)   # at most 0.5 s, or less if
                                                       # the caller has less left
    """
    if not seconds > 0:
        raise ConfigError(f"cleave.timeout() takes a positive number of seconds, got {seconds!r}")
    deadline = time.time() + seconds
    outer = _tightened.get()
    token = _tightened.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _tightened.reset(token)
