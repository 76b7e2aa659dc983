"""Service identities on a real nats-server: what a group may do is what it declares."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog.testing
from sample_app import Greet, Greeter, Greeting

from cleave.app import LoadedApp, load
from cleave.context import CallContext
from cleave.contracts import method_of
from cleave.errors import DefinitionError, Unavailable
from cleave.runtime.nats_auth import (
    Identity,
    group_permissions,
    make_identities,
    read_identity,
    server_authorization,
)
from cleave.runtime.natsd import EmbeddedNats
from cleave.transport.base import Outgoing
from cleave.transport.jetstream import JetStreamBroker
from cleave.transport.nats import NatsRpcClient, connect
from conftest import SAMPLE

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedApp:
    return load(SAMPLE, state_dir=tmp_path_factory.mktemp("auth-state"))


@pytest.fixture(scope="module")
def server(loaded: LoadedApp) -> Iterator[tuple[EmbeddedNats, dict[str, Identity]]]:
    made = make_identities(loaded)
    nats = EmbeddedNats(
        loaded.state_dir / "nats", name="cleave_auth", authorization=server_authorization(made)
    )
    nats.launch()
    try:
        yield nats, {name: identity for name, (identity, _) in made.items()}
    finally:
        nats.shutdown()


async def connect_as(url: str, identity: Identity) -> Any:
    return await connect(
        url,
        f"test.{identity.name}",
        user=identity.user,
        password=identity.password,
        inbox_prefix=identity.inbox_prefix,
    )


@pytest.fixture
async def as_group(
    server: tuple[EmbeddedNats, dict[str, Identity]],
) -> AsyncIterator[Any]:
    nats, identities = server
    opened: list[Any] = []

    async def open_as(name: str) -> Any:
        nc = await connect_as(nats.url, identities[name])
        opened.append(nc)
        return nc

    try:
        yield open_as
    finally:
        for nc in opened:
            await nc.close()


def ctx(caller: str) -> CallContext:
    return CallContext(time.time() + 5, "req-1", caller)


def test_credentials_are_private_files_and_never_shown(tmp_path: Path) -> None:
    loaded = load(SAMPLE, state_dir=tmp_path)
    made = make_identities(loaded)
    folder = loaded.state_dir / "nats-auth"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {p.name for p in folder.iterdir()} == {
        "greeter.json",
        "front.json",
        "audit.json",
        "gateway.json",
        "client.json",
        "admin.json",
    }
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    front = read_identity(folder / "front.json")
    assert front == made["front"][0]
    assert front.password not in repr(front)
    assert front.inbox_prefix == "_INBOX_front"


def test_permissions_follow_the_declarations_and_the_prefix(loaded: LoadedApp) -> None:
    front = group_permissions(loaded, ("front",), "front")
    assert "cleave.rpc.greeter.*.*" in front.publish  # front uses greeter (any of its majors)
    assert not any(s.startswith("cleave.rpc.audit") for s in front.publish)  # not audit
    assert "cleave.rpc.front.v1.* front" in front.subscribe  # serves its own, in its queue group
    assert not any(s.startswith("cleave.evt.") for s in front.publish)  # declares no events
    audit = group_permissions(loaded, ("audit",), "audit")
    assert not any(s.startswith("cleave.rpc.") for s in audit.publish)  # uses nothing
    assert "$JS.API.CONSUMER.MSG.NEXT.CLEAVE_GREETER.audit-on-greeted" in audit.publish
    assert "$JS.ACK.CLEAVE_GREETER.audit-on-greeted.>" in audit.publish
    assert "_INBOX_audit.>" in audit.subscribe
    assert not any("_INBOX_front" in s for s in audit.subscribe)

    nats = msgspec.structs.replace(loaded.plan.nats, prefix="tenant")
    other = LoadedApp(
        loaded.app, loaded.root, msgspec.structs.replace(loaded.plan, nats=nats), loaded.state_dir
    )
    greeter = group_permissions(other, ("greeter",), "greeter")
    assert "tenant.evt.greeter.>" in greeter.publish
    assert "$JS.API.STREAM.CREATE.TENANT_GREETER" in greeter.publish
    assert "tenant.rpc.greeter.v1.* greeter" in greeter.subscribe
    assert not any(s.startswith("cleave.") for s in (*greeter.publish, *greeter.subscribe))


async def test_a_client_without_credentials_cannot_connect(
    server: tuple[EmbeddedNats, dict[str, Identity]],
) -> None:
    nats, identities = server
    with pytest.raises(Unavailable, match="refused"):
        await connect(nats.url, "anonymous")
    wrong = msgspec.structs.replace(identities["front"], password="guessed")
    with pytest.raises(Unavailable, match="refused"):
        await connect_as(nats.url, wrong)


async def test_a_declared_call_goes_and_an_undeclared_one_is_refused_by_the_broker(
    as_group: Any,
) -> None:
    greet = method_of(Greeter.greet)
    # greeter serves its own subject, in its own queue group, and answers.
    greeter_nc = await as_group("greeter")

    async def answer(msg: Any) -> None:
        from cleave.transport.wire import Reply

        await msg.respond(msgspec.msgpack.encode(Reply(body=Greeting(text="hi"))))

    await greeter_nc.subscribe("cleave.rpc.greeter.v1.*", queue="greeter", cb=answer)
    await greeter_nc.flush()

    front = NatsRpcClient(await as_group("front"))
    answered = await front.call(greet, Greet(name="ann"), ctx("front"))
    assert answered == Greeting(text="hi")

    audit = NatsRpcClient(await as_group("audit"))
    started = time.monotonic()
    with pytest.raises(DefinitionError) as refused:
        await audit.call(greet, Greet(name="ann"), ctx("audit"))
    assert time.monotonic() - started < 4  # at once, not at the deadline
    message = str(refused.value)
    assert "refused the call to greeter.greet" in message
    assert "declares no use of greeter" in message
    assert "cleave.use(Greeter)" in message


async def test_a_foreign_event_publish_is_refused_and_an_own_one_stored(as_group: Any) -> None:
    greeter = JetStreamBroker(await as_group("greeter"))
    await greeter.ensure_stream("CLEAVE_GREETER", ["cleave.evt.greeter.>"])
    event = Outgoing("cleave.evt.greeter.greeted.v1", b"\x81\xa4name\xa3ann", os.urandom(8).hex())
    await greeter.publish([event])  # its own event: stored

    front = JetStreamBroker(await as_group("front"))
    started = time.monotonic()
    with pytest.raises(DefinitionError) as refused:
        await front.publish([msgspec.structs.replace(event, msg_id=os.urandom(8).hex())])
    assert time.monotonic() - started < 5
    assert "publish to cleave.evt.greeter.greeted.v1" in str(refused.value)
    assert "events=[...]" in str(refused.value)


async def test_one_group_cannot_read_another_groups_replies(as_group: Any) -> None:
    front = await as_group("front")

    async def read(msg: Any) -> None:
        raise AssertionError(f"front read greeter's reply {msg.subject}")

    with structlog.testing.capture_logs() as logs:
        await front.subscribe("_INBOX_greeter.>", cb=read)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            "subscription" in str(e.get("error", "")).lower() for e in logs
        ):
            await asyncio.sleep(0.05)
    [refusal] = [e for e in logs if "subscription" in str(e.get("error", "")).lower()]
    assert "_inbox_greeter.>" in refusal["error"].lower()  # nats-py lowercases it


async def test_a_consumer_on_an_undeclared_subscription_is_refused(as_group: Any) -> None:
    from cleave.transport.base import ConsumerPolicy

    greeter = JetStreamBroker(await as_group("greeter"))
    await greeter.ensure_stream("CLEAVE_GREETER", ["cleave.evt.greeter.>"])
    front = JetStreamBroker(await as_group("front"))  # front subscribes to nothing

    async def handle(delivery: Any) -> None:
        raise AssertionError("front got greeter's event")

    started = time.monotonic()
    with pytest.raises(DefinitionError, match=r"@cleave\.subscribe"):
        await front.subscribe(
            "CLEAVE_GREETER", "front-spy", "cleave.evt.greeter.>", handle, ConsumerPolicy()
        )
    assert time.monotonic() - started < 5
