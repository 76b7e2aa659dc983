"""2. Co-located call: Cleave's monolith call against a direct ``await`` of the same coroutine.

One service calls another in the same process, from inside a handler (a
caller's context is current, as it always is in a running app). The figure
that matters is the overhead per call: Cleave's time minus the direct
await's, in microseconds, with tracing off and on (as shipped).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import cleave
from cleave.context import CallContext, _current
from cleave.observability.tracing import tracer
from cleave.testing import Harness


class Ping(cleave.Message):
    n: int


@cleave.contract("pinger", version=1)
class Pinger(Protocol):
    async def ping(self, req: Ping) -> Ping: ...


class PingerService(cleave.Service, implements=Pinger):
    async def ping(self, req: Ping) -> Ping:
        return req


APP = cleave.App("colocated", services=[PingerService])


async def _per_call(call: Any, arg: Any, n: int, repeats: int) -> float:
    for _ in range(2000):
        await call(arg)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(n):
            await call(arg)
        best = min(best, (time.perf_counter() - started) / n)
    return best


async def _measure(n: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for label, tracing in (("tracing_off", False), ("tracing_on", True)):
        tracer.configure(enabled=tracing)
        async with Harness(APP) as h:
            client: Any = h.client(Pinger, caller="orders")
            service: Any = h.service("pinger")
            req = Ping(n=1)
            token = _current.set(CallContext(time.time() + 3600, "bench", "orders", parent))
            try:
                direct = await _per_call(service.ping, req, n, repeats)
                via = await _per_call(client.ping, req, n, repeats)
            finally:
                _current.reset(token)
        out[label] = {
            "direct_ns": round(direct * 1e9, 1),
            "cleave_ns": round(via * 1e9, 1),
            "overhead_us": round((via - direct) * 1e6, 3),
        }
    tracer.configure(enabled=True)
    return out


def run(*, runs: int = 3, n: int = 100_000) -> dict[str, Any]:
    """Median over ``runs`` of the best of a few repeats (noise only ever adds time)."""
    import statistics

    measured = [asyncio.run(_measure(n, 3)) for _ in range(runs)]
    result: dict[str, Any] = {}
    for label in ("tracing_off", "tracing_on"):
        result[label] = {
            k: round(statistics.median(m[label][k] for m in measured), 3)
            for k in ("direct_ns", "cleave_ns", "overhead_us")
        }
        print(
            f"  co-located {label:<12} direct {result[label]['direct_ns']:.0f} ns, "
            f"cleave {result[label]['cleave_ns']:.0f} ns: overhead "
            f"{result[label]['overhead_us']:.2f} us",
            flush=True,
        )
    return result
