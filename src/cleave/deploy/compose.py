"""compose.yaml: the whole app on one machine, the way a cluster runs it.

A three-node NATS cluster with JetStream on volumes, PostgreSQL with one database
per service (created by an init script), a one-shot migration per database that
every worker waits for (``service_completed_successfully``), every group under
``cleave serve`` and the gateway, each with a healthcheck. Containers run read-only
as the image's numeric user, with a tmpfs for the app's state.

The PostgreSQL password comes from the environment (``POSTGRES_PASSWORD``, e.g. an
``.env`` file next to compose.yaml); compose stops with a message when it is unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cleave.deploy import _yaml, planfile
from cleave.deploy.model import APP_DIR, Deployment, env_name

__all__ = ["render"]

NATS_IMAGE = "nats:2.11.4-alpine"
POSTGRES_IMAGE = "postgres:16.4-bookworm"
NODES = ("nats-1", "nats-2", "nats-3")
_PASSWORD = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD, e.g. in .env next to compose.yaml}"


def _nats(node: str) -> dict[str, Any]:
    routes = ",".join(f"nats://{n}:6222" for n in NODES)
    return {
        "image": NATS_IMAGE,
        "command": [
            "--name",
            node,
            "--jetstream",
            "--store_dir",
            "/data",
            "--cluster_name",
            "cleave",
            "--cluster",
            "nats://0.0.0.0:6222",
            "--routes",
            routes,
            "--http_port",
            "8222",
        ],
        "volumes": [f"{node}-data:/data"],
        "healthcheck": {
            "test": [
                "CMD",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8222/healthz?js-enabled-only=true",
            ],
            "interval": "5s",
            "timeout": "3s",
            "retries": 20,
        },
        "restart": "unless-stopped",
    }


def _served(port: int, grace: int) -> dict[str, Any]:
    """What every long-running Cleave container shares: ready when /readyz says so, drained."""
    return {
        "healthcheck": {
            "test": _python_probe(port, "/readyz"),
            "interval": "5s",
            "timeout": "3s",
            "retries": 12,
        },
        "stop_grace_period": f"{grace}s",
        "restart": "unless-stopped",
    }


def _python_probe(port: int, path: str) -> list[str]:
    code = (
        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=2)"
    )
    return ["CMD", "python", "-c", code]


def _cleave(dep: Deployment, command: list[str], databases: tuple[str, ...]) -> dict[str, Any]:
    env = {
        "CLEAVE_NATS_URL": ",".join(f"nats://{n}:4222" for n in NODES),
        "CLEAVE_STATE_DIR": "/tmp/cleave",
        "CLEAVE_ADMIN_HOST": "0.0.0.0",
        "CLEAVE_GRACE": f"{dep.drain}s",
    }
    for service in databases:
        env[env_name(service)] = (
            f"postgresql+asyncpg://postgres:{_PASSWORD}@postgres:5432/{dep.database_name(service)}"
        )
    return {
        "image": dep.image,
        "build": {"context": "./image"},
        "command": command,
        "environment": env,
        "volumes": [
            {
                "type": "bind",
                "source": "./cleave.toml",
                "target": f"{APP_DIR}/cleave.toml",
                "read_only": True,
            }
        ],
        "read_only": True,
        "tmpfs": ["/tmp"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
    }


def render(dep: Deployment, out: Path) -> None:
    (out / "cleave.toml").write_text(planfile.render(dep))
    init = out / "postgres" / "init.sql"
    init.parent.mkdir(parents=True, exist_ok=True)
    init.write_text(
        "-- One database per service: written by `cleave build`.\n"
        + "".join(f'CREATE DATABASE "{dep.database_name(s)}";\n' for s in dep.databases)
    )
    services: dict[str, Any] = {node: _nats(node) for node in NODES}
    nats_ready = {node: {"condition": "service_healthy"} for node in NODES}
    services["postgres"] = {
        "image": POSTGRES_IMAGE,
        "environment": {"POSTGRES_PASSWORD": _PASSWORD},
        "volumes": [
            "postgres-data:/var/lib/postgresql/data",
            "./postgres/init.sql:/docker-entrypoint-initdb.d/init.sql:ro",
        ],
        "healthcheck": {
            "test": ["CMD", "pg_isready", "-U", "postgres"],
            "interval": "5s",
            "timeout": "3s",
            "retries": 20,
        },
        "restart": "unless-stopped",
    }
    migrated = {}
    for service in dep.databases:
        name = f"migrate-{service}".replace("_", "-")
        services[name] = {
            **_cleave(dep, ["db", "upgrade", APP_DIR, "--service", service], (service,)),
            "depends_on": {"postgres": {"condition": "service_healthy"}},
            "restart": "no",
        }
        migrated[name] = {"condition": "service_completed_successfully"}
    port = dep.admin_port
    for group in dep.groups:
        command = ["serve", APP_DIR, "--group", group.name, "--admin-port", str(port)]
        services[group.slug] = {
            **_cleave(dep, command, group.databases),
            "depends_on": {
                **nats_ready,
                **{
                    f"migrate-{s}".replace("_", "-"): migrated[f"migrate-{s}".replace("_", "-")]
                    for s in group.databases
                },
            },
            **_served(port, dep.grace),
        }
    if dep.gateway:
        gport = dep.gateway_port
        services["gateway"] = {
            **_cleave(
                dep, ["gateway", APP_DIR, "--port", str(gport), "--admin-port", str(port)], ()
            ),
            "ports": [f"{gport}:{gport}"],
            "depends_on": {
                **nats_ready,
                **{g.slug: {"condition": "service_healthy"} for g in dep.groups},
            },
            **_served(port, dep.grace),
        }
    volumes: dict[str, Any] = {f"{n}-data": {} for n in NODES}
    volumes["postgres-data"] = {}
    _yaml.write(
        out / "compose.yaml",
        {"name": dep.slug, "services": services, "volumes": volumes},
        header=(
            f"{dep.app} {dep.version} on one machine: written by `cleave build --target compose`.\n"
            "POSTGRES_PASSWORD=... docker compose up --build"
        ),
    )
