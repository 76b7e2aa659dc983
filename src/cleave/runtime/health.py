"""The supervisor's health checks: a worker that stops answering is replaced.

Every ``interval`` seconds each ready worker's ``/healthz`` is asked, with a
``timeout``; after ``failures`` misses in a row the worker is killed and the
supervisor restarts it as after any crash. A worker paused on purpose
(``cleave chaos pause``) is left alone until it is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import TYPE_CHECKING

import httpx

from cleave._aio import cancel_and_wait

if TYPE_CHECKING:
    from cleave.runtime.supervisor import Child, Supervisor

__all__ = ["HealthMonitor"]


class HealthMonitor:
    def __init__(
        self,
        supervisor: Supervisor,
        *,
        interval: float = 2.0,
        timeout: float = 1.0,
        failures: int = 5,
    ) -> None:
        self.supervisor = supervisor
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self.replaced = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        client = self.supervisor.admin_http
        while True:
            await asyncio.sleep(self.interval)
            children = [
                c
                for c in self.supervisor.children
                if c.status == "ready"
                and not c.paused
                and not c.stopping
                and c.admin_port is not None
            ]
            await asyncio.gather(*(self._check(client, c) for c in children))

    async def _check(self, client: httpx.AsyncClient, child: Child) -> None:
        try:
            resp = await client.get(
                f"http://127.0.0.1:{child.admin_port}/healthz", timeout=self.timeout
            )
            healthy = resp.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy:
            child.health_failures = 0
            return
        child.health_failures += 1
        if child.health_failures >= self.failures and child.pid is not None:
            self.supervisor._say(
                f"[red]{child.label} missed {self.failures} health checks; replacing it[/]"
            )
            child.health_failures = 0
            self.replaced += 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
