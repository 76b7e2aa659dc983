"""What a deployment needs to know of an app, read once from the app and its plan.

Every target (Kubernetes, compose, GitHub Actions) renders from a :class:`Deployment`,
so they agree on names, ports, commands and timeouts. The numbers that must hold
together (grace periods, handler timeouts, ack waits) are computed here, in one place.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cleave.app import LoadedApp
from cleave.config import Plan
from cleave.transport.base import ConsumerPolicy

__all__ = [
    "Deployment",
    "Group",
    "consumer_policy",
    "drain_seconds",
    "grace_period",
    "handler_timeout",
]

#: Where the app lives in the image; every command names it.
APP_DIR = "/app"
#: Seconds a pod keeps serving after it is told to stop, while endpoints and
#: load balancers stop sending it work (Kubernetes removes endpoints asynchronously).
PRE_STOP = 5
#: Seconds of slack on top of the longest handler, for closing connections.
SLACK = 5


def consumer_policy(plan: Plan) -> ConsumerPolicy:
    """The consumer policy a worker runs its subscriptions with (see ``Host``)."""
    return ConsumerPolicy(ack_wait=plan.runtime.event_timeout + 5.0)


def handler_timeout(plan: Plan) -> float:
    """The longest a handler of any service may run: a call, or an event handler."""
    return max(plan.runtime.timeout, plan.runtime.event_timeout)


def drain_seconds(plan: Plan) -> int:
    """``cleave serve --grace``: work in progress on SIGTERM gets the longest handler, and slack."""
    return math.ceil(handler_timeout(plan)) + SLACK


def grace_period(plan: Plan) -> int:
    """terminationGracePeriodSeconds: preStop, then the drain, then slack before SIGKILL."""
    return PRE_STOP + drain_seconds(plan) + SLACK


def dns_name(text: str) -> str:
    """``text`` as an RFC 1123 label: Kubernetes and compose names."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"


def env_name(service: str) -> str:
    """The environment variable holding ``service``'s database URL."""
    return "CLEAVE_DATABASE_URL_" + re.sub(r"[^A-Z0-9]+", "_", service.upper())


@dataclass(frozen=True)
class Group:
    """One service group: one Deployment (or compose service) of ``cleave serve``."""

    name: str
    services: tuple[str, ...]
    replicas: int
    #: Services of the group that own a database.
    databases: tuple[str, ...]
    subscribes: bool

    @property
    def slug(self) -> str:
        return dns_name(self.name)


@dataclass(frozen=True)
class Deployment:
    """The app as the deploy targets see it."""

    app: str
    version: str
    root: Path
    plan: Plan
    groups: tuple[Group, ...]
    #: Services with a database, in start order.
    databases: tuple[str, ...]
    #: Folders (relative to the repository root given) holding each service's code.
    folders: dict[str, tuple[str, ...]] = field(default_factory=dict)
    gateway: bool = True

    @property
    def slug(self) -> str:
        return dns_name(self.app)

    @property
    def image(self) -> str:
        return f"{self.slug}:{self.version}"

    @property
    def admin_port(self) -> int:
        return self.plan.observability.admin_port or 8001

    @property
    def gateway_port(self) -> int:
        return self.plan.gateway.port or 8000

    @property
    def grace(self) -> int:
        return grace_period(self.plan)

    @property
    def drain(self) -> int:
        return drain_seconds(self.plan)

    def database_name(self, service: str) -> str:
        return f"{self.app}_{service}".lower().replace("-", "_")

    @classmethod
    def of(cls, loaded: LoadedApp) -> Deployment:
        app, plan = loaded.app, loaded.plan
        groups = []
        with_db = [n for n in app.start_order() if app.services[n].database]
        for name, members in loaded.groups().items():
            specs = [app.services[m] for m in members]
            groups.append(
                Group(
                    name=name,
                    services=members,
                    replicas=max(plan.service(m).replicas for m in members),
                    databases=tuple(m for m in members if m in with_db),
                    subscribes=any(s.subscriptions for s in specs),
                )
            )
        folders = {name: _paths_of(loaded, name) for name in app.services}
        return cls(
            app=plan.app.name or app.name,
            version=plan.app.version,
            root=loaded.root,
            plan=plan,
            groups=tuple(groups),
            databases=tuple(with_db),
            folders=folders,
            gateway=app.gateway is not None,
        )


def _paths_of(loaded: LoadedApp, service: str) -> tuple[str, ...]:
    """Files and folders (relative to the app's folder) whose change touches ``service``."""
    spec = loaded.app.services[service]
    found: list[str] = []
    for obj in (spec.cls, *(c.cls for c in spec.contracts)):
        module = sys.modules.get(obj.__module__)
        source = getattr(module, "__file__", None)
        if source is None:
            continue
        path = Path(source).resolve()
        if path.name == "__init__.py":
            path = path.parent
        with contextlib.suppress(ValueError):
            found.append(path.relative_to(loaded.root).as_posix())
    declared = getattr(spec.cls, spec.database) if spec.database else None
    migrations = getattr(declared, "migrations", None)
    if migrations is not None:
        with contextlib.suppress(ValueError):
            found.append(Path(migrations).resolve().relative_to(loaded.root).as_posix())
    return tuple(dict.fromkeys(found))
