"""A call whose attempts all time out says what the caller waited: attempts, total, each."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sample_app
from sample_app import Greeter, Wobble

import cleave
from cleave.config import Plan
from cleave.resilience import ResilienceSettings
from cleave.testing import Harness, NatsHarness

PLACEMENTS = ["monolith", pytest.param("nats", marks=pytest.mark.nats)]
PLAN = Plan(resilience=ResilienceSettings(timeout=0.2, retries=2, backoff=0.01))


@asynccontextmanager
async def slow_greeter(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> AsyncIterator[Any]:
    if placement == "monolith":
        harness: Any = Harness(sample_app.app, tmp_path, plan=PLAN)
    else:
        nats_url = request.getfixturevalue("nats_url")
        harness = NatsHarness(sample_app.app, nats_url, tmp_path, plan=PLAN)
    async with harness as h:
        h.inject("greeter", latency=1.0)
        yield h


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_retried_timeouts_say_attempts_and_the_time_waited(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with slow_greeter(request, placement, tmp_path) as h:
        began = time.monotonic()
        with pytest.raises(cleave.DeadlineExceeded) as caught:
            await h.client(Greeter).wobble(Wobble(key="k"))  # read-only: retried
        waited = time.monotonic() - began
    message = str(caught.value)
    found = re.search(
        r"greeter\.wobble did not answer: 3 attempts over ([\d.]+)s, 0\.2s each", message
    )
    assert found, message
    assert abs(float(found.group(1)) - waited) < 0.2  # the time the caller really waited
    assert waited >= 0.6


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_the_gateway_504_says_it_too(
    request: pytest.FixtureRequest, placement: str, tmp_path: Path
) -> None:
    async with slow_greeter(request, placement, tmp_path) as h:
        transport = httpx.ASGITransport(app=h.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            resp = await http.post(
                "/add", json={"key": "k", "amount": 1}, headers={"idempotency-key": "one"}
            )
    assert resp.status_code == 504
    assert "3 attempts over" in resp.text, resp.text
    assert "0.2s each" in resp.text


async def test_one_attempt_keeps_the_attempt_message(tmp_path: Path) -> None:
    plan = Plan(resilience=ResilienceSettings(timeout=0.2, retries=0))
    async with Harness(sample_app.app, tmp_path, plan=plan) as h:
        h.inject("greeter", latency=1.0)
        with pytest.raises(cleave.DeadlineExceeded, match=r"within its attempt timeout of 0\.2s"):
            await h.client(Greeter).wobble(Wobble(key="k"))
