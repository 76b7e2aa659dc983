"""The `cleave` command's own behaviour: help, bad arguments, the monolith."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE, SHOP, Run, cli, processes_of


def test_help_lists_the_commands() -> None:
    out = cli("--help").stdout
    for command in ("run", "up", "ps", "down"):
        assert command in out


def test_a_missing_app_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("run", tmp_path / "nope", check=False)
    assert result.returncode == 2
    assert "no such directory" in result.stderr


def test_an_app_that_does_not_import_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cleave.toml").write_text('[app]\ntarget = "broken:app"\n')
    (tmp_path / "broken.py").write_text("import cleave\napp = 'not an app'\n")
    result = cli("run", tmp_path, check=False)
    assert result.returncode == 2
    assert "broken:app is not a cleave.App" in result.stderr


def test_ps_with_nothing_running(tmp_path: Path) -> None:
    result = cli("ps", SAMPLE, "--state-dir", tmp_path, check=False)
    assert result.returncode == 1
    assert "no `cleave up` or `cleave run` is running for app sample" in result.stderr


def test_run_serves_the_monolith_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    run = Run(SAMPLE, tmp_path).start()
    try:
        resp = httpx.post(f"{run.url}/greet", json={"name": "mono"})
        assert resp.status_code == 201
        assert resp.json()["caller"] == "gateway"
    finally:
        run.stop()
    assert run.proc.returncode == 0
    assert processes_of(tmp_path) == []


def test_run_with_a_busy_port(tmp_path: Path) -> None:
    first = Run(SAMPLE, tmp_path / "a").start()
    try:
        result = cli(
            "run", SAMPLE, "--port", first.port, "--state-dir", tmp_path / "b", check=False
        )
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{first.port}" in result.stderr
    finally:
        first.stop()


@pytest.mark.processes
@pytest.mark.nats
def test_up_in_the_foreground_stops_on_sigint(tmp_path: Path) -> None:
    from cleave.runtime.natsd import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cleave.cli",
            "up",
            str(SHOP),
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "is up" in line:
            break
    assert f"http://127.0.0.1:{port}" in "".join(lines), "".join(lines)
    assert httpx.get(f"http://127.0.0.1:{port}/v1/products").status_code == 200
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    assert processes_of(tmp_path) == []


def test_db_current_never_shows_a_database_password(tmp_path: Path) -> None:
    # The password comes from the environment (${VAR}) and is masked where it is shown.
    url = "postgresql+asyncpg://shop:s3cret-pw@127.0.0.1:1/shop_{service}"
    env = {"CLEAVE_DATABASE_URL": url, "COLUMNS": "250"}  # a wide table: no wrapped URL
    result = cli("db", "current", SHOP, "--state-dir", tmp_path, env=env, check=False)
    out = result.stdout + result.stderr
    assert "s3cret-pw" not in out
    assert "shop:***@127.0.0.1" in out
