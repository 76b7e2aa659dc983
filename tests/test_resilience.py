"""Unit tests of the resilience parts: breaker, bulkhead, retry rules, settings."""

from __future__ import annotations

import time

import pytest

import cleave
from cleave.resilience import (
    Bulkhead,
    CircuitBreaker,
    Policy,
    ResilienceOverride,
    ResilienceSettings,
    is_failure,
    should_retry,
)

FAST = ResilienceSettings(
    breaker_min_calls=4,
    breaker_failure_rate=0.5,
    breaker_open_for=0.1,
    breaker_probes=1,
    breaker_window=5,
)


def test_the_breaker_opens_fails_fast_probes_and_closes() -> None:
    b = CircuitBreaker("a->b", FAST)
    for failed in (False, True, False, True):
        b.allow("b", "m")
        b.record(failed)
    assert b.state == "open"
    with pytest.raises(cleave.CircuitOpen) as caught:
        b.allow("b", "m")
    assert caught.value.ran is False
    assert 0 < (caught.value.retry_after or 0) <= 0.1
    time.sleep(0.12)
    b.allow("b", "m")  # the probe
    assert b.state == "half_open"
    with pytest.raises(cleave.CircuitOpen, match="probes are busy"):
        b.allow("b", "m")
    b.record(False)
    assert b.state == "closed"


def test_a_failed_probe_opens_again() -> None:
    b = CircuitBreaker("a->b", FAST)
    for _ in range(4):
        b.record(True)
    time.sleep(0.12)
    b.allow("b", "m")
    b.record(True)
    assert b.state == "open"
    assert b.opened == 2


def test_few_calls_never_open_it() -> None:
    b = CircuitBreaker("a->b", FAST)
    for _ in range(3):
        b.record(True)
    assert b.state == "closed"


def test_the_bulkhead_rejects_past_its_limit() -> None:
    bh = Bulkhead("a->b", 2)
    bh.enter("b", "m")
    bh.enter("b", "m")
    with pytest.raises(cleave.BulkheadFull) as caught:
        bh.enter("b", "m")
    assert caught.value.ran is False
    bh.leave()
    bh.enter("b", "m")
    assert (bh.active, bh.rejected) == (2, 1)


@pytest.mark.parametrize(
    ("exc", "safe", "retry"),
    [
        (cleave.Unavailable("x", ran=False), False, True),  # provably not run
        (cleave.Unavailable("x"), False, False),  # maybe run
        (cleave.Unavailable("x"), True, True),
        (cleave.DeadlineExceeded("x"), False, False),
        (cleave.DeadlineExceeded("x"), True, True),
        (cleave.RemoteError("x"), True, True),
        (cleave.NotFound("x"), True, False),  # an answer
        (cleave.CircuitOpen("x", ran=False), True, False),  # fail fast
        (cleave.BulkheadFull("x", ran=False), True, False),
    ],
)
def test_what_is_retried(exc: cleave.CallError, safe: bool, retry: bool) -> None:
    assert should_retry(exc, safe) is retry


def test_what_counts_against_the_circuit() -> None:
    assert is_failure(cleave.DeadlineExceeded("x"))
    assert is_failure(cleave.RemoteError("x"))
    assert is_failure(cleave.Unavailable("x"))
    assert not is_failure(cleave.NotFound("x"))
    assert not is_failure(cleave.CircuitOpen("x"))


def test_backoff_is_full_jitter_and_capped() -> None:
    p = Policy(ResilienceSettings(backoff=0.1, backoff_max=0.3), None, None)
    delays = [p.delay(5) for _ in range(200)]
    assert all(0 <= d <= 0.3 for d in delays)
    assert max(delays) > 0.2
    assert min(delays) < 0.1


def test_overrides_merge_method_over_service_over_defaults() -> None:
    base = ResilienceSettings()
    merged = base.merged(ResilienceOverride(timeout=1.0, retries=5), ResilienceOverride(retries=0))
    assert (merged.timeout, merged.retries, merged.bulkhead) == (1.0, 0, base.bulkhead)
