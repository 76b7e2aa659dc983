"""`cleave build --target kubernetes`: validated by kubectl, kubernetes-validate and checkov."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import built, grouped_shop, lock, rendered, run, tool  # noqa: F401 - fixtures
from typer.testing import CliRunner

from cleave.cli import app as cli_app
from cleave.config import load_plan

#: checkov findings that do not apply, and why.
CHECKOV_SKIPS = {
    # Cleave reads database URLs from the environment (`${VAR}` in cleave.toml), by design.
    "CKV_K8S_35",
    # The digest exists only once the image is pushed: pin it in the overlay's `images`.
    "CKV_K8S_43",
}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def of_kind(items: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in items if d["kind"] == kind}


def test_both_overlays_are_valid_kubernetes_and_a_typo_is_not(
    rendered: dict[str, Path], tmp_path: Path
) -> None:
    """One run of the validator (it takes seconds to load its schemas) over three files."""
    validate = tool("kubernetes-validate")
    broken = tmp_path / "broken.yaml"
    text = rendered["dev"].read_text()
    broken.write_text(text.replace("revisionHistoryLimit", "revisionHistoryLimt", 1))
    done = subprocess.run(
        [validate, "--strict", "--quiet", rendered["dev"], rendered["prod"], broken],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0, "the misspelt field passed strict validation"
    errors = [line for line in done.stdout.splitlines() if "ERROR" in line]
    assert errors, done.stdout
    assert all("broken.yaml" in line for line in errors), done.stdout
    assert any("revisionHistoryLimt" in line for line in errors)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_cleave_checks_pass_on_each_overlay(rendered: dict[str, Path], overlay: str) -> None:
    result = CliRunner().invoke(cli_app, ["build", "--check", str(rendered[overlay])])
    assert result.exit_code == 0, result.output
    assert "5 Deployment(s) pass the checks" in result.output


def test_checkov_passes_on_manifests_and_dockerfile(
    rendered: dict[str, Path], built: Path, tmp_path: Path
) -> None:
    checkov = tool("checkov")
    dockerfile = tmp_path / "Dockerfile"  # checkov finds Dockerfiles by name
    shutil.copy(built / "image" / "Dockerfile", dockerfile)
    out = run(
        checkov,
        "--skip-download",
        "--quiet",
        "--compact",
        "--framework", "kubernetes", "dockerfile",
        "--skip-check", ",".join(sorted(CHECKOV_SKIPS)),
        "-f", rendered["prod"],
        "-f", dockerfile,
    )  # fmt: skip
    assert "Failed checks: 0" in out
    assert "kubernetes scan results" in out
    assert "dockerfile scan results" in out


def test_hadolint_passes_on_the_dockerfile(built: Path) -> None:
    run(tool("hadolint"), built / "image" / "Dockerfile")


def test_a_deployment_per_group_running_cleave_serve(rendered: dict[str, Path]) -> None:
    items = docs(rendered["prod"])
    deployments = of_kind(items, "Deployment")
    assert set(deployments) == {
        "shop-storefront",
        "shop-checkout",
        "shop-shipping",
        "shop-notifications",
        "shop-gateway",
    }
    checkout = deployments["shop-checkout"]
    pod = checkout["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["serve", "/app", "--group", "checkout", "--admin-port", "8001"]
    assert container["image"] == "shop:1.0.0"
    env = {e["name"]: e for e in container["env"]}
    assert env["CLEAVE_NATS_URL"]["value"].count("tls://") == 3
    # Database URLs by reference only, one per service of the group.
    assert env["CLEAVE_DATABASE_URL_ORDERS"]["valueFrom"]["secretKeyRef"] == {
        "name": "shop-db-orders",
        "key": "url",
    }
    assert "CLEAVE_DATABASE_URL_CATALOG" not in env
    assert checkout["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"]
    assert sc["runAsNonRoot"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # The drain: the shop's 10 s timeout + 5 s; the grace: preStop 5 s + drain + 5 s.
    assert env["CLEAVE_GRACE"]["value"] == "15s"
    assert env["CLEAVE_ADMIN_HOST"]["value"] == "0.0.0.0"
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] == 25
    probes = [container[p] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert probes[1]["httpGet"]["path"] == "/healthz"
    assert probes[2]["httpGet"]["path"] == "/readyz"
    assert len({yaml.safe_dump(p) for p in probes}) == 3
    annotations = checkout["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8001"
    gateway = deployments["shop-gateway"]["spec"]["template"]["spec"]["containers"][0]
    assert gateway["args"] == ["gateway", "/app", "--port", "8000", "--admin-port", "8001"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


def test_around_each_deployment(rendered: dict[str, Path]) -> None:
    items = docs(rendered["prod"])
    deployments = of_kind(items, "Deployment")
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceAccount"):
        assert set(of_kind(items, kind)) == set(deployments), kind
    assert all(
        sa["automountServiceAccountToken"] is False
        for sa in of_kind(items, "ServiceAccount").values()
    )
    # Only the gateway listens for clients.
    assert set(of_kind(items, "Service")) == {"shop-gateway"}
    hpa = of_kind(items, "HorizontalPodAutoscaler")["shop-checkout"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    dev_hpa = of_kind(docs(rendered["dev"]), "HorizontalPodAutoscaler")["shop-checkout"]["spec"]
    assert (dev_hpa["minReplicas"], dev_hpa["maxReplicas"]) == (1, 2)
    assert {d["metadata"]["namespace"] for d in items if d["kind"] != "Namespace"} == {"shop"}


def test_a_migration_job_per_database(rendered: dict[str, Path]) -> None:
    jobs = of_kind(docs(rendered["prod"]), "Job")
    assert len(jobs) == 6
    job = jobs["shop-migrate-orders-1-0-0"]["spec"]["template"]["spec"]
    [container] = job["containers"]
    assert container["args"] == ["db", "upgrade", "/app", "--service", "orders"]
    assert [e["name"] for e in container["env"]] == [
        "CLEAVE_STATE_DIR",
        "CLEAVE_DATABASE_URL_ORDERS",
    ]
    assert job["restartPolicy"] == "Never"


def test_network_policies_allow_only_what_each_pod_talks_to(rendered: dict[str, Path]) -> None:
    policies = of_kind(docs(rendered["prod"]), "NetworkPolicy")
    deny = policies["shop-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    checkout = policies["shop-checkout"]["spec"]
    targets = [rule["to"][0]["podSelector"]["matchLabels"] for rule in checkout["egress"]]
    assert targets == [
        {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"},
        {"cleave.dev/database": "shop-orders"},
        {"cleave.dev/database": "shop-billing"},
    ]
    gateway = policies["shop-gateway"]["spec"]
    assert [r["ports"] for r in gateway["egress"]] == [[{"port": 4222}]]
    nats = policies["shop-nats"]["spec"]
    assert {"port": 6222} in nats["egress"][0]["ports"]
    dns = policies["shop-dns"]["spec"]["egress"][0]["ports"]
    assert {"port": 53, "protocol": "UDP"} in dns


def test_the_deployed_plan_takes_secrets_from_the_environment(built: Path, tmp_path: Path) -> None:
    plan_file = built / "kubernetes" / "base" / "cleave.toml"
    text = plan_file.read_text()
    assert "postgres" not in text
    assert "nats://" not in text
    (tmp_path / "cleave.toml").write_text(text)
    os.environ["CLEAVE_DATABASE_URL_ORDERS"] = "postgresql+asyncpg://shop:pw@db/shop_orders"
    try:
        plan = load_plan(tmp_path)
    finally:
        del os.environ["CLEAVE_DATABASE_URL_ORDERS"]
    assert plan.service("orders").database == "postgresql+asyncpg://shop:pw@db/shop_orders"
    assert plan.gateway.host == "0.0.0.0"
    assert plan.groups == {
        "storefront": ("catalog", "inventory"),
        "checkout": ("orders", "billing"),
    }


def test_nats_chart_values(built: Path) -> None:
    values = yaml.safe_load((built / "kubernetes" / "nats-values.yaml").read_text())
    config = values["config"]
    assert config["cluster"]["replicas"] == 3
    assert config["cluster"]["tls"]["enabled"]
    assert config["jetstream"]["fileStore"]["enabled"]
    assert config["nats"]["tls"]["enabled"]
    assert values["podDisruptionBudget"]["enabled"]
