"""`cleave scale`, `deploy`, `chaos` and the health checks on the sample app."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE, Up, cli, wait_until

pytestmark = [pytest.mark.processes, pytest.mark.nats]


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the sample app with quick health checks."""
    folder = tmp_path_factory.mktemp("sample-ops") / "sample"
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    toml = folder / "cleave.toml"
    toml.write_text(toml.read_text() + "\n[health]\ninterval = 0.5\ntimeout = 0.5\nfailures = 3\n")
    return folder


@pytest.fixture(scope="module")
def up(app_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up(app_dir, tmp_path_factory.mktemp("ops-state")).start()
    try:
        yield running
    finally:
        running.stop()


def rows(up: Up, service: str) -> list[dict[str, object]]:
    return [r for r in up.ps() if r["service"] == service]


def test_scale_adds_and_drains_replicas(up: Up) -> None:
    out = cli("scale", "greeter=3", up.app_dir, "--state-dir", up.state_dir).stdout
    assert "greeter: 3 replica(s) (+2 -0)" in out
    assert sorted(r["replica"] for r in rows(up, "greeter")) == [0, 1, 2]
    assert all(r["status"] == "ready" for r in rows(up, "greeter"))
    out = cli("scale", "greeter=1", up.app_dir, "--state-dir", up.state_dir).stdout
    assert "(+0 -2)" in out
    assert [r["replica"] for r in rows(up, "greeter")] == [0]
    assert httpx.post(f"{up.url}/greet", json={"name": "x"}).status_code == 201


def test_deploy_replaces_workers_and_reports_the_new_code(up: Up) -> None:
    before = rows(up, "greeter")[0]
    (up.app_dir / "sample_app.py").write_text(
        (up.app_dir / "sample_app.py").read_text() + "\n# a change\n"
    )
    out = cli("deploy", "greeter", up.app_dir, "--state-dir", up.state_dir).stdout
    after = rows(up, "greeter")[0]
    assert after["pid"] != before["pid"]
    assert after["version"] != before["version"]
    assert str(after["version"]).startswith("1.2.3+")
    assert f"{before['version']} -> {after['version']}" in out
    assert after["generation"] == int(str(before["generation"])) + 1


def test_chaos_faults_reach_the_worker_and_clear(up: Up) -> None:
    cli("chaos", "latency", "greeter", "0.3", up.app_dir, "--state-dir", up.state_dir)
    resp = httpx.post(f"{up.url}/greet", json={"name": "slow"})
    assert resp.elapsed.total_seconds() >= 0.3
    status = json.loads(cli("status", up.app_dir, "--json", "--state-dir", up.state_dir).stdout)
    assert status["greeter.0"]["faults"]["greeter"]["latency"] == 0.3
    cli("chaos", "fail", "greeter", "1", up.app_dir, "--state-dir", up.state_dir)
    assert httpx.post(f"{up.url}/greet", json={"name": "x"}).status_code == 503
    cli("chaos", "clear", "greeter", up.app_dir, "--state-dir", up.state_dir)
    resp = httpx.post(f"{up.url}/greet", json={"name": "fast"})
    assert (resp.status_code, resp.elapsed.total_seconds() < 0.3) == (201, True)


def test_pause_and_resume(up: Up) -> None:
    cli("chaos", "pause", "audit", up.app_dir, "--state-dir", up.state_dir)
    assert rows(up, "audit")[0]["status"] == "paused"
    paused_pid = rows(up, "audit")[0]["pid"]
    time.sleep(2.5)  # longer than the health checks' patience: a chaos pause is left alone
    assert rows(up, "audit")[0]["pid"] == paused_pid
    cli("chaos", "resume", "audit", up.app_dir, "--state-dir", up.state_dir)
    assert rows(up, "audit")[0]["status"] == "ready"
    assert httpx.get(f"{up.url}/audit").status_code == 200


def test_an_unresponsive_worker_is_replaced(up: Up) -> None:
    before = rows(up, "front")[0]
    os.kill(int(str(before["pid"])), signal.SIGSTOP)  # stuck, but not by `cleave chaos`

    def replaced() -> bool:
        row = rows(up, "front")[0]
        return row["pid"] != before["pid"] and row["status"] == "ready"

    wait_until(replaced, timeout=30)
    assert httpx.get(f"{up.url}/hello", params={"name": "z"}).status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scale", "ghost=2"], "has no service 'ghost'"),
        (["scale", "greeter"], "expected SERVICE=N"),
        (["scale", "greeter=99"], "between 0 and 64"),
        (["scale", "gateway=2"], "runs one process"),
        (["chaos", "melt", "greeter"], "unknown chaos action 'melt'"),
        (["chaos", "latency", "greeter"], "needs a value"),
        (["deploy", "ghost"], "has no service 'ghost'"),
    ],
)
def test_operations_explain_mistakes(up: Up, args: list[str], message: str) -> None:
    app = [str(up.app_dir)]
    result = cli(*args, *app, "--state-dir", up.state_dir, check=False)
    assert result.returncode != 0
    assert message in result.stderr
