"""`cleave serve` and `cleave gateway`, run as a scheduler would: real processes, a NATS of our own.

Each test starts its processes with the NATS URL in CLEAVE_NATS_URL (no
supervisor, no embedded server) and reads what they log (JSON lines on
stderr): the ready line names the admin port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shopcheck import admin_headers, check_invariants, snapshot

from conftest import ROOT, SHOP, wait_until

pytestmark = [pytest.mark.processes, pytest.mark.nats]

DRAIN = ROOT / "tests" / "apps" / "drain"
START = 120.0  # seconds a process may take to get ready on a loaded 2-core machine


class Served:
    """One `cleave serve` / `cleave gateway` process, its log in a file."""

    def __init__(self, log: Path, *args: object, env: dict[str, str]) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cleave.cli", *map(str, args)],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env={**os.environ, **env},
            )

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"event": line})
        return found

    def said(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.lines() if e.get("event") == event), None)

    def ready(self, timeout: float = START) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.log.read_text()}")
            return self.said("ready")

        note: dict[str, Any] = wait_until(check, timeout)
        return note

    def admin(self, path: str) -> httpx.Response:
        port = (self.said("starting") or {})["admin_port"]
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)

    def exit_code(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {timeout}s:\n{self.log.read_text()}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Any]:
    from cleave.runtime.natsd import EmbeddedNats

    server = EmbeddedNats(tmp_path / "nats", name="cleave_serve_tests")
    server.launch()
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def procs() -> Iterator[list[Served]]:
    """Every process a test starts: killed at the end if still running."""
    started: list[Served] = []
    yield started
    for p in started:
        p.kill()


def _env(tmp_path: Path, url: str) -> dict[str, str]:
    return {"CLEAVE_NATS_URL": url, "CLEAVE_STATE_DIR": str(tmp_path / "state")}


@pytest.mark.slow
def test_the_shop_runs_as_separately_served_groups(
    tmp_path: Path, nats: Any, procs: list[Served]
) -> None:
    """Every group and the gateway started apart, as a scheduler would; orders add up."""
    from cleave.runtime.natsd import free_port

    env = _env(tmp_path, nats.url)
    groups = ["catalog", "inventory", "billing", "shipping", "notifications", "orders"]
    for g in groups:
        procs.append(Served(tmp_path / f"{g}.log", "serve", SHOP, "--group", g, env=env))
    port = free_port()
    gateway = Served(tmp_path / "gateway.log", "gateway", SHOP, "--port", port, env=env)
    procs.append(gateway)
    for p in procs:
        p.ready()
    orders = procs[groups.index("orders")]
    assert orders.admin("/readyz").status_code == 200
    assert "cleave_" in orders.admin("/metrics").text
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers=admin_headers(tmp_path / "state"), timeout=30
    ) as http:
        before = snapshot(http)
        for i, (account, sku) in enumerate([("acc-alice", "KB-01"), ("acc-poor", "GPU-01")] * 2):
            body = {"account_id": account, "items": [{"sku": sku, "qty": 1}]}
            resp = http.post("/v1/orders", json=body, headers={"Idempotency-Key": f"serve-{i}"})
            assert resp.status_code in (201, 202), resp.text
        wait_until(lambda: all(o["status"] != "pending" for o in snapshot(http)["orders"]), 60)
        wait_until(lambda: all(_quiet(p) for p in procs[:-1]), 60, 0.5)
        result = check_invariants(before, snapshot(http), http)
    assert result["confirmed"] >= 2, result
    assert result["cancelled"] >= 2, result
    for p in procs:
        p.proc.send_signal(signal.SIGTERM)
    assert [p.exit_code() for p in procs] == [0] * len(procs)


def _quiet(served: Served) -> bool:
    """No event waits in its outboxes or for its consumers: the shop has settled."""
    status = served.admin("/status").json()
    return not any(status["outbox"].values()) and not any(
        c["pending"] for c in status["consumers"].values()
    )


def test_serve_waits_for_nats_that_comes_late(tmp_path: Path, procs: list[Served]) -> None:
    """Alive (not ready) while NATS is away; ready once it comes; each failed try logged."""
    from cleave.runtime.natsd import EmbeddedNats, free_port

    port = free_port()
    served = Served(
        tmp_path / "slow.log",
        "serve",
        DRAIN,
        "--group",
        "slow",
        env=_env(tmp_path, f"nats://127.0.0.1:{port}"),
    )
    procs.append(served)
    wait_until(lambda: served.said("waiting for NATS"), START)
    assert served.admin("/healthz").status_code == 200
    assert served.admin("/readyz").status_code == 503
    assert "Connect call failed" in served.said("waiting for NATS")["error"]  # type: ignore[index]
    server = EmbeddedNats(tmp_path / "nats", port=port, name="cleave_late")
    server.launch()
    try:
        served.ready()
        assert served.admin("/readyz").status_code == 200
        served.proc.send_signal(signal.SIGTERM)
        assert served.exit_code() == 0
    finally:
        server.shutdown()


def test_serve_gives_up_when_nats_never_comes(tmp_path: Path, procs: list[Served]) -> None:
    from cleave.runtime.natsd import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    env = _env(tmp_path, url)
    served = Served(tmp_path / "s.log", "serve", DRAIN, "-g", "slow", "--wait-nats", "2s", env=env)
    procs.append(served)
    assert served.exit_code() == 1
    tries = [e for e in served.lines() if e.get("event") == "waiting for NATS"]
    assert tries
    assert all("Connect call failed" in e["error"] for e in tries)
    error = served.said("cannot start")
    assert error is not None
    assert f"NATS at {url} did not answer within 2s" in error["error"]


def test_serve_connects_over_tls_with_the_ca_it_is_given(
    tmp_path: Path, procs: list[Served]
) -> None:
    """CLEAVE_NATS_CA (as [nats] ca): verified TLS; without it the server is not trusted."""
    from cleave.runtime.nats_tls import make_certificates, server_block
    from cleave.runtime.natsd import EmbeddedNats

    certs = make_certificates(tmp_path / "tls")
    server = EmbeddedNats(tmp_path / "nats", name="cleave_tls", tls=server_block(certs))
    server.launch()
    try:
        assert server.url.startswith("tls://")
        untrusted = Served(
            tmp_path / "untrusted.log",
            "serve",
            DRAIN,
            *("-g", "slow", "--wait-nats", "1s"),
            env=_env(tmp_path, server.url),
        )
        procs.append(untrusted)
        env = {**_env(tmp_path, server.url), "CLEAVE_NATS_CA": str(certs / "ca.pem")}
        served = Served(tmp_path / "tls.log", "serve", DRAIN, "-g", "slow", env=env)
        procs.append(served)
        assert untrusted.exit_code() == 1
        tried = untrusted.said("waiting for NATS")
        assert tried is not None
        assert "CERTIFICATE_VERIFY_FAILED" in tried["error"]
        served.ready()
        served.proc.send_signal(signal.SIGTERM)
        assert served.exit_code() == 0
    finally:
        server.shutdown()


def _client(nc: Any) -> Any:
    from drain_app import Slow

    from cleave.contracts import spec_of
    from cleave.resilience import ResilienceSettings
    from cleave.runtime.router import Router, make_client
    from cleave.transport.nats import NatsRpcClient

    router = Router(remote=NatsRpcClient(nc), timeout=30, resilience=ResilienceSettings(timeout=30))
    return make_client(spec_of(Slow), router, "test")


@pytest.fixture
def drain_path() -> Iterator[None]:
    sys.path.insert(0, str(DRAIN))
    yield
    sys.path.remove(str(DRAIN))


async def _stream_names(nc: Any) -> list[str]:
    """The names in the Worked events the drain app's stream holds."""
    import msgspec
    from drain_app import Slow

    from cleave.contracts import spec_of

    js = nc.jetstream()
    stream = spec_of(Slow).stream
    info = await js.stream_info(stream)
    names = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        names.append(msgspec.msgpack.decode(msg.data)["name"])
    return names


