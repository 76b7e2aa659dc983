"""4. Checkout at fixed open-loop rates: the shop as a monolith, as processes, and FastAPI.

Each system runs on loopback from a fresh copy of its data, with stock and
balances multiplied (``SHOP_SEED_MULTIPLIER``) so every order is confirmed:

- ``cleave-monolith``: ``cleave run examples/shop`` (one process);
- ``cleave-processes``: ``cleave up examples/shop`` (a gateway, six service
  workers and an embedded nats-server: eight processes);
- ``fastapi``: ``bench/checkout_fastapi.py``, the same three-hop checkout as
  four FastAPI + uvicorn processes calling each other with httpx.

The load generator (``bench/loadgen.py``, its own process) sends
``POST /v1/orders`` at a constant rate, whatever the answers' pace
(open loop), and times each order from when it was due to leave. Each rate
runs ``runs`` times; the figures are medians. A rate is *sustained* when
every order was answered 2xx and p99 stayed within ``SLO_P99_MS``; the sweep
goes up the rates until two in a row are not. CPU is the user + system time
of every process of the system under test, per 1,000 confirmed orders.

Usage: python -m bench.checkout [SYSTEM ...]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.common import ROOT, Worker, cpu_seconds, free_port

BODY = '{"account_id":"acc-carol","items":[{"sku":"CBL-01","qty":1}]}'
# About 1.25x apart: the sustainable rate is known to within a step.
RATES = (20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500, 600, 800, 1000)
SLO_P99_MS = 100.0
SHOP = ROOT / "examples" / "shop"
ENV = {"SHOP_SEED_MULTIPLIER": "1000", "PYTHONPATH": f"{ROOT}{os.pathsep}{SHOP}"}


def _wait_for_orders(port: int, token: str, timeout: float = 90.0) -> None:
    """Until one order goes through: every hop is up, caches and connections are warm."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"POST /v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n{BODY}"
    ).encode()
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                last = s.recv(64).decode(errors="replace")
                if last.startswith("HTTP/1.1 201"):
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"no order went through on port {port} within {timeout:g}s: {last}")


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _label(pid: int) -> str:
    """What a process of a system under test runs: a service group, nats-server, ..."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return "gone"
    if "nats-server" in Path(argv[0]).name:
        return "nats-server"
    if "cleave.runtime.worker" in argv:
        return argv[argv.index("--group") + 1]
    if "bench.checkout_fastapi" in argv:
        return argv[argv.index("bench.checkout_fastapi") + 1]
    if "cleave.cli" in argv:
        return "supervisor" if "up" in argv else "monolith"
    return Path(argv[0]).name


class System(ABC):
    """A system under test: started on a port, its processes' CPU time, stopped."""

    name = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp / self.name
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        #: The bearer token the load generator sends ("" for a system that checks none).
        self.token = ""

    @abstractmethod
    def start(self) -> None:
        """Start the system's processes and wait until an order goes through."""

    def pids(self) -> list[int]:
        return [p for proc in self.procs for p in _descendants(proc.pid)]

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of each process of the system, by what it runs."""
        out: dict[str, float] = {}
        for pid in self.pids():
            label = _label(pid)
            out[label] = out.get(label, 0.0) + cpu_seconds(pid)
        return out

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _spawn(self, *argv: str, cwd: Path) -> None:
        log = open(self.tmp / f"{len(self.procs)}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.procs.append(
            subprocess.Popen(
                [sys.executable, *argv],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **ENV},
            )
        )


class Cleave(System):
    """The shop, copied fresh, run by the ``cleave`` command of the placement."""

    command = ""
    start_timeout = 90.0

    def _copy_shop(self) -> Path:
        folder = self.tmp / "shop"
        shutil.copytree(SHOP, folder, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
        # One customer orders at up to 1,000/s here: measure the checkout, not the rate limit
        # (the bearer token is still verified on every request).
        plan = folder / "cleave.toml"
        text = plan.read_text()
        if re.search(r"(?m)^rate\s*=", text):  # the shop's [gateway] rate
            text = re.sub(r"(?m)^rate\s*=.*$", "rate = 0", text, count=1)
        else:
            text = text.replace("[gateway]\n", "[gateway]\nrate = 0\n", 1)
        plan.write_text(text)
        # A customer's token, from the copy's dev issuer (made now, before the app starts).
        self.token = subprocess.run(
            [sys.executable, "-m", "cleave.cli", "token", str(folder), "--sub", "acc-carol",
             "--ttl", "1d"],
            cwd=folder, env={**os.environ, **ENV}, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return folder

    def start(self) -> None:
        self.tmp.mkdir(parents=True)
        shop = self._copy_shop()
        self._spawn("-m", "cleave.cli", self.command, str(shop), "--port", str(self.port),
                    "--admin-port", "0", cwd=shop)  # fmt: skip
        _wait_for_orders(self.port, self.token, timeout=self.start_timeout)


class Monolith(Cleave):
    name = "cleave-monolith"
    command = "run"


class Processes(Cleave):
    name = "cleave-processes"
    command = "up"
    start_timeout = 180.0  # nine processes starting on two cores


class FastAPI(System):
    name = "fastapi"

    def start(self) -> None:
        self.tmp.mkdir(parents=True)
        data = str(self.tmp / "data")
        inventory, billing, orders = free_port(), free_port(), free_port()
        module = "bench.checkout_fastapi"
        self._spawn("-m", module, "inventory", str(inventory), data, cwd=ROOT)
        self._spawn("-m", module, "billing", str(billing), data, cwd=ROOT)
        self._spawn("-m", module, "orders", str(orders), data, str(inventory), str(billing),
                    cwd=ROOT)  # fmt: skip
        self._spawn("-m", module, "gateway", str(self.port), data, str(orders), cwd=ROOT)
        _wait_for_orders(self.port, self.token)


SYSTEMS: dict[str, type[System]] = {s.name: s for s in (Monolith, Processes, FastAPI)}


def _point(system: System, rate: float, seconds: float) -> dict[str, Any]:
    """One run of the load generator at ``rate``, with the system's CPU time meanwhile."""
    before = system.cpu()
    gen = Worker(
        "bench.loadgen", "127.0.0.1", str(system.port), str(rate), str(seconds), BODY, system.token
    )
    result: dict[str, Any] = gen.result(timeout=seconds + 120)
    result["cpu_seconds"] = round(system.cpu() - before, 3)
    return result


