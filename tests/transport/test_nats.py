"""What only the NATS transport does: no responders, bad payloads, micro discovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import nats
import pytest
import sample_app
from sample_app import Greet, Greeter

import cleave
from cleave.contracts import spec_of
from cleave.testing import NatsHarness
from cleave.transport.nats import subject_for

pytestmark = pytest.mark.nats


@pytest.fixture
async def split(nats_url: str, tmp_path: Path) -> Any:
    async with NatsHarness(sample_app.app, nats_url, tmp_path) as h:
        yield h


async def gather(nc: Any, subject: str, wait: float = 0.5) -> list[dict[str, Any]]:
    """Send a request and collect every answer (the micro protocol's fan-out)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    answers = []
    try:
        while True:
            msg = await sub.next_msg(timeout=wait)
            answers.append(json.loads(msg.data))
    except nats.errors.TimeoutError:
        pass
    await sub.unsubscribe()
    return answers


async def test_no_responder_is_unavailable_at_once(nats_url: str, tmp_path: Path) -> None:
    async with NatsHarness(sample_app.app, nats_url, tmp_path, groups={"front": ["front"]}) as h:
        with pytest.raises(cleave.Unavailable, match="no replica of greeter is running"):
            await asyncio.wait_for(h.client(Greeter).greet(Greet(name="x")), 1.0)


async def test_a_bad_payload_is_an_invalid_argument(split: Any, nc: Any) -> None:
    subject = subject_for(split.prefix, "cleave.rpc.greeter.v1.greet")
    msg = await nc.request(subject, b"\x93 not an envelope", timeout=2)
    assert b"InvalidArgument" in msg.data
    assert b"bad request for greeter.greet" in msg.data


async def test_an_unknown_method_is_an_invalid_argument(split: Any, nc: Any) -> None:
    subject = subject_for(split.prefix, "cleave.rpc.greeter.v1.nope")
    msg = await nc.request(subject, b"", timeout=2)
    assert b"has no method 'nope'" in msg.data


async def test_services_answer_micro_discovery(split: Any, nc: Any) -> None:
    await split.client(Greeter).greet(Greet(name="stats"))
    pings = await gather(nc, "$SRV.PING.greeter")
    assert len(pings) == 1
    assert pings[0]["type"] == "io.nats.micro.v1.ping_response"
    assert pings[0]["name"] == "greeter"

    [info] = await gather(nc, "$SRV.INFO.greeter")
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["description"] == "Says hello."
    by_name = {e["name"]: e for e in info["endpoints"]}
    assert set(by_name) == set(spec_of(Greeter).methods)
    assert by_name["greet"]["subject"] == subject_for(split.prefix, "cleave.rpc.greeter.v1.greet")
    assert by_name["greet"]["queue_group"] == "greeter"
    assert by_name["add"]["metadata"] == {"idempotent": "true", "version": "1"}
    assert info["metadata"]["majors"] == "1"

    [stats] = await gather(nc, f"$SRV.STATS.greeter.{info['id']}")
    greet = next(e for e in stats["endpoints"] if e["name"] == "greet")
    assert greet["num_requests"] >= 1
    assert greet["processing_time"] > 0
    assert stats["started"].endswith("Z")

    everyone = await gather(nc, "$SRV.PING")
    assert {"greeter", "front", "audit"} <= {p["name"] for p in everyone}


NODE_DIR = Path(__file__).resolve().parent.parent / "interop"


@pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "nats").exists(),
    reason="nats.js not installed (npm install --prefix tests/interop)",
)
async def test_standard_nats_tooling_lists_the_services(split: Any, nats_url: str) -> None:
    """The official nats.js services client discovers Cleave services and their endpoints."""
    await split.client(Greeter).greet(Greet(name="interop"))
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "micro_ls.mjs"),
        nats_url,
        "greeter",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NODE_DIR,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    found = json.loads(out)
    assert [p["name"] for p in found["pings"]] == ["greeter"]
    [info] = found["infos"]
    assert {e["name"] for e in info["endpoints"]} == set(spec_of(Greeter).methods)
    [stats] = found["stats"]
    greet = next(e for e in stats["endpoints"] if e["name"] == "greet")
    assert greet["num_requests"] >= 1


async def test_a_call_that_swallows_its_deadline_cancel_is_not_remembered(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stubborn(self: sample_app.GreeterService, req: sample_app.Sleep) -> Any:
        # Swallows its cancel, as asyncio.wait_for does on 3.11 when its future
        # finishes in the same instant.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(req.seconds)
        return sample_app.Greeting(text="late")

    monkeypatch.setattr(sample_app.GreeterService, "sleep", stubborn)
    async with NatsHarness(sample_app.app, nats_url, tmp_path) as h:
        with pytest.raises(cleave.DeadlineExceeded), cleave.timeout(0.2):
            await h.client(Greeter).sleep(sample_app.Sleep(seconds=2))
        server = next(host.server for host in h.hosts.values() if "greeter" in host.names)
        for _ in range(100):
            if not server._tasks:
                break
            await asyncio.sleep(0.02)
        assert not server._tasks  # cancelled at its deadline, and it stopped
        assert not server._expired  # and nothing keeps the finished task alive
