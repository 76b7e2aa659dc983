"""Structured logs: JSON lines with service, replica, trace and request ids; `cleave logs`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE, Run, Up, cli, wait_until


def first_line(log: Path, **wanted: object) -> dict[str, object] | None:
    """The first JSON line of ``log`` with every ``wanted`` field, if there is one yet."""
    for raw in log.read_text().splitlines():
        line: dict[str, object] = json.loads(raw)
        if all(line.get(k) == v for k, v in wanted.items()):
            return line
    return None


# In a process of its own: configuring structlog here would outlive the test.
ONE_PROCESS = """
import asyncio, contextlib, sys
sys.path.insert(0, sys.argv[1])
import sample_app
from sample_app import Audit, Fail, Greet, Greeter, SetFailures
import cleave
from cleave.runtime.logs import configure
from cleave.testing import Harness

async def main() -> None:
    async with Harness(sample_app.app, sys.argv[2]) as h:
        await h.client(Audit).set_failures(SetFailures(count=1))
        await h.client(Greeter).greet(Greet(name="gil"))
        await h.settle(timeout=15)
        with contextlib.suppress(cleave.RemoteError):
            await h.client(Greeter).fail(Fail(how="crash"))

configure(service="sample", json_lines=True)
asyncio.run(main())
"""


def test_in_one_process_each_line_names_the_service_that_wrote_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, str(SAMPLE), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(raw) for raw in done.stderr.splitlines() if raw[:1] == "{"]
    [retry] = [line for line in lines if line["event"] == "event handler failed; will retry"]
    assert retry["service"] == "audit"  # a consumer's line, outside any call
    [failed] = [line for line in lines if line["event"] == "method failed"]
    assert failed["service"] == "greeter"  # inside a call made from outside the services
    assert failed["request_id"]
    assert failed["trace_id"]
    assert "KeyError: 'secret-internal-detail'" in failed["exception"]


@pytest.mark.processes
@pytest.mark.nats
def test_logs_are_json_lines_with_ids_and_cleave_logs_merges_them(tmp_path: Path) -> None:
    up = Up(SAMPLE, tmp_path).start()
    try:
        resp = httpx.post(f"{up.url}/fail", json={"how": "not_found"})
        assert resp.status_code == 404
        trace_id = resp.headers["traceparent"].split("-")[1]

        gateway_log = tmp_path / "logs" / "gateway.0.log"
        line = wait_until(lambda: first_line(gateway_log, event="request", status=404), timeout=10)
        assert line["service"] == "gateway"
        assert line["replica"] == 0
        assert line["trace_id"] == trace_id
        assert line["request_id"] == resp.headers["x-request-id"]
        assert line["level"] == "info"

        bug = httpx.post(f"{up.url}/fail", json={"how": "crash"})
        assert bug.status_code >= 500
        bug_trace = bug.headers["traceparent"].split("-")[1]

        greeter_log = tmp_path / "logs" / "greeter.0.log"
        failed = wait_until(lambda: first_line(greeter_log, event="method failed"), timeout=10)
        assert failed["service"] == "greeter"
        assert failed["trace_id"] == bug_trace
        assert "KeyError: 'secret-internal-detail'" in str(failed["exception"])

        out = cli("logs", SAMPLE, "--state-dir", tmp_path).stdout
        assert "worker ready" in out
        assert "greeter.0" in out
        assert "audit.0" in out
        assert f"trace_id={trace_id}" in out
        only = cli("logs", "greeter", SAMPLE, "--state-dir", tmp_path).stdout
        assert "greeter.0" in only
        assert "audit.0" not in only
        bad = cli("logs", "ghost", "--app", SAMPLE, "--state-dir", tmp_path, check=False)
        assert bad.returncode == 2
        assert "no service 'ghost'" in bad.stderr
    finally:
        up.stop()


@pytest.mark.processes
@pytest.mark.nats
def test_the_monolith_logs_json_lines_at_info_when_not_on_a_terminal(tmp_path: Path) -> None:
    run = Run(SAMPLE, tmp_path).start()
    try:
        resp = httpx.post(f"{run.url}/fail", json={"how": "not_found"})
        assert resp.status_code == 404
        bug = httpx.post(f"{run.url}/fail", json={"how": "crash"})
    finally:
        run.stop()
    lines = [
        json.loads(raw) for raw in run.proc.stdout.read().decode().splitlines() if raw[:1] == "{"
    ]
    requests = [line for line in lines if line.get("event") == "request"]
    request = next(line for line in requests if line["status"] == 404)
    assert request["service"] == "gateway"  # one process, but each line names its writer
    assert request["request_id"] == resp.headers["x-request-id"]
    assert request["trace_id"] == resp.headers["traceparent"].split("-")[1]
    assert not [line for line in lines if line.get("level") == "debug"]
    [failed] = [line for line in lines if line.get("event") == "method failed"]
    assert failed["service"] == "greeter"
    assert failed["method"] == "greeter.fail"
    assert failed["level"] == "error"
    assert failed["trace_id"] == bug.headers["traceparent"].split("-")[1]
    assert "KeyError: 'secret-internal-detail'" in failed["exception"]  # the service keeps it
