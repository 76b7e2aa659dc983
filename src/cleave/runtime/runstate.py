"""The files a running ``cleave up`` keeps in ``.cleave/run``: its lock and its state.

- ``supervisor.lock`` (:class:`RunLock`) is held with ``flock`` while a
  supervisor runs, so a second ``cleave up`` of the same app stops at once
  with a clear error; the kernel lets go of it when the supervisor dies.
- ``supervisor.json`` (:func:`write`) says where the supervisor runs: its
  pid and status, its control port, the gateway, dashboard and NATS URLs (a
  cluster's, comma-separated; each node, with its monitoring URL and pid,
  under ``nats_nodes``) and its children's pids. ``cleave ps`` and ``cleave down`` read it through
  :mod:`cleave.runtime.control`, which owns the file itself.
"""

from __future__ import annotations

import fcntl
import os
from typing import IO, TYPE_CHECKING

from cleave.config import mask_url
from cleave.errors import ConfigError
from cleave.runtime import control

if TYPE_CHECKING:
    from cleave.app import LoadedApp
    from cleave.runtime.supervisor import Supervisor

__all__ = ["RunLock", "write"]


class RunLock:
    """The lock that lets one ``cleave up`` of an app run at a time."""

    def __init__(self, loaded: LoadedApp) -> None:
        self.loaded = loaded
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or fail saying which supervisor holds it and how to stop it."""
        self.loaded.run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.loaded.run_dir / "supervisor.lock", "a+")  # noqa: SIM115 - held open
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            state = control.read_state(self.loaded)
            pid = f" (pid {state['pid']})" if state else ""
            raise ConfigError(
                f"{self.loaded.app.name} is already up{pid}; `cleave down {self.loaded.root}` first"
            ) from None
        self._file = lock

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def write(sup: Supervisor, status: str) -> None:
    """Record ``sup`` in ``supervisor.json``; nothing until its control API listens."""
    if sup.control is None:
        return
    children = [c.pid for c in sup.children if c.pid is not None]
    if sup.nats is not None and sup.nats.pid is not None:
        children.append(sup.nats.pid)
    nodes = sup.cluster.describe() if sup.cluster is not None else []
    children += [n["pid"] for n in nodes if n["pid"] is not None]
    control.write_state(
        sup.loaded,
        {
            "pid": os.getpid(),
            "app": sup.loaded.app.name,
            "status": status,
            "control_port": sup.control.port,
            "gateway_url": sup.gateway_url,
            "dashboard_url": sup.dashboard_url,
            # Comma-separated for a cluster; an external URL may hold a password.
            "nats_url": mask_url(sup.nats_url),
            "nats_nodes": nodes,
            "started_at": sup.started_at,
            "children": children,
        },
    )
