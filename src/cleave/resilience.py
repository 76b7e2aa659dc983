"""Resilience per dependency: attempt timeouts, retries, circuit breakers, bulkheads, fallbacks.

Every call from one service to another goes through a :class:`Policy`,
resolved once per (caller, method) from ``cleave.toml``::

    [resilience]                      # defaults for every call (these values)
    timeout = 2.5                     # seconds per attempt of a remote call
    retries = 2                       # extra attempts, only when safe (see below)
    backoff = 0.05                    # first retry waits up to this; doubles; full jitter
    backoff_max = 1.0
    bulkhead = 200                    # calls in flight from one service to another; 0: no limit
    breaker = true
    breaker_window = 10.0             # seconds over which the failure rate is measured
    breaker_min_calls = 10            # calls in the window before the breaker may open
    breaker_failure_rate = 0.5        # open at this share of failures
    breaker_open_for = 5.0            # seconds open before probing
    breaker_probes = 3                # calls let through while half-open

    [services.orders.calls.billing]           # orders -> billing: overrides
    timeout = 1.0
    [services.orders.calls."billing.charge"]  # one method
    retries = 4

Rules:

- **Deadlines win.** An attempt never runs past the caller's deadline, and no
  retry starts once it has passed.
- **Retries only when safe:** for ``@idempotent`` or ``@readonly`` methods
  after any unavailability, timeout or remote crash; for other methods only
  when the call provably did not run (nobody listened, the breaker or the
  bulkhead refused it, the callee refused it while draining). Backoff is
  exponential with full jitter. The request id stays the same.
- **Circuit breaker** per (caller, callee service): failures are timeouts,
  unavailability and remote crashes *of the callee itself* (typed service
  errors are answers, not failures; an error the callee only passed on from
  one of its own dependencies names that dependency and says nothing about
  the callee, so a method whose dependency is down cannot shut off the
  callee's other methods). Over ``breaker_window`` seconds, with at least
  ``breaker_min_calls`` calls and ``breaker_failure_rate`` failing, it opens:
  calls fail at once with :class:`~cleave.errors.CircuitOpen` for
  ``breaker_open_for`` seconds, then up to ``breaker_probes`` calls probe;
  a success closes it, a failure opens it again. A probe that never finishes
  (cancelled by a gateway or saga timeout, or its caller's deadline) counts
  as a failure and gives its place back, so a half-open breaker never sticks.
- **Bulkhead** per (caller, callee service): more than ``bulkhead`` calls in
  flight and the next fails at once with :class:`~cleave.errors.BulkheadFull`,
  so one slow dependency cannot use up a service's memory and connections.
- **Fallback** (``cleave.use(Catalog, fallback=obj)``): when a call still
  fails with unavailability or a timeout, ``obj``'s method of the same name
  answers instead.

In-process calls (the monolith, or services grouped in one worker) get the
same breakers, bulkheads, retries, fallbacks and per-attempt ``timeout``, so
a slow callee opens its breaker in the monolith as it does over the network.
Their timer is a shared watchdog (:mod:`cleave.runtime.timers`), not an
asyncio timeout per call: that costs about 4.7 us, thirty times the call.
"""

from __future__ import annotations

import collections
import time
from typing import Annotated, Any

import msgspec

from cleave._backoff import backoff
from cleave.errors import (
    BulkheadFull,
    CallError,
    CircuitOpen,
    DeadlineExceeded,
    RemoteError,
    Unavailable,
)

