"""A steady load on the shop from threads, recording every request's outcome and latency."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

#: What to send: (method, path, json body or None).
Request = tuple[str, str, Any]


@dataclass
class Outcome:
    started: float
    latency: float
    status: int  # 0: no answer (connection error)
    body: Any = None


@dataclass
class Load:
    """``threads`` threads each sending about ``rate / threads`` requests a second."""

    url: str
    make: Callable[[int], Request]
    rate: float = 20.0
    threads: int = 4
    timeout: float = 30.0
    #: Sent with every request (e.g. a token).
    headers: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> Load:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.timeout + 5)
        return self

    def _next(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _run(self) -> None:
        interval = self.threads / self.rate
        with httpx.Client(base_url=self.url, timeout=self.timeout) as http:
            while not self._stop.is_set():
                n = self._next()
                method, path, body = self.make(n)
                headers = {**self.headers, "Idempotency-Key": f"load-{os.getpid()}-{id(self)}-{n}"}
                started = time.monotonic()
                try:
                    resp = http.request(method, path, json=body, headers=headers)
                    status, payload = resp.status_code, resp.json()
                except (httpx.HTTPError, ValueError):
                    status, payload = 0, None
                latency = time.monotonic() - started
                self.outcomes.append(Outcome(started, latency, status, payload))
                time.sleep(max(0.0, interval - latency))

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.started < end]


def p99(outcomes: list[Outcome]) -> float:
    if not outcomes:
        return 0.0
    latencies = sorted(o.latency for o in outcomes)
    return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def p50(outcomes: list[Outcome]) -> float:
    if not outcomes:
        return 0.0
    latencies = sorted(o.latency for o in outcomes)
    return latencies[len(latencies) // 2]


def errors(outcomes: list[Outcome], *, allowed: tuple[int, ...] = ()) -> list[Outcome]:
    return [o for o in outcomes if not (200 <= o.status < 300 or o.status in allowed)]


def figures(name: str, outcomes: list[Outcome]) -> str:
    return (
        f"{name}: requests={len(outcomes)} errors={len(errors(outcomes))} "
        f"p50={p50(outcomes) * 1000:.0f}ms p99={p99(outcomes) * 1000:.0f}ms"
    )
