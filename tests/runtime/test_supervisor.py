"""`cleave up`, `ps`, `down` with real processes, signals and ports."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE, Up, cli, processes_of, wait_until

pytestmark = [pytest.mark.processes, pytest.mark.nats]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up(SAMPLE, tmp_path_factory.mktemp("sample-up")).start()
    try:
        yield running
    finally:
        running.stop()


def test_ps_lists_every_service_process(up: Up) -> None:
    rows = up.ps()
    assert {r["service"] for r in rows} == {"greeter", "front", "audit", "gateway"}
    for row in rows:
        assert row["status"] == "ready"
        assert row["pid"] > 0
        assert row["group"] == row["service"]
        assert row["replica"] == 0
        assert str(row["version"]).startswith("1.2.3+")  # app version + code digest
    table = cli("ps", SAMPLE, "--state-dir", up.state_dir).stdout
    assert "greeter" in table
    assert "ready" in table


def test_the_gateway_answers_over_nats(up: Up) -> None:
    resp = httpx.post(f"{up.url}/greet", json={"name": "ann"})
    assert resp.status_code == 201
    assert resp.json()["caller"] == "gateway"
    assert httpx.get(f"{up.url}/hello", params={"name": "bo"}).json()["text"] == "hello bo"


def test_a_killed_worker_is_restarted_and_the_app_keeps_answering(up: Up) -> None:
    before = {r["service"]: r for r in up.ps()}
    os.kill(before["greeter"]["pid"], signal.SIGKILL)

    def restarted() -> bool:
        row = {r["service"]: r for r in up.ps()}["greeter"]
        return row["status"] == "ready" and row["pid"] != before["greeter"]["pid"]

    wait_until(restarted, timeout=30)
    after = {r["service"]: r for r in up.ps()}
    assert after["greeter"]["restarts"] == before["greeter"]["restarts"] + 1
    assert after["greeter"]["last_exit"] == -signal.SIGKILL
    assert after["front"]["pid"] == before["front"]["pid"]  # the others were left alone
    assert httpx.post(f"{up.url}/greet", json={"name": "again"}).status_code == 201


def test_a_second_up_is_refused(up: Up) -> None:
    result = cli("up", SAMPLE, "--detach", "--state-dir", up.state_dir, check=False)
    assert result.returncode != 0
    assert "already up" in result.stdout + result.stderr


def test_a_busy_port_is_a_clear_error(up: Up, tmp_path: Path) -> None:
    result = cli("up", SAMPLE, "--detach", "--port", up.port, "--state-dir", tmp_path, check=False)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{up.port}" in result.stdout + result.stderr
    assert processes_of(tmp_path) == []


def test_down_leaves_no_process_behind(tmp_path: Path) -> None:
    run = Up(SAMPLE, tmp_path).start()
    assert len(processes_of(tmp_path)) >= 5  # supervisor, nats, 3 workers, gateway
    run.stop()
    assert processes_of(tmp_path) == []
    result = cli("ps", SAMPLE, "--state-dir", tmp_path, check=False)
    assert result.returncode == 1
    assert "no `cleave up` or `cleave run` is running" in result.stderr
    assert "was not running" in cli("down", SAMPLE, "--state-dir", tmp_path).stdout


def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    run = Up(SAMPLE, tmp_path).start()
    import json

    state = json.loads((tmp_path / "run" / "supervisor.json").read_text())
    os.kill(state["pid"], signal.SIGKILL)
    wait_until(lambda: processes_of(tmp_path) == [], timeout=30)
    del run
