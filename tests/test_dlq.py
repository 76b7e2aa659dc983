"""`cleave dlq` and the dashboard's dead-letter endpoints, against the sample app.

The CLI runs as a subprocess (in a thread, so the app under test keeps
running on this test's event loop) on the same state folder as the app.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sample_app

from cleave.data.deadletters import DeadLetter, DeadLetterStore
from cleave.observability.dashboard import Dashboard
from cleave.runtime.sources import LocalSource
from cleave.testing import Harness, NatsHarness
from cleave.transport.base import ConsumerPolicy
from conftest import SAMPLE, Up, cli, wait_until

#: Give up after two attempts, quickly (the default policy takes ~20 s to get there).
FAST = ConsumerPolicy(max_deliver=2, backoff=(0.05,))


async def dlq(*args: object, state_dir: Path, check: bool = True) -> Any:
    """``cleave dlq ARGS --state-dir STATE_DIR``, off the event loop."""
    return await asyncio.to_thread(
        cli, "dlq", *args, "--state-dir", state_dir, check=check, env={"COLUMNS": "200"}
    )


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        await asyncio.sleep(0.05)
    return value


def audit_store(h: Any) -> DeadLetterStore:
    """The audit consumer's dead letters, the consumer made to give up after two attempts."""
    hosts = [h.host] if isinstance(h, Harness) else list(h.hosts.values())
    [consumer] = [c for host in hosts for c in host.consumers if c.service == "audit"]
    consumer.policy = FAST
    return DeadLetterStore(consumer.db, "audit")


async def dead_letter(h: Any, store: DeadLetterStore, name: str) -> DeadLetter:
    """Greet ``name`` with the audit handler failing both attempts; its letter."""
    before = {d.id for d in await store.find()}
    sample_app.AuditService.failures_left += 2
    await h.client(sample_app.Greeter).greet(sample_app.Greet(name=name))

    async def new() -> list[DeadLetter]:
        return [d for d in await store.find() if d.id not in before]

    [letter] = await until(new)
    return letter


async def names(h: Any) -> tuple[str, ...]:
    return (await h.client(sample_app.Audit).names(sample_app.Names())).names


async def test_list_show_replay_and_purge_on_a_running_monolith(tmp_path: Path) -> None:
    async with Harness(sample_app.app, tmp_path) as h:
        store = audit_store(h)
        ann = await dead_letter(h, store, "ann")
        bob = await dead_letter(h, store, "bob")

        listed = json.loads((await dlq("list", SAMPLE, "--json", state_dir=tmp_path)).stdout)
        assert [(d["id"], d["payload"]["name"], d["attempts"]) for d in listed] == [
            (ann.id, "ann", 2),
            (bob.id, "bob", 2),
        ]
        table = (await dlq("list", SAMPLE, state_dir=tmp_path)).stdout
        assert "sample: 2 dead letter(s)" in table
        assert ann.id in table
        assert "audit failed on purpose" in table
        shown = (await dlq("show", ann.id, SAMPLE, state_dir=tmp_path)).stdout
        assert '"name": "ann"' in shown
        assert "RuntimeError: audit failed on purpose" in shown

        replayed = (await dlq("replay", ann.id, SAMPLE, state_dir=tmp_path)).stdout
        assert f"{ann.id} {ann.consumer}: replayed" in replayed
        assert await names(h) == ("ann",)
        # Replayed once: the letter is gone, so a second replay has nothing to apply.
        again = await dlq("replay", ann.id, "--app", SAMPLE, state_dir=tmp_path, check=False)
        assert again.returncode == 2
        assert f"no dead letter '{ann.id}' in app sample" in again.stderr

        purged = await dlq(
            "purge", "--all", "--service", "audit", "--app", SAMPLE, state_dir=tmp_path
        )
        assert "sample: purged 1 dead letter(s)" in purged.stdout
        assert "sample: no dead letters" in (await dlq("list", SAMPLE, state_dir=tmp_path)).stdout
        assert await names(h) == ("ann",)


