"""What an operator does to a running ``cleave up``: scale, deploy, chaos.

``cleave scale``, ``cleave deploy`` and ``cleave chaos`` reach these through
the supervisor's control API (:mod:`cleave.runtime.control`). Scale adds or
drains a group's replicas; deploy replaces a group's processes one replica at
a time, the new one ready before the old one drains; chaos kills, pauses or
resumes workers, or asks them (on their admin ports) to inject faults. One
scale or deploy runs at a time.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import TYPE_CHECKING, Any

from cleave.errors import ConfigError, LifecycleError
from cleave.faults import chaos_faults
from cleave.runtime.children import Child

if TYPE_CHECKING:
    from cleave.runtime.supervisor import Supervisor

__all__ = ["Operations"]


class Operations:
    """Scale, deploy and chaos on the worker processes of ``sup``."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._ops = asyncio.Lock()  # one scale or deploy at a time

    def group_of(self, service: str) -> str:
        """The service group that runs ``service`` (``gateway`` for the gateway)."""
        loaded = self.sup.loaded
        if service == "gateway" and self.sup.workers.listen_sock is not None:
            return "gateway"
        for group, members in loaded.groups().items():
            if service in members:
                return group
        raise ConfigError(
            f"app {loaded.app.name} has no service {service!r} "
            f"(services: {', '.join(loaded.app.services)})"
        )

    async def scale(self, service: str, replicas: int) -> dict[str, Any]:
        """Run ``replicas`` processes of ``service``'s group, adding or draining workers."""
        if not 0 <= replicas <= 64:
            raise ConfigError(f"replicas must be between 0 and 64, got {replicas}")
        group = self.group_of(service)
        if group == "gateway":
            raise ConfigError("the gateway runs one process; deploy it instead of scaling it")
        workers = self.sup.workers
        async with self._ops:
            current = workers.live(group)
            have = {c.replica for c in current}
            members = self.sup.loaded.groups()[group]
            added = [Child("service", group, r, members) for r in range(replicas) if r not in have]
            await asyncio.gather(*(workers.start(c) for c in added))
            retired = [c for c in current if c.replica >= replicas]
            await asyncio.gather(*(workers.retire(c) for c in retired))
        self.sup._say(f"scaled {group} to {replicas} (+{len(added)} -{len(retired)})")
        return {"group": group, "replicas": replicas, "added": len(added), "removed": len(retired)}

    async def deploy(self, service: str) -> dict[str, Any]:
        """Replace ``service``'s group processes one replica at a time, new before old."""
        group = self.group_of(service)
        workers = self.sup.workers
        async with self._ops:
            replaced = []
            for old in workers.live(group):
                new = Child(old.role, old.group, old.replica, old.services, old.generation + 1)
                try:
                    await workers.start(new)
                except LifecycleError as exc:
                    raise LifecycleError(
                        f"deploy of {group} stopped: replica {old.replica} did not get ready "
                        f"({exc}); the old workers keep running"
                    ) from None
                await workers.retire(old)  # drains: in-flight calls finish, events are settled
                replaced.append({"replica": old.replica, "old": old.version, "new": new.version})
        self.sup._say(f"deployed {group}: {len(replaced)} replica(s) replaced")
        return {"group": group, "replaced": replaced}

    async def chaos(
        self, action: str, service: str, replica: int | None, value: float | None
    ) -> dict[str, Any]:
        """Hurt ``service`` on purpose: kill, pause, resume, or inject faults."""
        group = self.group_of(service)
        targets = [
            c for c in self.sup.workers.live(group) if replica is None or c.replica == replica
        ]
        if not targets:
            raise LifecycleError(f"no running replica {replica} of {group}")
        if action == "kill":
            victim = targets[0] if replica is not None else random.choice(targets)
            if victim.pid is None:
                raise LifecycleError(f"{victim.label} has no process right now")
            os.kill(victim.pid, signal.SIGKILL)
            return {"killed": victim.label, "pid": victim.pid}
        if action in ("pause", "resume"):
            sig = signal.SIGSTOP if action == "pause" else signal.SIGCONT
            for c in targets:
                if c.pid is not None:
                    os.kill(c.pid, sig)
                    c.paused = action == "pause"
                    c.status = "paused" if c.paused else "ready"
            return {action: [c.label for c in targets]}
        faults = chaos_faults(action, value)
        answers = {}
        for c in targets:
            if c.admin_port is None:
                continue
            resp = await self.sup.admin_http.post(
                f"http://127.0.0.1:{c.admin_port}/faults", json={"service": service, **faults}
            )
            if resp.status_code != 200:
                raise LifecycleError(f"{c.label} refused the faults: {resp.text}")
            answers[c.label] = resp.json()
        return {"faults": faults, "workers": answers}
