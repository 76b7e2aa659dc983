"""Turn a results dict into docs/benchmarks.md: tables, targets met or missed, PNG plots.

Usage: python -m bench.report bench/results/<date>.json   (re-render a past run)

The figures and verdicts are computed here from the run; the reading of them
(why a target is missed, from the profile) is kept by hand in
bench/analysis.md and included as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT

REMOTE_NAMES = {
    "nats": "raw nats-py request/reply",
    "cleave": "Cleave processes (tracing on)",
    "cleave-notrace": "Cleave processes (tracing off)",
    "cleave-tls": "Cleave processes over TLS (tracing on)",
    "faststream": "FastStream NATS RPC",
    "grpc": "grpcio grpc.aio unary",
    "fastapi": "FastAPI + uvicorn, shared httpx client",
    "fastapi-own-client": "FastAPI + uvicorn, httpx client per task",
}
CHECKOUT_NAMES = {
    "cleave-monolith": "Cleave monolith",
    "cleave-processes": "Cleave processes",
    "fastapi": "FastAPI + httpx",
}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def _x(a: float, b: float) -> str:
    """``a`` as a multiple of ``b``, or n/a when ``b`` measured nothing."""
    return f"{a / b:.1f}x" if b else "n/a (the peer completed no call)"


#: ``await coro()`` on the machine the issue's reference figures come from (BENCHMARKING.md).
REFERENCE_AWAIT_NS = 55.0


def machine_factor(r: dict[str, Any]) -> float:
    """How much slower this machine runs Python than the reference one: the same direct await."""
    if "colocated" not in r:
        return 1.0
    return float(r["colocated"]["tracing_off"]["direct_ns"]) / REFERENCE_AWAIT_NS


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every target of issue #6 the run covers."""
    rows: list[tuple[str, str, bool]] = []
    if "remote" in r:
        rem = r["remote"]
        par = {k: v["in_flight_64"]["per_second"] for k, v in rem.items()}
        c = par["cleave"]
        rows += [
            ("Remote, 64 in flight: within 20% of raw nats-py",
             f"{_ratio(c, par['nats']):.0%} of raw nats-py", c >= 0.8 * par["nats"]),
            ("Remote, 64 in flight: at least 3x FastStream",
             _x(c, par["faststream"]), c >= 3 * par["faststream"]),
            ("Remote, 64 in flight: at least 10x FastAPI + httpx",
             f"{_x(c, par['fastapi'])} (shared client), "
             f"{_x(c, par['fastapi-own-client'])} (client per task)",
             c >= 10 * par["fastapi"]),
        ]  # fmt: skip
        p50, floor = rem["cleave"]["sequential"]["p50_us"], rem["nats"]["sequential"]["p50_us"]
        rows.append(("Remote, sequential: p50 within 1.5x raw nats-py",
                     f"{p50:.0f} us vs {floor:.0f} us ({_ratio(p50, floor):.2f}x)",
                     p50 <= 1.5 * floor))  # fmt: skip
    if "colocated" in r:
        off = r["colocated"]["tracing_off"]["overhead_us"]
        on = r["colocated"]["tracing_on"]["overhead_us"]
        slow = machine_factor(r)
        note = f" ({{:.2f}} us on the reference machine, this one being {slow:.1f}x slower)"
        rows += [
            ("Co-located call overhead, tracing off: under 2 us",
             f"{off:.2f} us" + note.format(off / slow), off < 2),
            ("Co-located call overhead, tracing on: under 10 us",
             f"{on:.2f} us" + note.format(on / slow), on < 10),
        ]  # fmt: skip
    if "events" in r:
        ev = r["events"]["cleave"]["per_second"]
        rows.append(("Durable events end to end: at least 5,000 events/s", f"{ev:,.0f}/s",
                     ev >= 5000))  # fmt: skip
    if "checkout" in r:
        sus = {k: v["sustainable_rate"] for k, v in r["checkout"]["systems"].items()}
        base = sus.get("fastapi", 0)
        for name, factor in (("cleave-monolith", 5), ("cleave-processes", 2)):
            if name in sus:
                rows.append((f"Checkout: {CHECKOUT_NAMES[name]} at least {factor}x FastAPI",
                             f"{sus[name]}/s vs {base}/s ({_x(sus[name], base)})",
                             sus[name] >= factor * base))  # fmt: skip
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plots(r: dict[str, Any], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    if "remote" in r:
        names = list(r["remote"])
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.38
        for i, (mode, label) in enumerate((("sequential", "sequential"),
                                           ("in_flight_64", "64 in flight"))):  # fmt: skip
            values = [r["remote"][n][mode]["per_second"] for n in names]
            bars = ax.bar([x + (i - 0.5) * width for x in range(len(names))], values, width,
                          label=label)  # fmt: skip
            ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" for v in values], fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
        ax.set_ylabel("calls/s (median of runs)")
        ax.set_title("Remote call between two processes, 217-byte messages")
        ax.legend()
        fig.tight_layout()
        fig.savefig(docs / "bench-remote.png", dpi=110)
        plt.close(fig)
        made.append("bench-remote.png")
    if "checkout" in r:
        systems = r["checkout"]["systems"]
        fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, s in systems.items():
            xs = [p["offered"] for p in s["points"]]
            lat.plot(xs, [p["p99_ms"] for p in s["points"]], marker="o",
                     label=f"{CHECKOUT_NAMES.get(name, name)} p99")  # fmt: skip
            cpu.plot(xs, [p["cpu_per_1000"] for p in s["points"]], marker="o",
                     label=CHECKOUT_NAMES.get(name, name))  # fmt: skip
        lat.axhline(r["checkout"]["slo_p99_ms"], color="grey", linestyle="--", label="p99 SLO")
        lat.set_yscale("log")
        lat.set_xlabel("offered orders/s (open loop)")
        lat.set_ylabel("p99 latency, ms (log)")
        lat.set_title("Checkout latency vs offered load")
        lat.legend(fontsize=8)
        cpu.set_xlabel("offered orders/s")
        cpu.set_ylabel("CPU seconds per 1,000 orders")
        cpu.set_title("CPU cost of an order (all processes)")
        cpu.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "bench-checkout.png", dpi=110)
        plt.close(fig)
        made.append("bench-checkout.png")
    return made


