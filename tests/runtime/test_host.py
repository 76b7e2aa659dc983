from __future__ import annotations

from pathlib import Path

import pytest
import sample_app

import cleave
from cleave.config import Plan
from cleave.runtime.host import Host, HostState
from cleave.transport.local import MemoryBroker


def host(tmp_path: Path, names: list[str]) -> Host:
    return Host(
        sample_app.app, Plan(), names, broker=MemoryBroker(), data_dir=tmp_path, instance="t"
    )


async def test_start_wires_and_stop_undoes(tmp_path: Path) -> None:
    h = host(tmp_path, ["greeter", "audit", "front"])
    await h.start()
    assert h.state is HostState.RUNNING
    assert h.names.index("greeter") < h.names.index("front")  # callees start first
    assert set(h.databases) == {"greeter", "audit"}
    assert set(h.relays) == {"greeter"}
    assert [c.name for c in h.consumers] == ["audit-on-greeted"]
    assert (tmp_path / "greeter.db").exists()
    await h.stop()
    assert h.state is HostState.STOPPED
    await h.stop()  # idempotent


async def test_a_host_starts_once(tmp_path: Path) -> None:
    h = host(tmp_path, ["greeter"])
    await h.start()
    with pytest.raises(cleave.LifecycleError, match="already running"):
        await h.start()
    await h.stop()


def test_unknown_services_are_refused(tmp_path: Path) -> None:
    with pytest.raises(cleave.LifecycleError, match="has no service 'ghost'"):
        host(tmp_path, ["ghost"])


async def test_a_call_to_a_service_elsewhere_without_transport_is_unavailable(
    tmp_path: Path,
) -> None:
    h = host(tmp_path, ["front"])
    await h.start()
    greeter = h.client(sample_app.Greeter)
    with pytest.raises(cleave.Unavailable, match="does not run in this process") as caught:
        await greeter.greet(sample_app.Greet(name="x"))  # type: ignore[attr-defined]
    assert caught.value.ran is False
    # front's own calls to greeter have a fallback
    answer = await h.client(sample_app.Front).hello(sample_app.Hello(name="y"))  # type: ignore[attr-defined]
    assert answer.text == "hello y (from the fallback)"
    await h.stop()


async def test_a_failed_start_cleans_up(tmp_path: Path) -> None:
    class Broken(sample_app.GreeterService):
        async def on_start(self) -> None:
            raise RuntimeError("seed failed")

    app = cleave.App("broken", services=[Broken])
    h = Host(app, Plan(), ["greeter"], broker=MemoryBroker(), data_dir=tmp_path, instance="t")
    with pytest.raises(RuntimeError, match="seed failed"):
        await h.start()
    assert h.state is HostState.STOPPED
