from __future__ import annotations

from pathlib import Path

import pytest

import cleave
from cleave.config import Plan, load_plan


def test_no_file_gives_the_defaults(tmp_path: Path) -> None:
    app = tmp_path / "my-app"
    app.mkdir()
    plan = load_plan(app)
    assert plan.app.name == "my_app"
    assert plan.gateway.port == 8000
    assert plan.runtime.timeout == 10.0
    assert plan.service("x").replicas == 1


def test_a_full_plan(tmp_path: Path) -> None:
    (tmp_path / "cleave.toml").write_text(
        """
[app]
name = "shop"
version = "2.0.1"
[runtime]
timeout = 3
[gateway]
port = 9000
[groups]
checkout = ["orders", "billing"]
[services.billing]
replicas = 3
database = "postgresql+asyncpg://u@h/db"
"""
    )
    plan = load_plan(tmp_path)
    assert (plan.app.name, plan.app.version, plan.runtime.timeout) == ("shop", "2.0.1", 3.0)
    assert plan.service("billing").replicas == 3
    assert plan.groups_for(["catalog", "orders", "billing"]) == {
        "checkout": ("orders", "billing"),
        "catalog": ("catalog",),
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[services.billing]\nreplica = 2\n", "unknown field `replica` - at `services.billing`"),
        ("[gateway]\nport = 70000\n", "<= 65535 - at `gateway.port`"),
        ("[runtime]\ntimeout = 0\n", "> 0.0 - at `runtime.timeout`"),
        ("[app]\nversion = 'one'\n", "app.version"),
        ("[gatway]\nport = 1\n", "unknown field `gatway`"),
        ("[app\n", "not valid TOML"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "cleave.toml").write_text(text)
    with pytest.raises(cleave.ConfigError, match=match):
        load_plan(tmp_path)


def test_environment_variables_in_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cleave.toml").write_text(
        '[services.a]\ndatabase = "${DB_URL}"\n[services.b]\ndatabase = "${NOPE:-sqlite+aiosqlite:///x}"\n'
    )
    monkeypatch.setenv("DB_URL", "postgresql+asyncpg://h/a")
    plan = load_plan(tmp_path)
    assert plan.service("a").database == "postgresql+asyncpg://h/a"
    assert plan.service("b").database == "sqlite+aiosqlite:///x"
    monkeypatch.delenv("DB_URL")
    with pytest.raises(cleave.ConfigError, match="DB_URL is not set"):
        load_plan(tmp_path)


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ({"g": ("ghost",)}, "'ghost', which is not a service"),
        ({"g": ("a",), "h": ("a",)}, "'a' is in both 'g' and 'h'"),
        ({"b": ("a",)}, "group name 'b' clashes"),
    ],
)
def test_bad_groups(groups: dict[str, tuple[str, ...]], match: str) -> None:
    with pytest.raises(cleave.ConfigError, match=match):
        Plan(groups=groups).groups_for(["a", "b"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cluster = 2", r"cluster = 2: use 1 .* or 3 to 9 nodes; JetStream needs a majority"),
        ("cluster = -1", r"cluster = -1: use 1"),
        ("cluster = 10", r"cluster = 10: use 1"),
        ("stream_replicas = 3", r"stream_replicas = 3 but cluster = 1: each replica needs"),
        ("cluster = 3\nstream_replicas = 6", r"stream_replicas = 6: use 1 to 5"),
        ("cluster = 3\nstream_replicas = -1", r"stream_replicas = -1: use 1 to 5"),
        ("cluster = 3\nurl = 'nats://n1:4222'", r"url names an external NATS: drop one"),
    ],
)
def test_nats_cluster_mistakes_are_named(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "cleave.toml").write_text(f"[nats]\n{text}\n")
    with pytest.raises(cleave.ConfigError, match=match):
        load_plan(tmp_path)


@pytest.mark.parametrize(
    ("text", "cluster", "replicas"),
    [
        ("", 1, 1),
        ("cluster = 3", 3, 3),
        ("cluster = 5", 5, 3),
        ("cluster = 5\nstream_replicas = 5", 5, 5),
        ("cluster = 3\nstream_replicas = 1", 3, 1),
        # An external cluster: Cleave cannot count its nodes, so the plan says.
        ("url = 'nats://n1:4222,nats://n2:4222'\nstream_replicas = 3", 1, 3),
    ],
)
def test_stream_replicas_default_to_three_on_a_cluster(
    tmp_path: Path, text: str, cluster: int, replicas: int
) -> None:
    (tmp_path / "cleave.toml").write_text(f"[nats]\n{text}\n")
    nats = load_plan(tmp_path).nats
    assert (nats.cluster, nats.replicas) == (cluster, replicas)


def test_a_cluster_url_is_masked_node_by_node() -> None:
    from cleave.config import mask_url

    assert mask_url("nats://u:pw@n1:4222,nats://u:pw@n2:4222") == (
        "nats://u:***@n1:4222,nats://u:***@n2:4222"
    )
