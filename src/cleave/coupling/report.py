"""The three outputs of ``cleave coupling``: a JSON document, terminal tables, an HTML page.

The JSON is the reference (``services``, ``pairs``, ``advice`` and the rest);
the table and the page show the same data. The page is one self-contained
file: the service graph and the bar charts are inline SVG laid out here, so it
opens offline and can be attached to a ticket.
"""

from __future__ import annotations

import html
import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cleave.coupling.advice import Advice
from cleave.coupling.analysis import Analysis

__all__ = ["to_html", "to_json", "to_terminal"]


def to_json(an: Analysis, advice: list[Advice], meta: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, and the advice, as plain data."""
    t = an.thresholds
    rules = an.layout.rules()
    services = []
    for f in an.services.values():
        owner, n = (f.authors.most_common(1) or [("", 0)])[0]
        services.append(
            {
                "name": f.name,
                "revisions": f.revisions,
                "soc": f.soc,
                "authors": dict(f.authors.most_common()),
                "owner": owner,
                "owner_share": round(n / sum(f.authors.values()), 2) if n else 0.0,
                "clusters": [
                    {"files": list(c.files), "changes": c.changes, "authors": dict(a)}
                    for c, a in zip(f.clusters, f.cluster_authors, strict=True)
                ],
                "deploys": f.deploys,
                "deploys_per_week": f.deploys_per_week,
                "files": rules.get(f.name, []),
            }
        )
    pairs = [
        {
            "a": p.a,
            "b": p.b,
            "degree": p.degree,
            "shared": p.shared,
            "revisions_a": p.revisions_a,
            "revisions_b": p.revisions_b,
            "significant": p.significant(t),
            "declared": an.topology.declared(p.a, p.b),
            "author_overlap": an.author_overlap(p.a, p.b),
            "shipped_together": an.shipped_together.get((p.a, p.b), 0),
            "shared_files": an.mediators.get((p.a, p.b), []),
        }
        for p in an.pairs
    ]
    return {
        **meta,
        "changes": len(an.changes),
        "service_changes": len(an.service_sets),
        "authors": len(an.authors),
        "weeks": an.weeks,
        "multi_service_share": round(an.multi_service_share(), 3),
        "thresholds": {
            "min_revs": t.min_revs,
            "min_shared": t.min_shared,
            "min_degree": t.min_degree,
            "merge_degree": an.settings.merge_degree,
            "max_changeset": an.settings.max_changeset,
            "window_hours": an.settings.window_hours,
        },
        "delivery": {
            "estimate": True,
            "source": an.delivery_source,
            "note": "deploys are estimated from release points (tags, else merges to the "
            "first-parent line, else every change) and commit times",
        },
        "services": services,
        "pairs": pairs,
        "smells": an.smells,
        "traffic": [
            {
                "source": e.source,
                "target": e.target,
                "requests": e.requests,
                "calls": e.calls,
                "calls_per_request": e.calls_per_request,
                "latency_share": e.latency_share,
                "request_ms": e.request_ms,
            }
            for e in an.traffic
        ],
        "call_costs": None
        if an.costs is None
        else {
            "remote_us": an.costs.remote_us,
            "colocated_us": an.costs.colocated_us,
            "source": an.costs.source,
        },
        "advice": [
            {
                "kind": a.kind,
                "services": list(a.services),
                "evidence": list(a.evidence),
                "action": a.action,
                **a.extra,
            }
            for a in advice
        ],
    }


def to_terminal(doc: dict[str, Any], console: Console) -> None:
    """Rich tables: services, coupled pairs, smells, traffic, then the advice."""
    console.print(
        f"[bold]{escape(doc['app'])}[/]: {doc['changes']} changes ({doc['service_changes']} "
        f"touching a service) by {doc['authors']} author(s) over about {doc['weeks']:g} weeks "
        f"in {', '.join(escape(r) for r in doc['repos'])}",
        highlight=False,
    )
    table = Table(title="services", title_justify="left")
    for col in ("service", "changes", "soc", "authors", "main owner", "deploys/week*", "clusters"):
        table.add_column(col, overflow="fold")
    for s in doc["services"]:
        table.add_row(
            escape(s["name"]),
            str(s["revisions"]),
            str(s["soc"]),
            str(len(s["authors"])),
            f"{escape(s['owner'])} {round(100 * s['owner_share'])}%" if s["owner"] else "-",
            f"{s['deploys_per_week']:g}",
            str(len(s["clusters"])) if s["clusters"] else "-",
        )
    console.print(table)
    console.print(
        f"* estimate, from {doc['delivery']['source']}; thresholds: "
        + ", ".join(f"{k} {v}" for k, v in doc["thresholds"].items()),
        highlight=False,
    )
    pairs = [p for p in doc["pairs"] if p["significant"]] or doc["pairs"][:8]
    if pairs:
        table = Table(title="change coupling (code-maat degree)", title_justify="left")
        for col in ("a", "b", "degree", "shared", "revs a", "revs b", "declared", "owners shared"):
            table.add_column(col, overflow="fold")
        for p in pairs:
            style = "bold" if p["significant"] else "dim"
            table.add_row(
                escape(p["a"]),
                escape(p["b"]),
                f"[{style}]{p['degree']}%[/]",
                str(p["shared"]),
                str(p["revisions_a"]),
                str(p["revisions_b"]),
                escape("; ".join(p["declared"]) or "none"),
                f"{round(100 * p['author_overlap'])}%",
            )
        console.print(table)
    if doc["smells"]:
        table = Table(title="structural smells", title_justify="left")
        table.add_column("smell")
        table.add_column("evidence", overflow="fold")
        for s in doc["smells"]:
            table.add_row(s["kind"], escape(s["evidence"]))
        console.print(table)
    if doc["traffic"]:
        table = Table(title="traffic", title_justify="left")
        for col in ("edge", "requests", "calls/request", "time in calls"):
            table.add_column(col)
        for e in doc["traffic"]:
            table.add_row(
                escape(f"{e['source']} -> {e['target']}"),
                str(e["requests"]),
                f"{e['calls_per_request']:g}",
                f"{round(100 * e['latency_share'])}%",
            )
        console.print(table)
    table = Table(title="advice", title_justify="left", show_lines=True)
    for col in ("advice", "services", "evidence", "action"):
        table.add_column(col, overflow="fold")
    for a in doc["advice"]:
        table.add_row(
            f"[bold]{a['kind']}[/]",
            escape(", ".join(a["services"])),
            escape("\n".join(a["evidence"])),
            escape(a["action"]),
        )
    if doc["advice"]:
        console.print(table)
    else:
        console.print("advice: none; no coupling passes the thresholds", highlight=False)


def _graph_svg(doc: dict[str, Any]) -> str:
    names = [s["name"] for s in doc["services"]]
    n = max(1, len(names))
    size, radius = 520, 190
    pos = {
        name: (
            size / 2 + radius * math.cos(2 * math.pi * i / n - math.pi / 2),
            size / 2 + radius * math.sin(2 * math.pi * i / n - math.pi / 2),
        )
        for i, name in enumerate(names)
    }
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" '
        f'width="{size}" height="{size}" role="img" aria-label="service graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#888"/>'
        "</marker></defs>",
    ]
    for p in doc["pairs"]:
        if p["a"] in pos and p["b"] in pos and p["degree"] >= 10:
            (x1, y1), (x2, y2) = pos[p["a"]], pos[p["b"]]
            width = 1 + p["degree"] / 12
            colour = "#d9480f" if p["significant"] else "#f4a261"
            parts.append(
                f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                f'stroke="{colour}" stroke-opacity="0.7" stroke-width="{width:.1f}">'
                f"<title>{html.escape(p['a'])} ~ {html.escape(p['b'])}: degree "
                f"{p['degree']}%, {p['shared']} shared changes</title></line>"
            )
    declared = {(d.split(" ")[0], d.split(" ")[-1]) for p in doc["pairs"] for d in p["declared"]}
    declared |= {(e["source"], e["target"]) for e in doc["traffic"]}
    traffic = {(e["source"], e["target"]): e for e in doc["traffic"]}
    for src, dst in sorted(declared):
        if src in pos and dst in pos:
            (x1, y1), (x2, y2) = pos[src], pos[dst]
            dx, dy = x2 - x1, y2 - y1
            length = math.hypot(dx, dy) or 1
            x2, y2 = x2 - dx / length * 34, y2 - dy / length * 34
            e = traffic.get((src, dst))
            width = 1 + (min(e["calls_per_request"], 10) if e else 0)
            label = f"{src} -> {dst}" + (f": {e['calls_per_request']:g} calls/request" if e else "")
            parts.append(
                f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                f'stroke="{"#1c7ed6" if e else "#888"}" stroke-width="{width:.1f}" '
                f'stroke-dasharray="{"" if e else "4 3"}" marker-end="url(#arrow)">'
                f"<title>{html.escape(label)}</title></line>"
            )
    for name, (x, y) in pos.items():
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="30" fill="#fff" stroke="#333"/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" font-size="12">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _bars_svg(title: str, rows: list[tuple[str, float]], unit: str = "") -> str:
    if not rows:
        return ""
    top = max(v for _, v in rows) or 1
    height = 22 * len(rows) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 520 {height}" width="520" '
        f'height="{height}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="0" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>'
    ]
    for i, (label, value) in enumerate(rows):
        y = 24 + 22 * i
        width = 300 * value / top
        parts.append(
            f'<text x="150" y="{y + 13}" text-anchor="end" font-size="12">'
            f"{html.escape(label)}</text>"
            f'<rect x="158" y="{y}" width="{width:.1f}" height="16" fill="#4c6ef5"/>'
            f'<text x="{162 + width:.1f}" y="{y + 13}" font-size="12">{value:g}{unit}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def to_html(doc: dict[str, Any]) -> str:
    """One self-contained page: graph, charts, and the advice with its evidence."""
    esc = html.escape
    advice = (
        "".join(
            f"<section class='advice'><h3>{esc(a['kind'])}: {esc(', '.join(a['services']))}</h3>"
            f"<ul>{''.join(f'<li>{esc(e)}</li>' for e in a['evidence'])}</ul>"
            f"<pre>{esc(a['action'])}</pre></section>"
            for a in doc["advice"]
        )
        or "<p>No advice: no coupling passes the thresholds.</p>"
    )
    changes = _bars_svg(
        "changes per service", [(s["name"], s["revisions"]) for s in doc["services"]]
    )
    degrees = _bars_svg(
        "strongest change coupling (degree)",
        [(f"{p['a']} ~ {p['b']}", p["degree"]) for p in doc["pairs"][:12]],
        "%",
    )
    deploys = _bars_svg(
        f"deploys per week (estimate, from {doc['delivery']['source']})",
        [(s["name"], s["deploys_per_week"]) for s in doc["services"]],
    )
    smells = "".join(f"<li>{esc(s['kind'])}: {esc(s['evidence'])}</li>" for s in doc["smells"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>cleave coupling: {esc(doc["app"])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }}
.row {{ display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }}
.advice {{ border-left: 4px solid #4c6ef5; padding: 0 1em; margin: 1em 0; }}
pre {{ background: #f4f4f4; padding: .6em; white-space: pre-wrap; }}
.legend span {{ margin-right: 1.5em; }}
</style></head><body>
<h1>cleave coupling: {esc(doc["app"])}</h1>
<p>{doc["changes"]} changes ({doc["service_changes"]} touching a service) by {doc["authors"]}
author(s) over about {doc["weeks"]:g} weeks, from {esc(", ".join(doc["repos"]))}.
{round(100 * doc["multi_service_share"])}% of the changes touched more than one service.</p>
<h2>Advice</h2>{advice}
<h2>Service graph</h2>
<p class="legend"><span style="color:#d9480f">&#9644; change coupling (width: degree)</span>
<span style="color:#888">&#8594; declared dependency</span>
<span style="color:#1c7ed6">&#8594; traffic (width: calls per request)</span></p>
<div class="row">{_graph_svg(doc)}<div>{changes}{degrees}{deploys}</div></div>
<h2>Structural smells</h2><ul>{smells or "<li>none</li>"}</ul>
</body></html>
"""
