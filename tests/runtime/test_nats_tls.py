"""NATS over TLS: certificates made under .cleave, verified by every client; settings checked."""

from __future__ import annotations

import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest

from cleave.app import LoadedApp, load
from cleave.config import NatsSettings, load_plan, mask_url
from cleave.errors import ConfigError
from cleave.runtime.nats_tls import client_context, make_certificates, server_block, tls_dir
from cleave.runtime.natsd import EmbeddedNats
from cleave.transport.nats import connect
from conftest import SAMPLE, Up

pytestmark = pytest.mark.nats


def with_nats(loaded: LoadedApp, **settings: object) -> LoadedApp:
    nats_settings = msgspec.structs.replace(loaded.plan.nats, **settings)
    plan = msgspec.structs.replace(loaded.plan, nats=nats_settings)
    return LoadedApp(loaded.app, loaded.root, plan, loaded.state_dir)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoadedApp, str]]:
    loaded = with_nats(load(SAMPLE, state_dir=tmp_path_factory.mktemp("tls")), tls=True)
    folder = make_certificates(tls_dir(loaded))
    server = EmbeddedNats(loaded.state_dir / "nats", name="cleave_tls", tls=server_block(folder))
    server.launch()
    try:
        yield loaded, server.url
    finally:
        server.shutdown()


def test_the_certificates_are_private(tls_server: tuple[LoadedApp, str]) -> None:
    loaded, _ = tls_server
    folder = tls_dir(loaded)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {p.name for p in folder.iterdir()} == {
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
    }
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())


async def test_a_client_verifying_the_ca_talks_and_a_plain_one_cannot(
    tls_server: tuple[LoadedApp, str],
) -> None:
    loaded, url = tls_server
    assert url.startswith("tls://")
    nc = await connect(url, "tls-client", tls=client_context(loaded))
    try:

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        sub = await nc.subscribe("tls.echo", cb=echo)
        assert (await nc.request("tls.echo", b"hi", timeout=5)).data == b"hi"
        await sub.unsubscribe()
    finally:
        await nc.close()
    plain = url.replace("tls://", "nats://")
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(plain, allow_reconnect=False, connect_timeout=2)


async def test_a_client_trusting_another_ca_is_refused(
    tls_server: tuple[LoadedApp, str], tmp_path: Path
) -> None:
    _, url = tls_server
    other = with_nats(load(SAMPLE, state_dir=tmp_path), tls=True)
    make_certificates(tls_dir(other))  # a CA of its own: must not verify this server
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(url, tls=client_context(other), allow_reconnect=False, connect_timeout=2)


def test_external_tls_settings_are_checked(tmp_path: Path) -> None:
    loaded = load(SAMPLE, state_dir=tmp_path)
    external = with_nats(loaded, url="tls://nats.example:4222", ca=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"\[nats\] ca = .*no such file"):
        client_context(external)
    half = with_nats(loaded, url="nats://nats.example:4222", cert="client.pem")
    with pytest.raises(ConfigError, match="cert and key go together"):
        client_context(half)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = with_nats(loaded, url="nats://nats.example:4222", ca=str(garbage))
    with pytest.raises(ConfigError, match="PEM"):
        client_context(bad)
    assert client_context(with_nats(loaded, url="nats://nats.example:4222")) is None


def test_nats_files_come_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cleave.toml").write_text('[nats]\nurl = "${NATS_URL}"\nca = "from-file.pem"\n')
    monkeypatch.setenv("NATS_URL", "tls://user:s3cret@nats.example:4222")
    monkeypatch.setenv("CLEAVE_NATS_CA", "/etc/ssl/nats-ca.pem")
    monkeypatch.setenv("CLEAVE_NATS_CREDENTIALS", "/run/secrets/app.creds")
    nats_plan: NatsSettings = load_plan(tmp_path).nats
    assert nats_plan.url == "tls://user:s3cret@nats.example:4222"
    assert nats_plan.ca == "/etc/ssl/nats-ca.pem"
    assert nats_plan.credentials == "/run/secrets/app.creds"
    assert mask_url(nats_plan.url) == "tls://user:***@nats.example:4222"
    assert mask_url("postgresql+asyncpg://shop@db/shop") == "postgresql+asyncpg://shop@db/shop"


@pytest.mark.processes
def test_cleave_up_over_tls(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(SAMPLE, app, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    with open(app / "cleave.toml", "a") as toml:
        toml.write("\n[nats]\ntls = true\n")
    up = Up(app, tmp_path / "state").start()
    try:
        assert httpx.post(f"{up.url}/greet", json={"name": "tls"}, timeout=30).status_code == 201
        state = (tmp_path / "state" / "run" / "supervisor.json").read_text()
        assert '"nats_url": "tls://127.0.0.1:' in state
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the event reached audit, over TLS as well
            names = httpx.get(f"{up.url}/audit", timeout=10).json()
            if "tls" in names:
                break
            time.sleep(0.2)
        assert "tls" in names
    finally:
        up.stop()


def test_a_credentials_file_is_checked(tmp_path: Path) -> None:
    from cleave.runtime.nats_auth import credentials_file

    with pytest.raises(ConfigError, match=r"\[nats\] credentials = .*no such file"):
        credentials_file(str(tmp_path / "app.creds"))
