"""Structured logs: JSON lines with service, replica, trace and request ids; `cleave logs`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE, Run, Up, cli, wait_until

pytestmark = [pytest.mark.processes, pytest.mark.nats]


def test_logs_are_json_lines_with_ids_and_cleave_logs_merges_them(tmp_path: Path) -> None:
    up = Up(SAMPLE, tmp_path).start()
    try:
        resp = httpx.post(f"{up.url}/fail", json={"how": "not_found"})
        assert resp.status_code == 404
        trace_id = resp.headers["traceparent"].split("-")[1]

        def gateway_line() -> dict[str, object] | None:
            for raw in (tmp_path / "logs" / "gateway.0.log").read_text().splitlines():
                line = json.loads(raw)
                if line.get("event") == "request" and line.get("status") == 404:
                    return line  # type: ignore[no-any-return]
            return None

        line = wait_until(gateway_line, timeout=10)
        assert line["service"] == "gateway"
        assert line["replica"] == 0
        assert line["trace_id"] == trace_id
        assert line["request_id"] == resp.headers["x-request-id"]
        assert line["level"] == "info"

        out = cli("logs", "--app", SAMPLE, "--state-dir", tmp_path).stdout
        assert "worker ready" in out
        assert "greeter.0" in out
        assert "audit.0" in out
        assert f"trace_id={trace_id}" in out
        only = cli("logs", "greeter", "--app", SAMPLE, "--state-dir", tmp_path).stdout
        assert "greeter.0" in only
        assert "audit.0" not in only
        bad = cli("logs", "ghost", "--app", SAMPLE, "--state-dir", tmp_path, check=False)
        assert bad.returncode == 2
        assert "no service 'ghost'" in bad.stderr
    finally:
        up.stop()


def test_the_monolith_logs_json_lines_at_info_when_not_on_a_terminal(tmp_path: Path) -> None:
    run = Run(SAMPLE, tmp_path).start()
    try:
        resp = httpx.post(f"{run.url}/fail", json={"how": "not_found"})
        assert resp.status_code == 404
    finally:
        run.stop()
    lines = [
        json.loads(raw) for raw in run.proc.stdout.read().decode().splitlines() if raw[:1] == "{"
    ]
    [request] = [line for line in lines if line.get("event") == "request"]
    assert request["service"] == "sample"  # the process is the whole app
    assert request["status"] == 404
    assert request["request_id"] == resp.headers["x-request-id"]
    assert request["trace_id"] == resp.headers["traceparent"].split("-")[1]
    assert not [line for line in lines if line.get("level") == "debug"]
