"""Where a checkout's CPU goes: the shop's monolith under pyinstrument, at a fixed rate.

``cleave run examples/shop`` runs with pyinstrument armed
(``bench/profile_target.py``); it samples only while the load generator sends
orders at a constant rate (not start-up or seeding), then writes pstats. The report is
the busy time (idle waiting in epoll left out) by layer, and the functions
with the most self time. This is the profile the hot-path work was driven by
(docs/benchmarks.md says what it changed).

Usage: python -m bench.profile [RATE] [SECONDS]
"""

from __future__ import annotations

import json
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.checkout import BODY, Monolith, _wait_for_orders
from bench.common import ROOT, Worker

# Layers a sample's innermost frame is charged to, first match wins.
LAYERS = (
    (
        "sqlite",
        (
            "sqlite3",
            "/sqlalchemy/",
            "Connection.commit",
            "Connection.execute",
            "Cursor.execute",
            "Cursor.fetch",
            "Connection.rollback",
        ),
    ),
    ("http server (uvicorn, starlette)", ("/uvicorn/", "/starlette/", "/httptools/", "h11")),
    ("cleave", ("/src/cleave/",)),
    ("shop code", ("/examples/shop/",)),
    ("msgspec", ("msgspec",)),
    ("logging (structlog)", ("/structlog/", "/logging/")),
    ("asyncio", ("/asyncio/", "_asyncio", "selector")),
)
IDLE = ("poll' of 'select.epoll", "select.epoll", "epoll.poll")


def _layer(filename: str, function: str) -> str:
    where = f"{filename} {function}"
    for layer, needles in LAYERS:
        if any(n in where for n in needles):
            return layer
    return "other"


def _short(filename: str, line: int, function: str) -> str:
    if "/shop/shop/" in filename:  # the shop, from the copy the run used
        filename = "shop/" + filename.rsplit("/shop/shop/", 1)[1]
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{function} ({filename}:{line})" if filename != "~" else function


def report(stats_file: Path, top: int = 15) -> dict[str, Any]:
    # Stats.stats is documented but missing from typeshed.
    stats: dict[Any, Any] = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    busy: dict[str, float] = {}
    functions: list[tuple[float, str]] = []
    total = idle = 0.0
    for (filename, line, function), (_cc, _nc, self_time, _cum, _callers) in stats.items():
        total += self_time
        if any(marker in function for marker in IDLE):
            idle += self_time
            continue
        layer = _layer(filename, function)
        busy[layer] = busy.get(layer, 0.0) + self_time
        functions.append((self_time, _short(filename, line, function)))
    working = max(total - idle, 1e-9)
    functions.sort(reverse=True)
    return {
        "sampled_seconds": round(total, 2),
        "idle_share": round(idle / max(total, 1e-9), 3),
        "busy_by_layer": {
            k: round(v / working, 3) for k, v in sorted(busy.items(), key=lambda kv: -kv[1])
        },
        "top_self": [{"function": f, "share": round(t / working, 3)} for t, f in functions[:top]],
    }


def run(tmp: Path, *, rate: float = 60.0, seconds: float = 6.0) -> dict[str, Any]:
    system = Monolith(tmp)
    system.tmp.mkdir(parents=True)
    shop = system._copy_shop()
    out = system.tmp / "profile.pstats"
    system._spawn("-m", "bench.profile_target", str(out), "run", str(shop),
                  "--port", str(system.port), "--admin-port", "0", cwd=ROOT)  # fmt: skip
    proc = system.procs[0]
    try:
        _wait_for_orders(system.port, system.token)
        proc.send_signal(signal.SIGUSR1)
        gen = Worker(
            "bench.loadgen", "127.0.0.1", str(system.port), str(rate), str(seconds), BODY,
            system.token,
        )  # fmt: skip
        load = gen.result(timeout=seconds + 120)
        proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        system.stop()
    if not out.exists():
        raise RuntimeError(f"pyinstrument wrote no profile; see {system.tmp}/0.log")
    result = {"rate": rate, "seconds": seconds, "load": load, **report(out)}
    layers = ", ".join(f"{k} {v:.0%}" for k, v in result["busy_by_layer"].items())
    print(f"  profile monolith at {rate:g}/s: busy time by layer: {layers}", flush=True)
    return result


if __name__ == "__main__":
    options = dict(zip(("rate", "seconds"), map(float, sys.argv[1:3]), strict=False))
    with tempfile.TemporaryDirectory(prefix="cleave-profile-") as folder:
        print(json.dumps(run(Path(folder), **options), indent=1))
