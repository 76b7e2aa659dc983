"""What every benchmark shares: percentiles, worker processes, CPU time, a NATS server."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = 217  # bytes: the reference message size of the issue
# How every FastAPI peer runs: uvicorn on loopback, the asyncio loop (as Cleave),
# httptools, no access log (BENCHMARKING.md: pin the loop and the HTTP parser).
UVICORN: dict[str, Any] = {
    "host": "127.0.0.1",
    "loop": "asyncio",
    "http": "httptools",
    "log_level": "warning",
    "access_log": False,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: Sequence[float], seconds: float, calls: int) -> dict[str, float]:
    """Throughput and latency (microseconds) of one measured run."""
    return {
        "calls": calls,
        "seconds": round(seconds, 4),
        "per_second": round(calls / seconds, 1),
        "p50_us": round(percentile(latencies, 0.50) * 1e6, 1),
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
    }


def median_of(runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    """The median run figures, and every run's, for the record."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 2) for k in keys}
    out["runs"] = list(runs)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Worker:
    """A Python process running ``python -m <module> <args>`` that prints READY, then JSON."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited before READY ({self.proc.args})")
            if line.strip() == "READY":
                return
        raise TimeoutError(f"worker not ready: {self.proc.args}")

    def result(self, timeout: float = 600.0) -> Any:
        out, _ = self.proc.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith(("{", "["))]
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"worker failed ({self.proc.returncode}): {self.proc.args}\n{out}")
        return json.loads(lines[-1])

    @property
    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def nats_server(tmp: Path, *, sync_always: bool = True) -> Iterator[str]:
    """A nats-server with JetStream on a free loopback port (fsync always, like Cleave's)."""
    from cleave.runtime.natsd import EmbeddedNats

    server = EmbeddedNats(tmp / "nats", name="bench", sync_always=sync_always)
    server.launch()
    try:
        yield server.url
    finally:
        server.shutdown()


def ready() -> None:
    print("READY", flush=True)


def emit(result: Any) -> None:
    print(json.dumps(result), flush=True)
