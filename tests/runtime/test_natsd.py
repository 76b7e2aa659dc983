from __future__ import annotations

import os
import stat
from pathlib import Path

import nats
import pytest

import cleave
from cleave.runtime.natsd import EmbeddedNats, binary_version, find_binary, free_port

pytestmark = pytest.mark.nats


def test_the_wheel_binary_is_found_and_recent() -> None:
    binary = find_binary()
    assert os.access(binary, os.X_OK)
    assert binary_version(binary) >= (2, 10, 0)


async def test_it_runs_jetstream_on_loopback_with_fsync_always(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", name="t")
    await server.start()
    try:
        assert server.url.startswith("nats://127.0.0.1:")
        conf = (tmp_path / "nats" / "nats-server.conf").read_text()
        assert 'sync_interval: "always"' in conf
        assert 'listen: "127.0.0.1:' in conf
        nc = await nats.connect(server.url)
        info = await nc.jetstream().account_info()
        assert info.limits is not None
        await nc.close()
    finally:
        await server.stop()
    assert server.proc is None


def test_a_fixed_port_in_use_is_explained(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path / "a", name="a")
    first.launch()
    try:
        second = EmbeddedNats(tmp_path / "b", port=first.port, name="b")
        with pytest.raises(cleave.ConfigError, match=f"is port {first.port} in use"):
            second.launch(timeout=3)
    finally:
        first.shutdown()


def test_too_old_a_binary_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(cleave.ConfigError, match=r"2\.9\.10; Cleave needs 2\.10\.0"):
        EmbeddedNats(tmp_path, binary=str(fake)).launch()


def test_a_missing_binary_is_explained(tmp_path: Path) -> None:
    with pytest.raises(cleave.ConfigError, match="not found or not executable"):
        EmbeddedNats(tmp_path, binary=str(tmp_path / "nope")).launch()


def test_not_a_nats_server_is_explained(tmp_path: Path) -> None:
    with pytest.raises(cleave.ConfigError, match="printed no version"):
        EmbeddedNats(tmp_path, binary="true").launch()


def test_free_port_is_free() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_every_write_is_synced_unless_asked_otherwise(tmp_path: Path) -> None:
    assert 'sync_interval: "always"' in EmbeddedNats(tmp_path)._config()
    assert "sync_interval" not in EmbeddedNats(tmp_path, sync_always=False)._config()