async def test_bad_input_is_a_one_line_error_that_says_what_to_do(tmp_path: Path) -> None:
    async with Harness(sample_app.app, tmp_path):
        cases = [
            (("show", "nope", SAMPLE), "no dead letter 'nope' in app sample; `cleave dlq list`"),
            (("list", SAMPLE, "--service", "billing"), "app sample has no service 'billing'"),
            (("list", SAMPLE, "--service", "greeter"), "greeter consumes no events"),
            (("replay", "--app", SAMPLE), "say which dead letters to replay: their ids"),
            (("purge", "x", "--all", "--app", SAMPLE), "say which dead letters to purge"),
        ]
        for args, message in cases:
            result = await dlq(*args, state_dir=tmp_path, check=False)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert message in result.stderr, (args, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_a_replay_asked_while_the_app_is_stopped_runs_when_it_starts(
    tmp_path: Path,
) -> None:
    async with Harness(sample_app.app, tmp_path) as h:
        letter = await dead_letter(h, audit_store(h), "kit")

    listed = (await dlq("list", SAMPLE, state_dir=tmp_path)).stdout  # from the file alone
    assert letter.id in listed
    asked = await dlq("replay", "--all", "--wait", "0.5", "--app", SAMPLE, state_dir=tmp_path)
    assert f"{letter.id} {letter.consumer}: requested" in asked.stdout
    assert "it is replayed when audit runs" in asked.stdout

    async with Harness(sample_app.app, tmp_path) as h:
        store = audit_store(h)
        await until(lambda: _empty(store))
        assert await names(h) == ("kit",)


async def _empty(store: DeadLetterStore) -> bool:
    return not await store.find()


@pytest.mark.nats
async def test_replay_through_the_cli_over_nats(nats_url: str, tmp_path: Path) -> None:
    async with NatsHarness(sample_app.app, nats_url, tmp_path) as h:
        store = audit_store(h)
        letter = await dead_letter(h, store, "zed")
        assert letter.subject.endswith(".evt.greeter.greeted.v1")
        out = await dlq("replay", "--all", "--app", SAMPLE, state_dir=tmp_path)
        assert f"{letter.id} {letter.consumer}: replayed" in out.stdout
        assert await names(h) == ("zed",)
        assert await store.find() == []


async def test_the_dashboard_endpoints_do_what_the_cli_does(tmp_path: Path) -> None:
    async with Harness(sample_app.app, tmp_path) as h:
        store = audit_store(h)
        ann = await dead_letter(h, store, "ann")
        source = LocalSource(h.host, h.monolith.broker, version="test")
        board = Dashboard(sample_app.app, source, "monolith")
        transport = httpx.ASGITransport(app=board.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
            [listed] = (await http.get("/api/dead-letters")).json()
            assert (listed["id"], listed["payload"], listed["attempts"]) == (
                ann.id,
                {"name": "ann"},
                2,
            )

            both = await http.post("/api/dead-letters/replay", json={"ids": [ann.id], "all": True})
            assert both.status_code == 400
            assert '"ids", or "all": true' in both.json()["error"]
            unknown = await http.post("/api/dead-letters/replay", json={"ids": ["nope"]})
            assert unknown.status_code == 400
            assert "no dead letter 'nope' in app sample" in unknown.json()["error"]
            typo = await http.post("/api/dead-letters/purge", json={"idz": [ann.id]})
            assert typo.status_code == 400

            done = await http.post(
                "/api/dead-letters/replay", json={"all": True, "service": "audit"}
            )
            assert done.status_code == 200
            assert [(r["id"], r["outcome"]) for r in done.json()] == [(ann.id, "replayed")]
            assert await names(h) == ("ann",)

            bob = await dead_letter(h, store, "bob")
            purged = await http.post("/api/dead-letters/purge", json={"ids": [bob.id]})
            assert [d["id"] for d in purged.json()] == [bob.id]
            assert (await http.get("/api/dead-letters")).json() == []
        assert await names(h) == ("ann",)


@pytest.mark.processes
@pytest.mark.nats
def test_cleave_up_keeps_dead_letters_and_its_dashboard_handles_them(tmp_path: Path) -> None:
    up = Up(SAMPLE, tmp_path).start()
    try:
        state = json.loads((tmp_path / "run" / "supervisor.json").read_text())
        dashboard = state["dashboard_url"]
        asyncio.run(_publish_poison(state["nats_url"], tmp_path))  # audit dead-letters it
        # The dashboard's actions want the run's token (the page carries it; so does the CLI).
        token = {"x-cleave-token": (tmp_path / "run" / "control-token").read_text()}

        def letters() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = httpx.get(f"{dashboard}/api/dead-letters").json()
            return found

        [letter] = wait_until(letters, timeout=30)
        assert letter["event_id"] == "poison-1"
        assert "cannot decode Greeted" in letter["error"]
        listed = cli("dlq", "list", SAMPLE, "--json", "--state-dir", tmp_path).stdout
        assert [d["id"] for d in json.loads(listed)] == [letter["id"]]

        replay = httpx.post(
            f"{dashboard}/api/dead-letters/replay",
            json={"ids": [letter["id"]]},
            headers=token,
            timeout=30,
        )
        [outcome] = replay.json()
        assert outcome["outcome"] in ("failed", "requested")  # failed, unless the box is slow
        [again] = wait_until(
            lambda: [d for d in letters() if d["replay_requested_at"] is None], timeout=30
        )
        assert again["attempts"] == 2  # the delivery, then the replay: still undecodable

        bad = httpx.post(f"{dashboard}/api/dead-letters/purge", json={}, headers=token)
        assert bad.status_code == 400
        purged = httpx.post(
            f"{dashboard}/api/dead-letters/purge", json={"ids": [letter["id"]]}, headers=token
        )
        assert [d["id"] for d in purged.json()] == [letter["id"]]
        assert letters() == []
    finally:
        up.stop()


async def _publish_poison(nats_url: str, state_dir: Path) -> None:
    from cleave.runtime.nats_auth import read_identity
    from cleave.transport.nats import connect

    # A producer the app does not have: only the operator's admin identity may publish it.
    admin = read_identity(state_dir / "nats-auth" / "admin.json")
    nc = await connect(nats_url, "test-poison", user=admin.user, password=admin.password)
    try:
        await nc.jetstream().publish(
            "cleave.evt.greeter.greeted.v1",
            b"\xc1 not msgpack",
            headers={"Nats-Msg-Id": "poison-1"},
        )
    finally:
        await nc.close()
