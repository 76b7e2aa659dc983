"""The operations commands against a running ``cleave run``: ps, status, logs, down, chaos.

``cleave run`` records itself in ``.cleave/run/supervisor.json`` as ``cleave
up`` does (its pid, the control port, the gateway and dashboard URLs, its log
folder, ``"placement": "monolith"``), with the run's control token beside it,
and serves :func:`cleave.runtime.control.control_app` on its dashboard's
port, answered by :class:`MonolithOps`. So ``cleave ps``, ``status``,
``down`` and ``chaos`` find and reach either placement the same way; ``scale``
and ``deploy`` say plainly that one process cannot do them. The run lock is
shared too: a ``cleave run`` and a ``cleave up`` of one app (one data
folder) never run at once. On exit the state file and token go.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from cleave.errors import ConfigError, LifecycleError
from cleave.faults import Faults, chaos_faults
from cleave.runtime import control
from cleave.runtime.guard import token_path

if TYPE_CHECKING:
    from cleave.app import LoadedApp
    from cleave.runtime.host import Host
    from cleave.runtime.natscluster import EmbeddedCluster

__all__ = ["MonolithOps", "log_dir"]


def log_dir(loaded: LoadedApp) -> Path:
    """Where ``cleave run`` writes its JSON log lines (``cleave up``'s go one level up)."""
    return loaded.state_dir / "logs" / "monolith"


class MonolithOps:
    """What the control API asks of a running monolith (the supervisor's interface)."""

    def __init__(self, loaded: LoadedApp, host: Host, stop: asyncio.Event, version: str) -> None:
        self.loaded = loaded
        self.host = host
        self.stop = stop
        self.version = version
        self.started_at = time.time()
        self._status = "running"
        self.gateway_url = ""
        self.dashboard_url = ""
        self.nats_url = ""
        self.cluster: EmbeddedCluster | None = None  # a monolith runs no NATS

    def processes(self) -> list[dict[str, Any]]:
        names = [*self.host.names, *(["gateway"] if self.loaded.app.gateway else [])]
        uptime = round(time.time() - self.started_at, 1)
        return [
            {
                "service": name,
                "replica": 0,
                "pid": os.getpid(),
                "group": "monolith",
                "status": "ready" if self._status == "running" else self._status,
                "uptime_s": uptime,
                "restarts": 0,
                "version": self.version,
            }
            for name in names
        ]

    async def status(self) -> dict[str, Any]:
        return {"monolith": await self.host.status()}

    def request_stop(self) -> None:
        self._status = "stopping"
        self.stop.set()

    async def scale(self, service: str, replicas: int) -> dict[str, Any]:
        raise LifecycleError(
            f"{self.loaded.app.name} runs as a monolith (`cleave run`): one process, nothing to "
            f"scale; run it with `cleave up {self.loaded.root}` to scale {service}"
        )

    async def deploy(self, service: str) -> dict[str, Any]:
        raise LifecycleError(
            f"{self.loaded.app.name} runs as a monolith (`cleave run`): restart it to deploy "
            f"{service}, or run it with `cleave up {self.loaded.root}` for rolling deploys"
        )

    async def chaos(
        self, action: str, service: str, replica: int | None, value: float | None
    ) -> dict[str, Any]:
        """Faults on one service of the monolith; killing or pausing needs processes."""
        if action in ("kill", "pause", "resume"):
            raise LifecycleError(
                f"chaos {action} stops a process, and the monolith is one: run the app with "
                f"`cleave up {self.loaded.root}`, or use latency, drop or fail here"
            )
        faults = chaos_faults(action, value)
        try:
            chosen = msgspec.convert(faults, Faults)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"chaos {action} {value}: {exc}") from None
        self.host.inject(service, chosen)
        return {"faults": faults, "workers": {"monolith": {"service": service, **faults}}}

    def write_state(self, log_file: Path) -> None:
        control.write_state(
            self.loaded,
            {
                "pid": os.getpid(),
                "app": self.loaded.app.name,
                "placement": "monolith",
                "status": self._status,
                "control_port": int(self.dashboard_url.rsplit(":", 1)[1].split("/")[0]),
                "gateway_url": self.gateway_url,
                "dashboard_url": self.dashboard_url,
                "log_file": str(log_file),
                "started_at": self.started_at,
                "children": [],
            },
        )

    def clear_state(self) -> None:
        control.state_path(self.loaded).unlink(missing_ok=True)
        token_path(self.loaded.run_dir).unlink(missing_ok=True)