def _remote(r: dict[str, Any]) -> str:
    rem = r["remote"]
    floor = rem["nats"]
    rows = []
    for name, m in rem.items():
        s, p = m["sequential"], m["in_flight_64"]
        rows.append([
            REMOTE_NAMES.get(name, name),
            f"{s['per_second']:,.0f}", f"{s['p50_us']:.0f}", f"{s['p99_us']:.0f}",
            f"{p['per_second']:,.0f}", f"{p['p50_us']:.0f}", f"{p['p99_us']:.0f}",
            f"{_ratio(p['per_second'], floor['in_flight_64']['per_second']):.2f}",
        ])  # fmt: skip
    return _table(["system", "seq calls/s", "seq p50 us", "seq p99 us", "64 in flight calls/s",
                   "p50 us", "p99 us", "x raw nats (64)"], rows)  # fmt: skip


def _checkout(r: dict[str, Any]) -> str:
    out = []
    systems = r["checkout"]["systems"]
    rows = [[CHECKOUT_NAMES.get(n, n), f"{s['sustainable_rate']}/s", str(s.get("processes", "")),
             f"{s['points'][0]['cpu_per_1000']:.1f}"] for n, s in systems.items()]  # fmt: skip
    lowest = min(s["points"][0]["offered"] for s in systems.values())
    out.append(_table(["system", "sustainable rate", "processes",
                       f"CPU s / 1,000 orders at {lowest}/s"], rows))  # fmt: skip
    for name, s in systems.items():
        out.append(f"\n**{CHECKOUT_NAMES.get(name, name)}**\n")
        out.append(_table(
            ["offered/s", "achieved/s", "p50 ms", "p99 ms", "errors", "CPU s/1,000", "sustained"],
            [[str(p["offered"]), f"{p['achieved']:.0f}", f"{p['p50_ms']:.1f}", f"{p['p99_ms']:.1f}",
              f"{p['errors']:.0f}", f"{p['cpu_per_1000']:.1f}", "yes" if p["sustained"] else "no"]
             for p in s["points"]]))  # fmt: skip
        first = s["points"][0].get("cpu_per_1000_by_process")
        if first:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in first.items() if v >= 0.05)
            out.append(f"\nCPU s per 1,000 orders by process at {s['points'][0]['offered']}/s: "
                       f"{parts}.")  # fmt: skip
    return "\n".join(out)


