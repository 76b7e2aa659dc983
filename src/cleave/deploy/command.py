"""The ``cleave build`` command line (registered in :mod:`cleave.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cleave.errors import CleaveError

__all__ = ["build_command"]

console = Console()
err = Console(stderr=True)


def build_command(
    path: Annotated[
        str | None,
        typer.Argument(help="The app's folder (default: found from the current folder)."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="kubernetes, compose or github."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="An empty folder to write.")
    ] = None,
    overlay: Annotated[
        str | None, typer.Option(help="kubernetes: write only this overlay (dev or prod).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace what --out holds.")] = False,
    lock: Annotated[
        Path | None,
        typer.Option(help="A requirements lock with --hash lines to use (default: uv makes one)."),
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(
            "--check",
            help="Only check manifests already written (a folder, or `kubectl kustomize` output).",
        ),
    ] = None,
) -> None:
    """Write deployment artifacts: Kubernetes manifests, a compose file, or CI workflows.

    Every target is checked first: PDBs, distinct probes, grace periods that cover
    the handlers, ack waits longer than the handlers.

    Example: cleave build examples/shop --target kubernetes --out deploy/
    """
    from cleave.app import load
    from cleave.deploy import checks
    from cleave.deploy.build import build

    try:
        if check is not None:
            if target is not None or out is not None:
                raise typer.BadParameter("--check takes no --target or --out")
            count = checks.check_dir(check)
            console.print(
                f"{check}: {count} Deployment(s) pass the checks", highlight=False, soft_wrap=True
            )
            return
        if target is None or out is None:
            raise typer.BadParameter(
                "give --target (kubernetes, compose or github) and --out DIR, or --check DIR"
            )
        loaded = load(path)
        written = build(loaded, target, out, overlay=overlay, force=force, lock=lock)
    except CleaveError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(
        f"{loaded.app.name}: wrote {len(written)} files for {target} in {out}", highlight=False
    )
