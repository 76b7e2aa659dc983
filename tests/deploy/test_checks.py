"""Cleave's own checks catch a broken plan and hand-edited manifests, with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from deploy_support import built, grouped_shop, lock, rendered  # noqa: F401 - fixtures

from cleave.app import load
from cleave.deploy import checks
from cleave.deploy.model import Deployment, consumer_policy
from cleave.errors import ConfigError
from cleave.transport.base import ConsumerPolicy


def edited(source: Path, tmp_path: Path, change: Any) -> Path:
    docs = [d for d in yaml.safe_load_all(source.read_text()) if d]
    docs = [d for d in (change(d) for d in docs) if d is not None]
    out = tmp_path / "edited.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    return out


def container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def test_a_deployment_without_a_pdb_is_caught(rendered: dict[str, Path], tmp_path: Path) -> None:
    def drop(doc: dict[str, Any]) -> dict[str, Any] | None:
        pdb = doc["kind"] == "PodDisruptionBudget"
        return None if pdb and doc["metadata"]["name"] == "shop-checkout" else doc

    with pytest.raises(ConfigError, match="Deployment shop-checkout has no PodDisruptionBudget"):
        checks.check_dir(edited(rendered["prod"], tmp_path, drop))


def test_a_pdb_selecting_other_pods_does_not_count(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    def retarget(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] == "PodDisruptionBudget" and doc["metadata"]["name"] == "shop-shipping":
            doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "nothing"
        return doc

    with pytest.raises(ConfigError, match="shop-shipping has no PodDisruptionBudget"):
        checks.check_dir(edited(rendered["prod"], tmp_path, retarget))


def test_identical_probes_are_caught(rendered: dict[str, Path], tmp_path: Path) -> None:
    def same(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "shop-storefront":
            c = container(doc)
            c["readinessProbe"] = c["livenessProbe"]
        return doc

    with pytest.raises(ConfigError, match="shop-storefront container cleave: startup, liveness"):
        checks.check_dir(edited(rendered["dev"], tmp_path, same))


def test_a_missing_probe_is_caught(rendered: dict[str, Path], tmp_path: Path) -> None:
    def drop(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "shop-gateway":
            del container(doc)["startupProbe"]
        return doc

    with pytest.raises(ConfigError, match="shop-gateway container cleave has no startupProbe"):
        checks.check_dir(edited(rendered["dev"], tmp_path, drop))


def test_a_grace_period_shorter_than_the_handlers_is_caught(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    def shorten(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "shop-notifications":
            doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 12
        return doc

    with pytest.raises(
        ConfigError, match="terminationGracePeriodSeconds 12 is shorter than preStop"
    ):
        checks.check_dir(edited(rendered["prod"], tmp_path, shorten))


def test_a_longer_timeout_in_the_shipped_plan_outgrows_the_grace_period(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    """The plan in the ConfigMap counts: raise its timeout and every grace period is short."""

    def slower(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] == "ConfigMap":
            toml = doc["data"]["cleave.toml"]
            doc["data"]["cleave.toml"] = toml.replace("timeout = 10.0", "timeout = 60.0")
        return doc

    with pytest.raises(ConfigError, match=r"10 problem\(s\)") as caught:
        checks.check_dir(edited(rendered["prod"], tmp_path, slower))
    message = str(caught.value)
    assert "CLEAVE_GRACE 15 s (the drain on SIGTERM) is shorter than the longest handler" in message
    assert (
        "terminationGracePeriodSeconds 25 is shorter than preStop 5 s plus the drain (60 s"
        in message
    )


def set_grace(value: str) -> Any:
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "shop-checkout":
            for e in container(doc)["env"]:
                if e["name"] == "CLEAVE_GRACE":
                    e["value"] = value
        return doc

    return change


def test_a_drain_shorter_than_the_handlers_is_caught(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError, match=r"1 problem\(s\)\n.*shop-checkout container cleave: CLEAVE_GRACE 5 s"
    ):
        checks.check_dir(edited(rendered["prod"], tmp_path, set_grace("5s")))


def test_a_drain_longer_than_the_grace_period_is_caught(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError,
        match=r"terminationGracePeriodSeconds 25 is shorter than preStop 5 s plus the drain "
        r"\(120 s",
    ):
        checks.check_dir(edited(rendered["prod"], tmp_path, set_grace("2m")))


def test_a_drain_that_is_not_a_duration(rendered: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CLEAVE_GRACE 'soon' is not a duration"):
        checks.check_dir(edited(rendered["prod"], tmp_path, set_grace("soon")))


def test_an_ack_wait_shorter_than_the_event_handlers_is_caught(grouped_shop: Path) -> None:
    dep = Deployment.of(load(grouped_shop))
    checks.check_plan(dep)  # the runtime's own policy: the ack wait outlasts the handler
    assert consumer_policy(dep.plan).ack_wait == dep.plan.runtime.event_timeout + 5
    short = ConsumerPolicy(ack_wait=5.0)  # shorter than event_timeout = 10
    with pytest.raises(ConfigError, match="group storefront: consumers wait 5 s for an ack"):
        checks.check_plan(dep, policy=short)


def test_a_grace_period_under_the_handlers_in_the_plan_is_caught(grouped_shop: Path) -> None:
    dep = Deployment.of(load(grouped_shop))
    runtime = msgspec.structs.replace(dep.plan.runtime, event_timeout=45.0)
    plan = msgspec.structs.replace(dep.plan, runtime=runtime)
    slow = Deployment(**{**dep.__dict__, "plan": plan})
    assert slow.grace == 5 + 45 + 5 + 5  # the grace period follows the plan
    checks.check_plan(slow)
    with pytest.raises(ConfigError, match="grace period 20 s is shorter than preStop"):
        checks.check_plan(slow, grace=20)


def test_check_of_a_folder_without_deployments(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(ConfigError, match="holds no Kubernetes Deployment"):
        checks.check_dir(tmp_path)


def test_check_of_invalid_yaml(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(ConfigError, match=r"x\.yaml is not valid YAML"):
        checks.check_dir(tmp_path)
