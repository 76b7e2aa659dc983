"""`cleave.connect`: typed calls from outside the app, against a real `cleave up` of the sample."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sample_app import Audit, Fail, Front, Greet, Greeter, Hello, Names, Sleep, Teapot

import cleave
from cleave.runtime.nats_auth import read_identity
from cleave.runtime.natsd import free_port
from conftest import SAMPLE, Up

pytestmark = [pytest.mark.processes, pytest.mark.nats]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up(SAMPLE, tmp_path_factory.mktemp("connect-up")).start()
    try:
        yield running
    finally:
        running.stop()


async def test_a_typed_call_reaches_the_service_as_the_client(up: Up) -> None:
    async with cleave.connect(SAMPLE, state_dir=up.state_dir) as conn:
        greeting = await conn.client(Greeter).greet(Greet(name="ann"))
        nested = await conn.client(Front).hello(Hello(name="bo"))  # front calls greeter
        names = await conn.client(Audit).names(Names())
    assert (greeting.text, greeting.caller) == ("hello ann", "client")
    assert nested.text == "hello bo"
    assert isinstance(names.names, tuple)
    assert "client.json" in {p.name for p in (up.state_dir / "nats-auth").iterdir()}


async def test_service_errors_arrive_typed(up: Up) -> None:
    async with cleave.connect(SAMPLE, state_dir=up.state_dir) as conn:
        greeter = conn.client(Greeter)
        with pytest.raises(Teapot, match="I am a teapot"):
            await greeter.fail(Fail(how="teapot"))
        with pytest.raises(cleave.NotFound, match="no such greeting"):
            await greeter.fail(Fail(how="not_found"))
        with pytest.raises(cleave.RemoteError) as crash:
            await greeter.fail(Fail(how="crash"))
    assert crash.value.remote_kind == "KeyError"


async def test_a_deadline_is_honoured(up: Up) -> None:
    async with cleave.connect(SAMPLE, state_dir=up.state_dir) as conn:
        greeter = conn.client(Greeter)
        started = time.monotonic()
        with pytest.raises(cleave.DeadlineExceeded), cleave.timeout(0.3):
            await greeter.sleep(Sleep(seconds=10))
        assert time.monotonic() - started < 5
    async with cleave.connect(SAMPLE, state_dir=up.state_dir, timeout=0.3) as short:
        with pytest.raises(cleave.DeadlineExceeded):
            await short.client(Greeter).sleep(Sleep(seconds=10))
        # The callee sees the deadline the caller set.
        greeting = await short.client(Greeter).greet(Greet(name="cy"))
        assert 0 < greeting.deadline_left <= 0.3


async def test_a_request_id_reaches_the_callee(up: Up) -> None:
    async with cleave.connect(SAMPLE, state_dir=up.state_dir, caller="nightly") as conn:
        greeter = conn.client(Greeter)
        with conn.request("job-7") as req:
            first = await greeter.greet(Greet(name="dee"))
            second = await greeter.greet(Greet(name="dee"))
        fresh = await greeter.greet(Greet(name="dee"))
    assert (first.request_id, second.request_id) == ("job-7.1", "job-7.2")
    assert req.request_id == "job-7"
    assert first.caller == "nightly"
    assert fresh.request_id
    assert not fresh.request_id.startswith("job-7")


async def test_a_url_with_credentials_works_and_wrong_ones_are_refused(up: Up) -> None:
    import json

    state = json.loads((up.state_dir / "run" / "supervisor.json").read_text())
    identity = read_identity(up.state_dir / "nats-auth" / "client.json")
    url = state["nats_url"]
    async with cleave.connect(
        url,
        user=identity.user,
        password=identity.password,
        inbox_prefix=identity.inbox_prefix,
        timeout=5,
    ) as conn:
        greeting = await conn.client(Greeter).greet(Greet(name="eve"))
    assert greeting.text == "hello eve"
    assert identity.password not in repr(conn)
    with pytest.raises(cleave.Unavailable, match="refused"):
        async with cleave.connect(url, user=identity.user, password="wrong"):
            pass


async def test_a_folder_with_no_running_app_says_so(tmp_path: Path) -> None:
    with pytest.raises(cleave.ConfigError, match=r"sample is not up .*start it with `cleave up"):
        async with cleave.connect(SAMPLE, state_dir=tmp_path):
            pass


async def test_bad_targets_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(cleave.ConfigError, match="no such directory"):
        async with cleave.connect(tmp_path / "nowhere"):
            pass
    with pytest.raises(cleave.ConfigError, match=r"has no cleave\.toml"):
        async with cleave.connect(tmp_path):
            pass
    with pytest.raises(cleave.ConfigError, match="must be nats:// or tls://"):
        async with cleave.connect("http://127.0.0.1:8000"):
            pass
    started = time.monotonic()
    with pytest.raises(cleave.Unavailable, match=r"cannot connect to NATS at nats://127\.0\.0\.1"):
        async with cleave.connect(f"nats://127.0.0.1:{free_port()}"):
            pass
    assert time.monotonic() - started < 15