def render(r: dict[str, Any], images: list[str]) -> str:
    m = r["machine"]
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`) from "
        f"`bench/results/{r['date'][:10]}{'-quick' if r.get('quick') else ''}.json`; "
        "do not edit by hand (the reading of the figures lives in `bench/analysis.md`). "
        "How each figure is measured: `bench/README.md`.",
        "",
        f"Run {r['date']} on {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['nats_server']}; took {r['duration_s']:.0f} s. Peers: "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        "",
    ]
    if "colocated" in r:
        direct = r["colocated"]["tracing_off"]["direct_ns"]
        out += [
            f"This machine runs a direct `await` in {direct:.0f} ns against the reference "
            f"machine's {REFERENCE_AWAIT_NS:.0f} ns: it is {machine_factor(r):.1f}x slower at "
            "plain Python, so absolute figures here are lower than the issue's reference "
            "points; the ratios between systems, measured side by side, are what count.",
            "",
        ]
    if r.get("quick"):
        out += ["> **Quick run** (one short run of each): a smoke test, not figures to quote.", ""]
    rows = targets(r)
    if rows:
        verdicts = [[t, v, "met" if ok else "**missed**"] for t, v, ok in rows]
        out += ["## Targets", "", _table(["target", "measured", "met"], verdicts), ""]
    if "remote" in r:
        out += ["## 1. Remote call (medians)", "", _remote(r), ""]
        if "bench-remote.png" in images:
            out += ["![Remote calls per second](bench-remote.png)", ""]
    if "colocated" in r:
        c = r["colocated"]
        out += ["## 2. Co-located call", "", _table(
            ["tracing", "direct await, ns", "Cleave monolith call, ns", "overhead, us"],
            [[k.replace("tracing_", ""), f"{v['direct_ns']:.0f}", f"{v['cleave_ns']:.0f}",
              f"{v['overhead_us']:.2f}"] for k, v in c.items()]), ""]  # fmt: skip
    if "events" in r:
        out += ["## 3. Durable events, end to end (medians)", "", _table(
            ["system", "events/s", "p50 ms", "p99 ms", "consumer CPU s"],
            [[k, f"{v['per_second']:,.0f}", f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}",
              f"{v['consumer_cpu_s']:.2f}"] for k, v in r["events"].items()]), ""]  # fmt: skip
    if "durability" in r:
        d = r["durability"]
        rows = [[mode, w, f"{v['per_second']:,.0f}", f"{v['p50_us']:,.0f}", f"{v['p99_us']:,.0f}"]
                for mode, by in d["commits"].items() for w, v in by.items()]  # fmt: skip
        out += ["## 3b. Durable commits: SQLite write transactions (medians)", "",
                "`normal`: no sync (survives a killed process, not a power cut); `full`: "
                "SQLite's own `synchronous=FULL` (a sync inside every commit, on the loop's "
                "thread); `group`: Cleave's default, one sync of the log shared by the commits "
                "around it, in a worker thread.", "",
                _table(["mode", "writers", "commits/s", "p50 us", "p99 us"], rows), ""]  # fmt: skip
        sp = {k: v for k, v in d["savepoints"].items() if isinstance(v, dict)}
        if sp:
            out += ["A nested `transaction()` (a SAVEPOINT) adds " + ", ".join(
                f"{v['savepoint_us']:.0f} us on {k}" for k, v in sp.items())
                + " to a transaction.", ""]  # fmt: skip
    if "checkout" in r:
        out += ["## 4. Checkout at fixed open-loop rates (medians)", "",
                f"A rate is sustained when every order is answered 2xx, p99 stays within "
                f"{r['checkout']['slo_p99_ms']:.0f} ms and at least 97% of the offered rate is "
                "achieved.", "", _checkout(r), ""]  # fmt: skip
        if "bench-checkout.png" in images:
            out += ["![Checkout latency and CPU vs load](bench-checkout.png)", ""]
    if "profile" in r:
        p = r["profile"]
        out += [f"## Profile: the monolith's checkout at {p['rate']:g} orders/s (pyinstrument)",
                "", f"Busy time by layer ({p['idle_share']:.0%} of samples idle in epoll, left "
                "out): " + ", ".join(f"{k} {v:.0%}" for k, v in p["busy_by_layer"].items()) + ".",
                "", _table(["function (self time)", "share of busy time"],
                           [[f"`{t['function']}`", f"{t['share']:.1%}"] for t in p["top_self"]]),
                ""]  # fmt: skip
    analysis = ROOT / "bench" / "analysis.md"
    if analysis.exists():
        out += [analysis.read_text().rstrip(), ""]
    return "\n".join(out)


def write_report(r: dict[str, Any], docs: Path) -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    images = plots(r, docs)
    page = docs / "benchmarks.md"
    page.write_text(render(r, images))
    return page


if __name__ == "__main__":
    print(write_report(json.loads(Path(sys.argv[1]).read_text()), ROOT / "docs"))
