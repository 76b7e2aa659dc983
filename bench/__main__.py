"""Run every benchmark, then write bench/results/<date>.json and docs/benchmarks.md with plots.

Usage: python -m bench [--quick] [--only remote,colocated,events,durability,checkout,profile]

``--quick`` runs each measurement once and briefly: a smoke test of the
suite, not figures to quote. ``make bench`` is the full run (under ten
minutes on a 2-core machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import checkout, colocated, durability, events, profile, remote
from bench.common import ROOT
from bench.report import write_report

PARTS = ("remote", "colocated", "events", "durability", "checkout", "profile")


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    from cleave.runtime.natsd import find_binary

    nats = subprocess.run(
        [find_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    packages = ("cleave", "nats-py", "msgspec", "fastapi", "uvicorn", "httpx", "grpcio",
                "faststream", "sqlalchemy", "pyinstrument")  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nats_server": nats,
        "packages": {p: metadata.version(p) for p in packages},
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short run of each: a smoke test")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    runs, seconds = (1, 1.0) if args.quick else (3, 2.0)

    started = time.monotonic()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": _machine(),
    }
    with tempfile.TemporaryDirectory(prefix="cleave-bench-") as folder:
        tmp = Path(folder)
        for part in parts:
            print(f"{part}:", flush=True)
            t0 = time.monotonic()
            if part == "remote":
                results[part] = remote.run(tmp / part, runs=runs, seconds=seconds)
            elif part == "colocated":
                results[part] = colocated.run(runs=runs, n=20_000 if args.quick else 100_000)
            elif part == "events":
                results[part] = events.run(
                    tmp / part, runs=runs, count=2000 if args.quick else 10_000
                )
            elif part == "durability":
                results[part] = durability.run(tmp / part, runs=runs, seconds=seconds)
            elif part == "checkout":
                results[part] = checkout.run(tmp / part, runs=runs, seconds=seconds)
            elif part == "profile":
                results[part] = profile.run(tmp / part, seconds=3.0 if args.quick else 6.0)
            print(f"  ({time.monotonic() - t0:.0f}s)", flush=True)
    results["duration_s"] = round(time.monotonic() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = results["date"][:10] + ("-quick" if args.quick else "")
    out = args.out / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    page = write_report(results, args.docs)
    print(f"wrote {out} and {page} in {results['duration_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