@pytest.mark.usefixtures("drain_path")
async def test_sigterm_lets_calls_in_flight_finish_and_publishes_their_events(
    tmp_path: Path, nats: Any, procs: list[Served]
) -> None:
    """Readiness drops at once; the calls finish; the events they commit after SIGTERM go out."""
    import asyncio

    from drain_app import Work

    from cleave.transport.nats import connect

    served = Served(
        tmp_path / "slow.log", "serve", DRAIN, "-g", "slow", env=_env(tmp_path, nats.url)
    )
    procs.append(served)
    await asyncio.to_thread(served.ready)
    nc = await connect(nats.url, "test")
    try:
        slow = _client(nc)
        calls = [
            asyncio.ensure_future(slow.work(Work(name=f"w{i}", seconds=3.0))) for i in range(3)
        ]

        def all_in_flight() -> bool:
            return bool(served.admin("/status").json()["in_flight"] == 3)

        await asyncio.to_thread(wait_until, all_in_flight, 30)
        served.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(
            wait_until, lambda: served.admin("/readyz").status_code == 503, 10, 0.02
        )
        done = await asyncio.gather(*calls)
        assert sorted(d.name for d in done) == ["w0", "w1", "w2"]
        assert await asyncio.to_thread(served.exit_code) == 0
        assert served.said("stopped: everything in progress finished, outboxes published")
        assert sorted(await _stream_names(nc)) == ["w0", "w1", "w2"]
    finally:
        await nc.close()


