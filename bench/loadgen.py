"""An open-loop HTTP load generator: requests leave on a fixed schedule.

Latency is measured from when a request was *scheduled* to leave, so a
server that falls behind is charged for the queueing it causes (no
coordinated omission). Requests go over a pool of keep-alive HTTP/1.1
connections, opened as needed up to a cap. Written on asyncio streams
rather than httpx, which is too slow a client to be a load generator.

Usage: python -m bench.loadgen HOST PORT RATE SECONDS BODY_JSON [TOKEN]
(TOKEN: sent as ``Authorization: Bearer TOKEN``)
prints {"offered", "sent", "ok", "errors", "p50_ms", "p99_ms", ...}
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench.common import emit, percentile

MAX_CONNECTIONS = 512


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, payload: bytes) -> int:
        self.writer.write(payload)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        if length:
            await self.reader.readexactly(length)
        return status


async def run(
    host: str, port: int, rate: float, seconds: float, body: bytes, token: str = ""
) -> dict[str, Any]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    payload = (
        f"POST /v1/orders HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: list[Conn] = []
    opened = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal opened, failures
        conn = idle.pop() if idle else None
        # A kept-alive connection the server closed while it sat idle (uvicorn closes
        # them after 5 s) fails at once: like any HTTP client, try once more on a new one.
        for attempt in (1, 2):
            try:
                if conn is None:
                    opened += 1
                    conn = Conn(*await asyncio.open_connection(host, port))
                status = await conn.request(payload)
                break
            except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError):
                conn = None
                if attempt == 2:
                    failures += 1
                    return
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1
        idle.append(conn)

    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= MAX_CONNECTIONS:
            failures += 1  # the generator will not open more: count it as refused
            continue
        task = asyncio.get_running_loop().create_task(one(scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    sent_for = time.perf_counter() - start
    if pending:
        await asyncio.wait(pending, timeout=30)
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "offered": rate,
        "sent": total,
        "ok": ok,
        "errors": total - ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "achieved": round(ok / max(sent_for, 1e-9), 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "connections": opened,
    }


def main(argv: list[str]) -> None:
    host, port, rate, seconds, body, *token = argv
    result = asyncio.run(
        run(host, int(port), float(rate), float(seconds), body.encode(), *token[:1])
    )
    emit(result)


if __name__ == "__main__":
    main(sys.argv[1:])
