"""The control plane's door: token, Host, Origin and content type, and NATS from outside."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cleave.errors import DefinitionError, Unavailable
from cleave.runtime.guard import Guard, make_token, read_token
from conftest import SAMPLE, Up, cli

TOKEN = "t0ken"


def guarded() -> httpx.AsyncClient:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/act", ok, methods=["GET", "POST"])])
    transport = httpx.ASGITransport(app=Guard(app, TOKEN, ["devbox.lan"]))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001")


async def test_reads_need_only_a_loopback_host() -> None:
    async with guarded() as http:
        assert (await http.get("/act")).status_code == 200
        assert (await http.get("/act", headers={"host": "localhost:8001"})).status_code == 200
        assert (await http.get("/act", headers={"host": "[::1]:8001"})).status_code == 200
        assert (await http.get("/act", headers={"host": "devbox.lan:8001"})).status_code == 200
        rebound = await http.get("/act", headers={"host": "attacker.example:8001"})
        assert rebound.status_code == 403
        assert "DNS rebinding" in rebound.json()["error"]["message"]


async def test_a_change_needs_the_token_json_and_no_foreign_origin() -> None:
    good = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    async with guarded() as http:
        assert (await http.post("/act", json={}, headers=good)).status_code == 200
        other = {"x-cleave-token": TOKEN, "origin": "http://127.0.0.1:8001"}
        assert (await http.post("/act", json={}, headers=other)).status_code == 200

        missing = await http.post("/act", json={})
        assert missing.status_code == 401
        assert ".cleave/run/control-token" in missing.json()["error"]["message"]
        wrong = await http.post("/act", json={}, headers={"x-cleave-token": "guess"})
        assert wrong.status_code == 401

        cross = await http.post("/act", json={}, headers={**good, "origin": "http://evil.example"})
        assert cross.status_code == 403
        assert "cross-origin" in cross.json()["error"]["message"]

        form = await http.post(
            "/act", content=b"a=1", headers={**good, "content-type": "text/plain"}
        )
        assert form.status_code == 415
        rebound = await http.post("/act", json={}, headers={**good, "host": "evil.example"})
        assert rebound.status_code == 403


def test_the_token_is_private_and_new_per_run(tmp_path: Path) -> None:
    first = make_token(tmp_path)
    assert stat.S_IMODE((tmp_path / "control-token").stat().st_mode) == 0o600
    assert read_token(tmp_path) == first
    assert make_token(tmp_path) != first
    assert read_token(tmp_path / "nowhere") == ""


# -- a real `cleave up` ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up(SAMPLE, tmp_path_factory.mktemp("guarded-up")).start()
    try:
        yield running
    finally:
        running.stop()


def state_of(up: Up) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((up.state_dir / "run" / "supervisor.json").read_text())
    return state


@pytest.mark.processes
@pytest.mark.nats
def test_a_cross_origin_post_to_the_control_api_is_refused(up: Up) -> None:
    control = f"http://127.0.0.1:{state_of(up)['control_port']}"
    token = read_token(up.state_dir / "run")
    assert stat.S_IMODE((up.state_dir / "run" / "control-token").stat().st_mode) == 0o600
    # What a web page of another site can send: no token, its own Origin, a "simple" body.
    for headers in (
        {"origin": "http://evil.example", "content-type": "text/plain"},
        {"origin": "http://evil.example", "content-type": "application/json"},
        {"origin": "http://evil.example", "authorization": f"Bearer {token}"},
    ):
        resp = httpx.post(f"{control}/api/down", content=b"{}", headers=headers)
        assert resp.status_code in (401, 403, 415), resp.text
        replay = httpx.post(f"{control}/api/dead-letters/replay", content=b"{}", headers=headers)
        assert replay.status_code in (401, 403, 415)
    assert httpx.post(f"{control}/api/down", json={}).status_code == 401  # no token
    assert httpx.get(f"{control}/api/ps").status_code == 200  # reading needs none
    page = httpx.get(f"{control}/").text
    assert f'content="{token}"' in page  # the dashboard's own page has it
    assert httpx.get(f"{control}/", headers={"host": "evil.example"}).status_code == 403
    assert all(row["status"] == "ready" for row in up.ps())  # still up


@pytest.mark.processes
@pytest.mark.nats
def test_a_workers_faults_endpoint_needs_the_token(up: Up) -> None:
    greeter = next(r for r in up.ps() if r["service"] == "greeter")
    url = f"http://127.0.0.1:{greeter['admin_port']}"
    body = {"service": "greeter", "latency": 0.5}
    assert httpx.post(f"{url}/faults", json=body).status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200
    # The CLI has the token: chaos goes through the supervisor to the worker.
    cli("chaos", "latency", "greeter", "0", "--app", SAMPLE, "--state-dir", up.state_dir)


@pytest.mark.processes
@pytest.mark.nats
async def test_the_embedded_nats_wants_credentials_and_scopes_them(up: Up) -> None:
    from sample_app import Audit, Names

    from cleave.context import CallContext
    from cleave.contracts import method_of
    from cleave.runtime.nats_auth import read_identity
    from cleave.transport.nats import NatsRpcClient, connect

    url = state_of(up)["nats_url"]
    with pytest.raises(Unavailable, match="refused"):
        await connect(url, "outsider")
    front = read_identity(up.state_dir / "nats-auth" / "front.json")
    nc = await connect(
        url,
        "borrowed-front",
        user=front.user,
        password=front.password,
        inbox_prefix=front.inbox_prefix,
    )
    try:
        import time

        names = method_of(Audit.names)
        with pytest.raises(DefinitionError, match="declares no use of audit"):
            await NatsRpcClient(nc).call(names, Names(), CallContext(time.time() + 5, "r", "x"))
    finally:
        await nc.close()
