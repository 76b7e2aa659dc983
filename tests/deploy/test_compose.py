"""`cleave build --target compose`: the compose-spec schema, and the init script on PostgreSQL."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_support import built, grouped_shop, lock, run, tool  # noqa: F401 - fixtures

from conftest import cli


@pytest.fixture(scope="module")
def composed(grouped_shop: Path, lock: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compose") / "out"
    cli("build", grouped_shop, "--target", "compose", "--out", out, "--lock", lock)
    return out


def services(out: Path) -> dict[str, Any]:
    return yaml.safe_load((out / "compose.yaml").read_text())["services"]


def test_the_compose_file_meets_the_compose_spec(composed: Path) -> None:
    run(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        composed / "compose.yaml",
    )


def test_a_nats_cluster_of_three_with_jetstream_on_volumes(composed: Path) -> None:
    found = services(composed)
    for node in ("nats-1", "nats-2", "nats-3"):
        command = found[node]["command"]
        assert "--jetstream" in command
        routes = command[command.index("--routes") + 1].split(",")
        assert routes == ["nats://nats-1:6222", "nats://nats-2:6222", "nats://nats-3:6222"]
        assert found[node]["volumes"] == [f"{node}-data:/data"]
        assert "healthcheck" in found[node]


def test_groups_wait_for_nats_and_their_migrations(composed: Path) -> None:
    found = services(composed)
    checkout = found["checkout"]
    assert checkout["command"] == ["serve", "/app", "--group", "checkout", "--admin-port", "8001"]
    assert checkout["depends_on"]["migrate-orders"] == {
        "condition": "service_completed_successfully"
    }
    assert checkout["depends_on"]["nats-2"] == {"condition": "service_healthy"}
    assert "migrate-catalog" not in checkout["depends_on"]
    assert found["migrate-orders"]["command"] == ["db", "upgrade", "/app", "--service", "orders"]
    assert found["migrate-orders"]["restart"] == "no"
    gateway = ["gateway", "/app", "--port", "8000", "--admin-port", "8001"]
    assert found["gateway"]["command"] == gateway
    assert checkout["environment"]["CLEAVE_GRACE"] == "15s"
    assert checkout["stop_grace_period"] == "25s"
    url = checkout["environment"]["CLEAVE_DATABASE_URL_BILLING"]
    assert url.startswith("postgresql+asyncpg://postgres:${POSTGRES_PASSWORD:?")
    assert url.endswith("@postgres:5432/shop_billing")
    assert all("healthcheck" in found[name] for name in ("checkout", "gateway", "postgres"))


@pytest.mark.postgres
async def test_the_init_script_makes_one_database_per_service(composed: Path) -> None:
    """Run it on the real PostgreSQL, under a unique prefix, then drop what it made."""
    import asyncpg

    prefix = f"t{uuid.uuid4().hex[:8]}_"
    script = (composed / "postgres" / "init.sql").read_text().replace('"shop_', f'"{prefix}shop_')
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    made: list[str] = []
    try:
        for statement in filter(str.strip, script.split(";")):
            await conn.execute(statement)
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"
        )
        made = sorted(r["datname"] for r in rows)
        services = ["billing", "catalog", "inventory", "notifications", "orders", "shipping"]
        assert made == [f"{prefix}shop_{s}" for s in services]
    finally:
        for name in made:
            await conn.execute(f'DROP DATABASE "{name}"')
        await conn.close()


def test_the_nats_nodes_form_a_jetstream_cluster(composed: Path, tmp_path: Path) -> None:
    """The compose file's own nats-server command lines, run for real on loopback.

    Each container has its own address there; here each node gets its own free ports
    instead (the only change), and the three must elect a JetStream meta leader.
    """
    from cleave.runtime.natsd import find_binary, free_port

    nodes = ["nats-1", "nats-2", "nats-3"]
    found = services(composed)
    ports = {n: {"client": free_port(), "route": free_port(), "http": free_port()} for n in nodes}
    procs = []
    try:
        for node in nodes:
            args = list(found[node]["command"])
            p = ports[node]
            args[args.index("--store_dir") + 1] = str(tmp_path / node)
            args[args.index("--cluster") + 1] = f"nats://127.0.0.1:{p['route']}"
            routes = args[args.index("--routes") + 1]
            for other in nodes:
                routes = routes.replace(f"{other}:6222", f"127.0.0.1:{ports[other]['route']}")
            args[args.index("--routes") + 1] = routes
            args[args.index("--http_port") + 1] = str(p["http"])
            args += ["-a", "127.0.0.1", "-p", str(p["client"])]
            procs.append(
                subprocess.Popen(
                    [find_binary(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        deadline = time.monotonic() + 60
        sizes: dict[str, int] = {}
        while time.monotonic() < deadline:
            sizes = {}
            for node in nodes:
                with contextlib.suppress(httpx.HTTPError):
                    base = f"http://127.0.0.1:{ports[node]['http']}"
                    # The compose healthcheck's URL, then the cluster as this node sees it.
                    health = httpx.get(base + "/healthz?js-enabled-only=true", timeout=2)
                    meta = httpx.get(base + "/jsz", timeout=2).json().get("meta_cluster", {})
                    if health.status_code == 200 and meta.get("leader"):
                        sizes[node] = meta.get("cluster_size", 0)
            if len(sizes) == 3 and set(sizes.values()) == {3}:
                break
            time.sleep(0.5)
        assert sizes == {"nats-1": 3, "nats-2": 3, "nats-3": 3}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
