"""Uses of deprecated methods and events: counted, and logged without flooding the log.

A method, an event or a whole contract major marked
:func:`cleave.deprecated` still works; every use is counted here, per
service, major, method (or event topic) and caller, for the
``cleave_deprecated_calls_total`` counter, and logged as a warning at most
once per :data:`LOG_EVERY` seconds for each of those. The counter answers the
question a retirement needs answered: does anyone still use it?
"""

from __future__ import annotations

import time

import structlog

__all__ = ["LOG_EVERY", "Deprecations", "Usage"]

log = structlog.get_logger("cleave.deprecation")

#: Seconds between two warnings about the same use (the count goes on meanwhile).
LOG_EVERY = 60.0

#: (kind: "method" or "event", service, major, method or event topic, caller or consumer)
Usage = tuple[str, str, int, str, str]


class Deprecations:
    """The uses of deprecated things seen by one host."""

    def __init__(self, log_every: float = LOG_EVERY) -> None:
        self.log_every = log_every
        #: Uses so far, by what was used and by whom.
        self.counts: dict[Usage, int] = {}
        self._logged: dict[Usage, float] = {}

    def record(self, use: Usage, reason: str) -> None:
        """Count one use; warn if this use was not warned about in the last ``log_every`` s."""
        self.counts[use] = self.counts.get(use, 0) + 1
        now = time.monotonic()
        last = self._logged.get(use)
        if last is not None and now - last < self.log_every:
            return
        self._logged[use] = now
        kind, service, major, name, caller = use
        log.warning(
            f"deprecated {kind} used",
            target=f"{service}.v{major}.{name}",
            by=caller or "?",
            reason=reason,
            uses=self.counts[use],
        )
