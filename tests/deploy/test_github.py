"""`cleave build --target github`: schema, actionlint, the paths per service, the skip path."""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import run, tool

from conftest import SHOP, cli


@pytest.fixture(scope="module")
def workflow_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("github") / "out"
    cli("build", SHOP, "--target", "github", "--out", out)
    return out / ".github" / "workflows" / "shop.yml"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_the_workflow_meets_the_schema_and_actionlint(workflow_file: Path) -> None:
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", workflow_file)
    run(tool("actionlint"), "-no-color", workflow_file)


def test_actionlint_is_not_a_rubber_stamp(workflow_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        workflow_file.read_text().replace("needs.changes.outputs", "needs.change.outputs")
    )
    done = subprocess.run([tool("actionlint"), "-no-color", broken], capture_output=True, text=True)
    assert done.returncode == 1
    assert "change" in done.stdout


def changed(filters: dict[str, list[str]], path: str) -> list[str]:
    """What dorny/paths-filter reports for one changed file (picomatch globs; ** spans folders)."""
    return [s for s, globs in filters.items() if any(fnmatch.fnmatch(path, g) for g in globs)]


def test_a_change_selects_the_services_it_touches(workflow_file: Path) -> None:
    steps = load(workflow_file)["jobs"]["changes"]["steps"]
    filters = yaml.safe_load(steps[1]["with"]["filters"])
    assert set(filters) == {
        "catalog",
        "inventory",
        "orders",
        "billing",
        "shipping",
        "notifications",
    }
    prefix = "examples/shop/shop/"  # the app's folder, from the repository's root
    assert changed(filters, prefix + "services/billing.py") == ["billing"]
    assert changed(filters, prefix + "contracts/orders.py") == ["orders"]
    assert changed(filters, prefix + "migrations/shipping/versions/x_add.py") == ["shipping"]
    assert len(changed(filters, "examples/shop/cleave.toml")) == 6
    assert changed(filters, "docs/readme.md") == []


def test_the_matrix_runs_only_the_changed_services(workflow_file: Path) -> None:
    jobs = load(workflow_file)["jobs"]
    assert jobs["test"]["strategy"]["matrix"]["service"] == (
        "${{ fromJSON(needs.changes.outputs.services) }}"
    )
    assert jobs["test"]["if"] == "${{ needs.changes.outputs.services != '[]' }}"
    assert jobs["contracts"]["steps"][-1]["run"].strip() == "cleave contracts check examples/shop"
    assert jobs["image"]["needs"] == "checks"
    assert jobs["rollout"]["needs"] == "image"


@pytest.mark.parametrize(
    ("tests", "contracts", "passes"),
    [
        ("skipped", "success", True),  # no service changed: the required check still passes
        ("success", "success", True),
        ("failure", "success", False),
        ("cancelled", "success", False),
        ("skipped", "failure", False),
    ],
)
def test_the_required_check_passes_when_tests_were_skipped(
    workflow_file: Path, tests: str, contracts: str, passes: bool
) -> None:
    """The `checks` job's own script, run by bash with what GitHub would give it."""
    step = load(workflow_file)["jobs"]["checks"]["steps"][0]
    env = {"CHANGES": "success", "TESTS": tests, "CONTRACTS": contracts, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True)
    assert (done.returncode == 0) is passes