def _sustained(point: dict[str, Any]) -> bool:
    return bool(
        point["errors"] == 0
        and point["p99_ms"] <= SLO_P99_MS
        and point["achieved"] >= 0.97 * point["offered"]
    )


def sweep(system: System, *, runs: int, seconds: float) -> dict[str, Any]:
    points = []
    misses = 0
    for rate in RATES:
        before = system.cpu_by_process()
        measured = [_point(system, rate, seconds) for _ in range(runs)]
        after = system.cpu_by_process()
        point: dict[str, Any] = {
            k: round(statistics.median(m[k] for m in measured), 2)
            for k in ("achieved", "p50_ms", "p99_ms", "errors", "cpu_seconds", "ok")
        }
        point["offered"] = rate
        ok = max(1, sum(m["ok"] for m in measured))
        point["cpu_per_1000"] = round(sum(m["cpu_seconds"] for m in measured) / ok * 1000, 2)
        point["cpu_per_1000_by_process"] = {
            label: round((after[label] - before.get(label, 0.0)) / ok * 1000, 2)
            for label in sorted(after, key=lambda k: before.get(k, 0.0) - after[k])
        }
        point["sustained"] = _sustained(point)
        point["runs"] = measured
        points.append(point)
        print(
            f"  checkout {system.name:<17} {rate:>5}/s  achieved {point['achieved']:>7.1f}/s  "
            f"p50 {point['p50_ms']:>7.1f}ms  p99 {point['p99_ms']:>7.1f}ms  "
            f"errors {point['errors']:>5.0f}  cpu/1000 {point['cpu_per_1000']:>6.2f}s"
            f"{'' if point['sustained'] else '  (not sustained)'}",
            flush=True,
        )
        misses = 0 if point["sustained"] else misses + 1
        if misses == 2:
            break
    sustained = [p["offered"] for p in points if p["sustained"]]
    return {"points": points, "sustainable_rate": max(sustained, default=0)}


def run(
    tmp: Path, *, runs: int = 3, seconds: float = 2.0, only: list[str] | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {"slo_p99_ms": SLO_P99_MS, "systems": {}}
    for name in only or list(SYSTEMS):
        system = SYSTEMS[name](tmp)
        try:
            system.start()
            results["systems"][name] = sweep(system, runs=runs, seconds=seconds)
            results["systems"][name]["processes"] = len(system.pids())
        finally:
            system.stop()
    return results


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cleave-bench-") as folder:
        print(json.dumps(run(Path(folder), only=sys.argv[1:] or None), indent=1)[:2000])
