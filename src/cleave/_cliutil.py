"""What every ``cleave`` command shares: consoles, progress, one-line errors, argument sense.

- Output to a terminal is sized to it; piped output is never cut to 80
  columns (a table is as wide as its content), so ``cleave ps | less`` and
  ``grep`` see whole rows.
- A long operation shows a spinner, on a terminal only: a pipe or a log file
  gets the outcome lines, not animation frames.
- An error that escapes a command is one line saying what happened and what
  to do; ``--debug`` (before the command) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = [
    "chaos_table",
    "console_for",
    "pop_app",
    "progress",
    "run_main",
    "split_app",
]

#: Set by the global ``--debug`` option: show tracebacks.
debug = False

_PIPED_WIDTH = 10_000


def console_for(stream: Any) -> Console:
    """A console for ``stream`` (stdout or stderr): the terminal's width, or no limit if piped."""
    stderr = stream is sys.stderr
    if stream.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=_PIPED_WIDTH)


@contextlib.contextmanager
def progress(console: Console, text: str) -> Iterator[None]:
    """A spinner saying ``text`` while the block runs, on a terminal; nothing otherwise."""
    if not console.is_terminal:
        yield
        return
    with console.status(text, spinner="dots"):
        yield


def split_app(first: str | None, second: str | None) -> tuple[str | None, str | None]:
    """(app folder, other) from two optional positionals given in either order.

    ``cleave logs examples/shop``, ``cleave logs orders`` and ``cleave logs
    orders examples/shop`` all make sense: the argument that is a folder (or
    a path) is the app.
    """

    if _is_app(first) and not _is_app(second):
        return first, second
    return second, first


def pop_app(ids: list[str] | None) -> tuple[str | None, list[str] | None]:
    """(app folder, the rest) from ids given with the folder among them (``dlq replay``)."""
    rest = list(ids or [])
    folders = [i for i in rest if _is_app(i)]
    if not folders:
        return None, ids
    rest.remove(folders[0])
    return folders[0], rest or None


def _is_app(text: str | None) -> bool:
    return text is not None and ("/" in text or text in (".", "..") or Path(text).is_dir())


def chaos_table(app_name: str, action: str, service: str, result: dict[str, Any]) -> Table:
    """What a chaos action did, one row per worker it touched."""
    table = Table(title=f"{app_name}: chaos {action} {service}", title_justify="left")
    for col in ("worker", "done"):
        table.add_column(col)
    if "killed" in result:
        table.add_row(str(result["killed"]), f"[red]killed[/] (pid {result['pid']})")
    elif action in result:
        for label in result[action]:
            table.add_row(str(label), "[magenta]paused[/]" if action == "pause" else "resumed")
    else:
        faults = result.get("faults", {})
        active = ", ".join(f"{k} {v:g}" for k, v in faults.items() if v) or "none (cleared)"
        for label in result.get("workers", {}):
            table.add_row(str(label), f"faults on {escape(service)}: {active}")
    return table


def run_main(app: Callable[[], Any], err: Console) -> None:
    """Run the Typer app; an unexpected error is one line, or a traceback with ``--debug``."""
    try:
        app()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if debug or "--debug" in sys.argv[1:]:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        err.print(
            f"[red]error:[/] {escape(what)} (unexpected; `cleave --debug ...` shows the "
            "traceback: please report it with that)",
            soft_wrap=True,
            highlight=False,
        )
        raise SystemExit(1) from None
