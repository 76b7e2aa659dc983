"""``cleave coupling``: read the app and its history, measure, advise, report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cleave.app import load
from cleave.errors import CleaveError, ConfigError

__all__ = ["coupling", "run"]


def run(
    path: str | None,
    repos: list[Path],
    since: str | None,
    traces: Path | None,
) -> dict[str, Any]:
    """The whole analysis as the JSON document (what ``--json`` prints)."""
    from cleave.coupling.advice import advise
    from cleave.coupling.analysis import analyse
    from cleave.coupling.changes import group_changes
    from cleave.coupling.history import (
        Commit,
        open_repo,
        parse_date,
        read_commits,
        release_times,
    )
    from cleave.coupling.layout import layout_of
    from cleave.coupling.report import to_json
    from cleave.coupling.structure import topology_of
    from cleave.coupling.traffic import edge_traffic, per_call_costs, read_spans

    start = parse_date(since) if since else None
    loaded = load(path)
    root = loaded.root.resolve()
    opened = [open_repo(Path(r)) for r in (repos or [root])]
    app_repo = next((r for r in opened if root.is_relative_to(r.top)), None)
    prefix = ""
    if app_repo is not None:
        rel = root.relative_to(app_repo.top).as_posix()
        prefix = "" if rel == "." else rel + "/"
    layout = layout_of(loaded, app_repo.name if app_repo else "\0", prefix)
    topology = topology_of(loaded)
    settings = loaded.plan.coupling
    commits: list[Commit] = []
    for repo in opened:
        commits += read_commits(repo, start)
    changes = group_changes(
        commits,
        ticket=settings.ticket,
        window_hours=settings.window_hours,
        max_changeset=settings.max_changeset,
        keep=lambda f: layout.service_of(*f) is not None,
    )
    source, points = release_times(app_repo or opened[0])
    spans = read_spans(traces) if traces is not None else None
    analysis = analyse(
        changes,
        layout,
        topology,
        settings,
        releases=[when for when, _ in points if start is None or when >= start],
        delivery_source=source,
        traffic=edge_traffic(spans) if spans is not None else None,
        costs=per_call_costs() if spans is not None else None,
    )
    if spans is not None and not analysis.traffic:
        raise ConfigError(
            f"--traces {traces}: no calls between services in it (a call is a client span whose "
            "child is a server span of another service); record traces under `cleave up`"
        )
    meta = {
        "app": loaded.app.name,
        "repos": [str(r.top) for r in opened],
        "since": since,
        "commits": len(commits),
    }
    return to_json(analysis, advise(analysis), meta)


def coupling(
    path: Annotated[
        str | None,
        typer.Argument(
            metavar="APP", help="The app's folder (default: found from the current folder)."
        ),
    ] = None,
    repo: Annotated[
        list[Path] | None,
        typer.Option(
            "--repo", metavar="PATH", help="A git work tree to read (repeat; default: the app's)."
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only history from this date (ISO, e.g. 2026-01-31).")
    ] = None,
    traces: Annotated[
        Path | None,
        typer.Option(help="Recorded traces: the dashboard's export, or OTLP JSON."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")
    ] = None,
) -> None:
    """When to split and when to merge services, measured from history, structure and traffic.

    Example: cleave coupling examples/shop --json
    """
    err = Console(stderr=True, soft_wrap=True)
    try:
        doc = run(path, repo or [], since, traces)
    except CleaveError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if html_out is not None:
        from cleave.coupling.report import to_html

        try:
            html_out.write_text(to_html(doc))
        except OSError as exc:
            err.print(f"[red]error:[/] --html {html_out}: cannot write it ({exc.strerror})")
            raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    from cleave.coupling.report import to_terminal

    to_terminal(doc, Console())
    if html_out is not None:
        Console().print(f"wrote {html_out}", highlight=False)
