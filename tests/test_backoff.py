"""The one backoff helper: exponential, capped, with a share of jitter."""

from __future__ import annotations

import pytest

from cleave._backoff import backoff


def test_the_wait_doubles_from_base_up_to_the_cap() -> None:
    waits = [backoff(n, base=0.2, cap=5.0) for n in range(1, 9)]
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])


def test_attempts_below_one_count_as_the_first_and_huge_ones_stay_at_the_cap() -> None:
    assert backoff(0, base=0.1, cap=1.0) == backoff(1, base=0.1, cap=1.0) == 0.1
    assert backoff(-3, base=0.1, cap=1.0) == 0.1
    assert backoff(10_000, base=0.1, cap=1.0) == 1.0  # no OverflowError


def test_jitter_takes_a_random_share_off_the_top() -> None:
    for attempt in (1, 3, 10):
        exact = backoff(attempt, base=0.05, cap=1.0)
        full = [backoff(attempt, base=0.05, cap=1.0, jitter=1.0) for _ in range(500)]
        equal = [backoff(attempt, base=0.05, cap=1.0, jitter=0.5) for _ in range(500)]
        assert all(0.0 <= w <= exact for w in full)
        assert all(exact / 2 <= w <= exact for w in equal)
        # Random indeed: spread over the range, not one value.
        assert min(full) < exact * 0.25
        assert max(full) > exact * 0.75
        assert len(set(equal)) > 100


def test_mistakes_are_explained() -> None:
    with pytest.raises(ValueError, match="share of the wait, from 0 to 1"):
        backoff(1, base=0.1, cap=1.0, jitter=1.5)
    with pytest.raises(ValueError, match="a base and a cap of 0 s or more"):
        backoff(1, base=-0.1, cap=1.0)