__all__ = [
    "Bulkhead",
    "CircuitBreaker",
    "Policy",
    "ResilienceOverride",
    "ResilienceSettings",
    "is_failure",
    "should_retry",
]

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Rate = Annotated[float, msgspec.Meta(gt=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class ResilienceSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[resilience]`` section: defaults for every call."""

    timeout: Seconds = 2.5
    retries: Count = 2
    backoff: Seconds = 0.05
    backoff_max: Seconds = 1.0
    bulkhead: Count = 200
    breaker: bool = True
    breaker_window: Seconds = 10.0
    breaker_min_calls: Annotated[int, msgspec.Meta(ge=1)] = 10
    breaker_failure_rate: Rate = 0.5
    breaker_open_for: Seconds = 5.0
    breaker_probes: Annotated[int, msgspec.Meta(ge=1)] = 3

    def merged(self, *overrides: ResilienceOverride | None) -> ResilienceSettings:
        values = msgspec.structs.asdict(self)
        for o in overrides:
            if o is not None:
                values.update({k: v for k, v in msgspec.structs.asdict(o).items() if v is not None})
        return ResilienceSettings(**values)


class ResilienceOverride(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ``[services.<caller>.calls.<service or service.method>]`` section."""

    timeout: Seconds | None = None
    retries: Count | None = None
    backoff: Seconds | None = None
    backoff_max: Seconds | None = None
    bulkhead: Count | None = None
    breaker: bool | None = None
    breaker_window: Seconds | None = None
    breaker_min_calls: Annotated[int, msgspec.Meta(ge=1)] | None = None
    breaker_failure_rate: Rate | None = None
    breaker_open_for: Seconds | None = None
    breaker_probes: Annotated[int, msgspec.Meta(ge=1)] | None = None


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Opens when too many recent calls failed; probes before closing again."""

    def __init__(self, name: str, settings: ResilienceSettings) -> None:
        self.name = name
        self.window = settings.breaker_window
        self.min_calls = settings.breaker_min_calls
        self.failure_rate = settings.breaker_failure_rate
        self.open_for = settings.breaker_open_for
        self.probes = settings.breaker_probes
        self.state = CLOSED
        self.opened_at = 0.0
        self.in_probe = 0
        self.opened = 0  # how many times it opened (for metrics)
        # Closed buckets of [start, calls, failures], one per second of the window, and the
        # current one's counts in plain attributes (a success only adds one: it is the
        # common case, on every call).
        self._buckets: collections.deque[tuple[float, int, int]] = collections.deque()
        self._start = 0.0
        self._calls = 0
        self._failures = 0

    def allow(self, service: str, method: str) -> bool:
        """Let a call through, or raise :class:`CircuitOpen`; True if the call is a probe.

        A probe holds one of the half-open breaker's places until its outcome is
        recorded with ``record(..., probe=True)``: whatever happens to the call.
        """
        if self.state is CLOSED:
            return False
        now = time.monotonic()
        if self.state is OPEN:
            left = self.opened_at + self.open_for - now
            if left > 0:
                raise CircuitOpen(
                    f"circuit to {self.name} is open after repeated failures; retry in {left:.1f}s",
                    service=service,
                    method=method,
                    retry_after=left,
                    ran=False,
                )
            self.state = HALF_OPEN
            self.in_probe = 0
        if self.in_probe >= self.probes:
            raise CircuitOpen(
                f"circuit to {self.name} is half-open and its probes are busy",
                service=service,
                method=method,
                retry_after=1.0,
                ran=False,
            )
        self.in_probe += 1
        return True

    def record(self, failed: bool, now: float | None = None, probe: bool = False) -> None:
        """Count a call; ``now`` (a ``perf_counter`` reading) saves a clock call.

        ``probe``: the call was let through half-open (``allow`` said so); its
        outcome decides, and its place is given back.
        """
        if probe:
            self.in_probe = max(0, self.in_probe - 1)
            if self.state is HALF_OPEN:
                if failed:
                    self._open()
                else:
                    self.state = CLOSED
                    self._reset()
            return
        if self.state is not CLOSED:
            return  # a call let through before the breaker opened: old news
        if now is None:
            now = time.perf_counter()
        if now - self._start >= 1.0:
            self._roll(now)
        self._calls += 1
        if failed:
            self._failures += 1
            calls = self._calls + sum(b[1] for b in self._buckets)
            failures = self._failures + sum(b[2] for b in self._buckets)
            if calls >= self.min_calls and failures >= self.failure_rate * calls:
                self._open()

    def _roll(self, now: float) -> None:
        if self._calls:
            self._buckets.append((self._start, self._calls, self._failures))
        self._start, self._calls, self._failures = now, 0, 0
        horizon = now - self.window
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()

    def _reset(self) -> None:
        self._buckets.clear()
        self._start, self._calls, self._failures = 0.0, 0, 0

    def _open(self) -> None:
        self.state = OPEN
        self.opened_at = time.monotonic()  # compared with time.monotonic() in allow()
        self.opened += 1
        self._reset()


class Bulkhead:
    """At most ``limit`` calls in flight; the next fails at once."""

    __slots__ = ("active", "limit", "name", "rejected")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.active = 0
        self.rejected = 0

    def enter(self, service: str, method: str) -> None:
        if self.active >= self.limit:
            self.rejected += 1
            raise BulkheadFull(
                f"{self.limit} calls to {self.name} are in flight already; not sent",
                service=service,
                method=method,
                retry_after=1.0,
                ran=False,
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


class Policy:
    """How one caller calls one method."""

    __slots__ = (
        "backoff",
        "backoff_max",
        "breaker",
        "bulkhead",
        "fallback",
        "retries",
        "stats",
        "timeout",
    )

    def __init__(
        self,
        settings: ResilienceSettings,
        breaker: CircuitBreaker | None,
        bulkhead: Bulkhead | None,
        fallback: Any = None,
    ) -> None:
        self.timeout = settings.timeout
        self.retries = settings.retries
        self.backoff = settings.backoff
        self.backoff_max = settings.backoff_max
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.fallback = fallback
        #: Counts and latencies of these calls (see cleave.observability.metrics).
        self.stats: Any = None

    def delay(self, attempt: int) -> float:
        """Full jitter: a random wait up to the exponential backoff of ``attempt``."""
        return backoff(attempt, base=self.backoff, cap=self.backoff_max, jitter=1.0)


def is_failure(exc: BaseException, callee: str) -> bool:
    """Whether ``exc``, from a call to ``callee``, counts against its circuit (answers do not)."""
    if isinstance(exc, CircuitOpen | BulkheadFull):
        return False  # refused (here or by the callee); says nothing new about the callee
    if not isinstance(exc, Unavailable | DeadlineExceeded | RemoteError):
        return False
    # An error the callee passed on from one of its own dependencies names that one.
    return exc.service in ("", callee)


def should_retry(exc: CallError, retry_safe: bool) -> bool:
    """Whether a failed attempt may be tried again."""
    if isinstance(exc, CircuitOpen | BulkheadFull):
        return False  # failing fast is the point
    if isinstance(exc, Unavailable) and exc.ran is False:
        return True
    return retry_safe and isinstance(exc, Unavailable | DeadlineExceeded | RemoteError)
