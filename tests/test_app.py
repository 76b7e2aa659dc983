from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest
import sample_app

import cleave
from cleave.app import load


def test_topology_and_start_order() -> None:
    app = sample_app.app
    edges = {(e.source, e.target, e.kind, e.event) for e in app.edges}
    assert ("front", "greeter", "call", "") in edges
    assert ("greeter", "audit", "event", "greeted") in edges
    assert ("gateway", "audit", "call", "") in edges
    order = app.start_order()
    assert order.index("greeter") < order.index("front")


def test_a_used_contract_must_be_served() -> None:
    with pytest.raises(cleave.DefinitionError, match="front calls 'greeter'"):
        cleave.App("x", services=[sample_app.FrontService])


def test_two_services_for_one_contract() -> None:
    class Other(sample_app.AuditService):
        pass

    with pytest.raises(cleave.DefinitionError, match="both implement 'audit'"):
        cleave.App("x", services=[sample_app.AuditService, Other])


def test_a_consumed_event_must_be_published() -> None:
    with pytest.raises(cleave.DefinitionError, match="no service of app x publishes it"):
        cleave.App("x", services=[sample_app.AuditService])


class Ping(cleave.Message):
    pass


@cleave.contract("echo", version=1, events=[sample_app.Greeted])
class Echo(Protocol):
    async def ping(self, req: Ping) -> Ping: ...


class EchoService(cleave.Service, implements=Echo):
    db = cleave.Database()

    async def ping(self, req: Ping) -> Ping:
        return req


def test_an_event_published_twice_needs_a_source() -> None:
    with pytest.raises(cleave.DefinitionError, match="published by greeter, echo"):
        cleave.App("x", services=[sample_app.GreeterService, EchoService, sample_app.AuditService])


def test_an_app_needs_services() -> None:
    with pytest.raises(cleave.DefinitionError, match="has no services"):
        cleave.App("x", services=[])


def test_load_finds_the_app_from_its_folder() -> None:
    loaded = load(Path(__file__).parent / "apps" / "sample")
    assert loaded.app is sample_app.app
    assert loaded.plan.app.version == "1.2.3"
    assert loaded.state_dir.name == ".cleave"


def test_load_explains_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(cleave.ConfigError, match="no such directory"):
        load(tmp_path / "nope")
    (tmp_path / "cleave.toml").write_text('[app]\ntarget = "nowhere:app"\n')
    with pytest.raises(cleave.ConfigError, match="cannot import 'nowhere'"):
        load(tmp_path)
    (tmp_path / "cleave.toml").write_text('[app]\ntarget = "thing:app"\n')
    (tmp_path / "thing.py").write_text("app = 42\n")
    with pytest.raises(cleave.ConfigError, match=r"is not a cleave\.App"):
        load(tmp_path)


def test_load_without_a_folder_looks_upwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cleave.ConfigError, match=r"no cleave\.toml in this folder or above"):
        load()
