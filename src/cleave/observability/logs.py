"""Reading the workers' logs: merged, filtered, readable (``cleave logs``).

Workers write one JSON object per line to ``.cleave/logs/<group>.<replica>.log``
(structlog: ``timestamp``, ``level``, ``event``, ``service``, ``replica`` and,
inside a call, ``request_id`` and ``trace_id``). Lines that are not JSON
(a traceback printed by a crashing interpreter) are shown as they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.text import Text

__all__ = ["LogLine", "follow", "format_line", "read"]

_LEVEL_STYLE = {
    "debug": "dim",
    "info": "cyan",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold red",
    "exception": "bold red",
}
_SHOWN_FIRST = ("service", "replica", "timestamp", "level", "event")


class LogLine:
    __slots__ = ("fields", "raw", "source", "when")

    def __init__(self, source: str, raw: str) -> None:
        self.source = source
        self.raw = raw.rstrip("\n")
        try:
            parsed = json.loads(self.raw)
        except ValueError:
            parsed = None
        self.fields: dict[str, Any] | None = parsed if isinstance(parsed, dict) else None
        self.when = str(self.fields.get("timestamp", "")) if self.fields else ""

    def matches(self, service: str | None) -> bool:
        if service is None:
            return True
        if self.fields and self.fields.get("service") == service:
            return True
        return self.source.split(".")[0] == service


def _files(logs_dir: Path) -> list[Path]:
    return sorted(logs_dir.glob("*.log"))


def read(logs_dir: Path, service: str | None = None, tail: int = 200) -> list[LogLine]:
    """The last ``tail`` lines of every log, merged by time."""
    lines: list[LogLine] = []
    for path in _files(logs_dir):
        with open(path, errors="replace") as f:
            for raw in f.readlines()[-tail * 4 :]:
                line = LogLine(path.stem, raw)
                if raw.strip() and line.matches(service):
                    lines.append(line)
    lines.sort(key=lambda ln: ln.when)
    return lines[-tail:]


def follow(logs_dir: Path, service: str | None = None, interval: float = 0.3) -> Iterator[LogLine]:
    """New lines of every log as they are written (new log files included)."""
    offsets = {p: p.stat().st_size for p in _files(logs_dir)}
    while True:
        found = False
        for path in _files(logs_dir):
            start = offsets.get(path, 0)
            size = path.stat().st_size
            if size < start:
                start = 0  # rotated or truncated
            if size > start:
                with open(path, errors="replace") as f:
                    f.seek(start)
                    chunk = f.read()
                offsets[path] = start + len(chunk.encode())
                for raw in chunk.splitlines():
                    line = LogLine(path.stem, raw)
                    if raw.strip() and line.matches(service):
                        found = True
                        yield line
        if not found:
            time.sleep(interval)


def format_line(line: LogLine) -> Text:
    """One line for a terminal: time, worker, level, message, then the other fields."""
    text = Text()
    if line.fields is None:
        text.append(f"{'':12} {line.source:<16} ", style="dim")
        text.append(line.raw)
        return text
    f = line.fields
    when = line.when[11:23] if len(line.when) >= 23 else line.when
    level = str(f.get("level", "info"))
    text.append(f"{when:<12} ", style="dim")
    text.append(f"{f.get('service', '?')}.{f.get('replica', 0):<4} ".ljust(17), style="bold")
    text.append(f"{level:<8} ", style=_LEVEL_STYLE.get(level, ""))
    text.append(str(f.get("event", "")))
    for key, value in f.items():
        if key not in _SHOWN_FIRST:
            text.append(f" {key}=", style="dim")
            text.append(str(value), style="magenta" if key in ("trace_id", "request_id") else "")
    return text
