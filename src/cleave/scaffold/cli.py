"""The ``cleave new`` and ``cleave add`` commands (registered in :mod:`cleave.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cleave.errors import CleaveError

__all__ = ["add", "new"]

console = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def new(
    path: Annotated[Path, typer.Argument(help="The new project's folder (absent or empty).")],
    name: Annotated[
        str | None,
        typer.Option("--name", help="The package and app name (default: the folder's name)."),
    ] = None,
) -> None:
    """Create a project: an app with two services, their contracts, a gateway and tests.

    Example: cleave new myshop
    """
    from cleave.scaffold import new_project

    try:
        package, _ = new_project(path, name)
    except CleaveError as exc:
        _fail(str(exc))
        return
    console.print(f"created [bold]{package}[/] in {path}", highlight=False)
    console.print(
        f"  cd {path}\n"
        "  python -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'\n"
        "  cleave run .          # then: curl localhost:8000/hello/Ada\n"
        "  pytest                # every test in both placements",
        highlight=False,
        markup=False,
    )


add = typer.Typer(help="Add to an app made by `cleave new`.", no_args_is_help=True)


@add.command("service")
def add_service(
    name: Annotated[str, typer.Argument(help="The service's name, e.g. orders.")],
    path: Annotated[
        str | None,
        typer.Argument(help="The app's folder (default: found from the current folder)."),
    ] = None,
) -> None:
    """Add a service: its contract, database, migrations folder and a test; register it.

    Example: cleave add service payments myshop
    """
    from cleave.app import find_root
    from cleave.scaffold.service import add_service as add_one

    try:
        root = find_root(path)
        added = add_one(root, name)
    except CleaveError as exc:
        _fail(str(exc))
        return
    for file in added.files:
        console.print(f"  wrote {file.relative_to(root)}", highlight=False, soft_wrap=True)
    if added.registered:
        console.print(f"added service [bold]{name}[/] to the app", highlight=False)
    else:
        err.print(
            f"[yellow]add it to the app by hand:[/] {escape(added.by_hand)}",
            highlight=False,
            soft_wrap=True,
        )
