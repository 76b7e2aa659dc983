from __future__ import annotations

import os
import time

import pytest

import cleave
from cleave.context import CallContext, _current, new_request_id, remaining


def test_request_ids_are_unique_and_carry_the_pid() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith(f"{os.getpid():x}-") for i in ids)


def test_child_ids_follow_call_order() -> None:
    ctx = CallContext(time.time() + 5, "root", "gateway")
    assert [ctx.child_request_id() for _ in range(3)] == ["root.1", "root.2", "root.3"]


def test_timeout_tightens_and_never_loosens() -> None:
    token = _current.set(CallContext(time.time() + 1.0, "r", "c"))
    try:
        outer = remaining()
        assert outer is not None
        assert 0.9 < outer <= 1.0
        with cleave.timeout(0.2):
            inner = remaining()
            assert inner is not None
            assert inner <= 0.2
            with cleave.timeout(5):
                still = remaining()
                assert still is not None
                assert still <= 0.2
        after = remaining()
        assert after is not None
        assert after > 0.5
    finally:
        _current.reset(token)


def test_timeout_outside_a_call_sets_a_deadline() -> None:
    assert remaining() is None
    with cleave.timeout(1):
        left = remaining()
        assert left is not None
        assert 0 < left <= 1


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_timeout_rejects_non_positive(bad: float) -> None:
    with pytest.raises(cleave.ConfigError, match="positive"), cleave.timeout(bad):
        pass
