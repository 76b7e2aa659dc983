"""The plan a deployed worker reads: the app's cleave.toml, made fit for a cluster.

Secrets never reach it: database URLs become ``${CLEAVE_DATABASE_URL_<SERVICE>}``,
filled from a Secret at run time; the NATS address and files come from
``CLEAVE_NATS_URL``, ``CLEAVE_NATS_CA`` and ``CLEAVE_NATS_CREDENTIALS``. Migrations
run once, in their own Job (or compose service), so workers do not run them.
"""

from __future__ import annotations

import tomllib
from typing import Any

import tomli_w

from cleave.config import DatabaseSettings
from cleave.deploy.model import Deployment, env_name

__all__ = ["render"]


def render(dep: Deployment) -> str:
    path = dep.root / "cleave.toml"
    raw: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    raw.setdefault("app", {}).setdefault("name", dep.app)
    # Reachable from other pods: the gateway listens on every address of its pod.
    raw.setdefault("gateway", {})["host"] = "0.0.0.0"
    nats = raw.setdefault("nats", {})
    for key in ("url", "binary", "port", "auth", "ca", "cert", "key", "credentials"):
        nats.pop(key, None)
    database = raw.setdefault("database", {})
    database.pop("url", None)
    if "migrate" in DatabaseSettings.__struct_fields__:  # the runtime's switch, where it has one
        database["migrate"] = False
    services = raw.setdefault("services", {})
    for name in dep.databases:
        services.setdefault(name, {})["database"] = f"${{{env_name(name)}:-}}"
    header = (
        f"# The plan of {dep.app} {dep.version} as deployed: written by `cleave build`.\n"
        "# Database URLs and NATS credentials come from Secrets, through the environment.\n"
    )
    return header + tomli_w.dumps(raw)
