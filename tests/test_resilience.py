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
    assert b.allow("b", "m") is True  # the probe
    assert b.state == "half_open"
    with pytest.raises(cleave.CircuitOpen, match="probes are busy"):
        b.allow("b", "m")
    b.record(False, probe=True)
    assert b.state == "closed"
    assert b.allow("b", "m") is False  # closed: not a probe


def test_a_probe_that_never_answers_frees_its_place() -> None:
    b = CircuitBreaker("a->b", FAST)
    for _ in range(4):
        b.record(True)
    time.sleep(0.12)
    assert b.allow("b", "m")
    # The router records a cancelled probe as a failure: the place goes back, it opens again.
    b.record(True, probe=True)
    assert (b.state, b.in_probe) == ("open", 0)
    time.sleep(0.12)
    assert b.allow("b", "m")
    b.record(False, probe=True)
    assert b.state == "closed"


def test_outcomes_of_calls_let_through_before_it_opened_do_not_decide() -> None:
    b = CircuitBreaker("a->b", FAST)
    for _ in range(4):
        b.record(True)
    time.sleep(0.12)
    assert b.allow("b", "m")
    b.record(False)  # a call from before the breaker opened, finishing late
    assert (b.state, b.in_probe) == ("half_open", 1)
    b.record(True, probe=True)
    assert b.state == "open"


def test_a_failed_probe_opens_again() -> None:
    b = CircuitBreaker("a->b", FAST)
    for _ in range(4):
        b.record(True)
    time.sleep(0.12)
    b.allow("b", "m")
    b.record(True, probe=True)
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
    assert is_failure(cleave.DeadlineExceeded("x", service="b"), "b")
    assert is_failure(cleave.RemoteError("x", service="b"), "b")
    assert is_failure(cleave.Unavailable("x"), "b")
    assert not is_failure(cleave.NotFound("x", service="b"), "b")
    assert not is_failure(cleave.CircuitOpen("x", service="b"), "b")


def test_what_a_callee_only_passed_on_does_not_count_against_it() -> None:
    # b's own dependency c failed; b is fine.
    assert not is_failure(cleave.Unavailable("x", service="c", ran=False), "b")
    assert not is_failure(cleave.DeadlineExceeded("x", service="c"), "b")
    assert not is_failure(cleave.RemoteError("x", service="c"), "b")


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