def test_the_gateway_drains_requests_in_flight(
    tmp_path: Path, nats: Any, procs: list[Served]
) -> None:
    """SIGTERM to `cleave gateway` with a request in flight: it is answered, then exit 0."""
    import concurrent.futures

    from cleave.runtime.natsd import free_port

    env, port = _env(tmp_path, nats.url), free_port()
    slow = Served(tmp_path / "slow.log", "serve", DRAIN, "-g", "slow", env=env)
    gateway = Served(tmp_path / "gw.log", "gateway", DRAIN, "--port", port, env=env)
    procs += [slow, gateway]
    slow.ready()
    gateway.ready()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        body = {"name": "via-gateway", "seconds": 3.0}
        url = f"http://127.0.0.1:{port}/work"
        answer = pool.submit(httpx.post, url, json=body, timeout=30)
        wait_until(lambda: slow.admin("/status").json()["in_flight"] == 1, 30)
        gateway.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: gateway.admin("/readyz").status_code == 503, 10, 0.02)
        resp = answer.result(30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "via-gateway"
    assert gateway.exit_code() == 0
    assert gateway.said("stopped: everything in progress finished, outboxes published")
    slow.proc.send_signal(signal.SIGTERM)
    assert slow.exit_code() == 0


@pytest.mark.usefixtures("drain_path")
@pytest.mark.parametrize("how", ["second signal", "grace"])
async def test_work_abandoned_on_a_second_signal_or_after_the_grace_exits_1(
    tmp_path: Path, nats: Any, procs: list[Served], how: str
) -> None:
    import asyncio

    from drain_app import Work

    from cleave.transport.nats import connect

    grace = "60s" if how == "second signal" else "1s"
    env = _env(tmp_path, nats.url)
    served = Served(tmp_path / "s.log", "serve", DRAIN, "-g", "slow", "--grace", grace, env=env)
    procs.append(served)
    await asyncio.to_thread(served.ready)
    nc = await connect(nats.url, "test")
    try:
        call = asyncio.ensure_future(_client(nc).work(Work(name="long", seconds=60.0)))
        await asyncio.to_thread(
            wait_until, lambda: served.admin("/status").json()["in_flight"] == 1, 30
        )
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        if how == "second signal":
            await asyncio.to_thread(wait_until, lambda: served.said("draining"), 10)
            served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(served.exit_code, 30) == 1
        assert time.monotonic() - started < 25  # promptly, not after the call's 60 s
        reason = "a second signal" if how == "second signal" else "the grace of 1s ran out"
        abandoned = [e for e in served.lines() if "abandoning work in progress" in e["event"]]
        assert abandoned
        assert reason in abandoned[0]["event"]
        assert abandoned[0]["calls"] == 1
        call.cancel()
    finally:
        await nc.close()


def test_migrations_off_refuse_a_database_behind_the_code(
    tmp_path: Path, nats: Any, procs: list[Served]
) -> None:
    """[database] migrate = false: `cleave db upgrade` is the step that migrates, then it serves."""
    from conftest import cli

    shop = tmp_path / "shop"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    env = _env(tmp_path, nats.url)
    state = ["--state-dir", tmp_path / "state"]
    cli("db", "upgrade", shop, "--service", "billing", *state)  # at the shop's revision
    versions = shop / "shop" / "migrations" / "billing" / "versions"
    (first,) = [p.stem.split("_")[0] for p in versions.glob("*.py")]
    (versions / "feedc0de0001_add_notes.py").write_text(
        f'"""add notes"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "feedc0de0001"\ndown_revision = "{first}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.create_table("billing_notes", sa.Column("id", sa.Integer, primary_key=True))\n\n\n'
        "def downgrade() -> None:\n"
        '    op.drop_table("billing_notes")\n'
    )
    with open(shop / "cleave.toml", "a") as f:
        f.write("\n[database]\nmigrate = false\n")
    refused = Served(tmp_path / "refused.log", "serve", shop, "-g", "billing", env=env)
    procs.append(refused)
    assert refused.exit_code() == 2
    error = refused.said("cannot start")
    assert error is not None, refused.log.read_text()
    assert (
        f"billing: its database is at revision {first}, behind this code's newest"
        in (error["error"])
    )
    assert "run `cleave db upgrade APP --service billing` first" in error["error"]
    cli("db", "upgrade", shop, "--service", "billing", *state)
    served = Served(tmp_path / "ok.log", "serve", shop, "-g", "billing", "--no-migrate", env=env)
    procs.append(served)
    served.ready()
    served.proc.send_signal(signal.SIGTERM)
    assert served.exit_code() == 0


def test_sqlite_with_several_replicas_is_refused(tmp_path: Path) -> None:
    from conftest import cli

    env = _env(tmp_path, "nats://127.0.0.1:1")
    result = cli("serve", SHOP, "--group", "billing", "--replica", "1", check=False, env=env)
    assert result.returncode == 2
    error = _error(result.stderr)
    assert error.startswith("billing keeps its data in SQLite")
    assert "(--replica 1)" in error
    assert '[services.billing] database = "postgresql+asyncpg://' in error
    shop = tmp_path / "shop"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    with open(shop / "cleave.toml", "a") as f:
        f.write("\n[services.billing]\nreplicas = 2\n")
    result = cli("serve", shop, "--group", "billing", check=False, env=env)
    assert result.returncode == 2
    assert "(2 replicas in cleave.toml)" in _error(result.stderr)


def _error(stderr: str) -> str:
    """The error a process logged when it could not start."""
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "cannot start":
                return str(entry["error"])
    raise AssertionError(f"no error logged:\n{stderr}")
