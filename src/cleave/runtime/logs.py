"""Structured logs: one JSON object per line in workers, readable colour in a terminal.

Every line carries the service and replica that wrote it, and the request and
trace ids of the call being handled when there is one. A process that runs
several services (the monolith, or a group) names the one at work: the call
context says which service handles the call, and background work (outbox
relays, consumers, sagas) logs through a logger bound to its service.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from cleave.context import current

__all__ = ["configure"]


def _add_call_context(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ctx = current()
    if ctx is not None:
        if ctx.service:
            event["service"] = ctx.service  # in a process of several services, the one at work
        event.setdefault("request_id", ctx.request_id)
        if ctx.traceparent:
            parts = ctx.traceparent.split("-")
            if len(parts) >= 3:
                event.setdefault("trace_id", parts[1])
    return event


class _Tee:
    """A processor that also appends each event, as a JSON line, to a file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        self.file.write(json.dumps(event, default=str) + "\n")
        return event


def configure(
    *,
    service: str,
    replica: int = 0,
    json_lines: bool | None = None,
    level: int = logging.INFO,
    also_to: Path | None = None,
) -> None:
    """Set up structlog (and the stdlib logging it feeds) for this process.

    ``also_to``: a file that gets every line as JSON too (``cleave run``'s, for ``cleave logs``).
    """
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_call_context,
            structlog.processors.format_exc_info,
            *([_Tee(also_to)] if also_to is not None else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service, replica=replica)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
