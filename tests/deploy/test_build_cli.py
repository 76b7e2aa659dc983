"""`cleave build` on the command line: what it writes, and every way to call it wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_support import built, grouped_shop, lock  # noqa: F401 - fixtures
from typer.testing import CliRunner

from cleave.cli import app
from conftest import SHOP


def build(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["build", *map(str, args)])
    return result.exit_code, result.output


def test_kubernetes_writes_the_image_manifests_and_monitoring(built: Path) -> None:
    for path in (
        "image/Dockerfile",
        "image/requirements.lock",
        "image/wheels/cleave-0.1.0-py3-none-any.whl",
        "image/app/cleave.toml",
        "kubernetes/base/kustomization.yaml",
        "kubernetes/overlays/dev/kustomization.yaml",
        "kubernetes/overlays/prod/kustomization.yaml",
        "kubernetes/nats-values.yaml",
        "monitoring/prometheus-rules.yaml",
        "monitoring/grafana-dashboard.json",
    ):
        assert (built / path).is_file(), path
    # The app is copied without its state; the app's own plan ships as it is.
    assert not (built / "image" / "app" / ".cleave").exists()


def test_one_overlay(grouped_shop: Path, lock: Path, tmp_path: Path) -> None:
    code, out = build(
        grouped_shop,
        "--target",
        "kubernetes",
        "--out",
        tmp_path / "o",
        "--overlay",
        "dev",
        "--lock",
        lock,
    )
    assert code == 0, out
    assert (tmp_path / "o/kubernetes/overlays/dev").is_dir()
    assert not (tmp_path / "o/kubernetes/overlays/prod").exists()


def test_an_unknown_target(tmp_path: Path) -> None:
    code, out = build(SHOP, "--target", "nomad", "--out", tmp_path / "o")
    assert code == 2
    assert "unknown target 'nomad': use one of kubernetes, compose, github" in out
    assert not (tmp_path / "o").exists()


def test_an_unknown_overlay(tmp_path: Path) -> None:
    code, out = build(SHOP, "--target", "kubernetes", "--out", tmp_path / "o", "--overlay", "qa")
    assert code == 2
    assert "unknown overlay 'qa': use one of dev, prod" in out


def test_an_overlay_for_another_target(tmp_path: Path) -> None:
    code, out = build(SHOP, "--target", "compose", "--out", tmp_path / "o", "--overlay", "dev")
    assert code == 2
    assert "--overlay is for --target kubernetes, not compose" in out


def test_an_out_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    code, out = build(SHOP, "--target", "compose", "--out", tmp_path / "o")
    assert code == 2
    assert "is not empty; give an empty folder, or --force to replace it" in out
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_force_replaces_a_previous_build(grouped_shop: Path, lock: Path, tmp_path: Path) -> None:
    (tmp_path / "o" / "image").mkdir(parents=True)
    (tmp_path / "o" / "stale.txt").write_text("old")
    code, out = build(
        grouped_shop, "--target", "compose", "--out", tmp_path / "o", "--force", "--lock", lock
    )
    assert code == 0, out
    assert not (tmp_path / "o" / "stale.txt").exists()
    assert (tmp_path / "o" / "compose.yaml").is_file()


def test_force_never_replaces_a_project_folder(tmp_path: Path) -> None:
    (tmp_path / "o" / ".git").mkdir(parents=True)
    code, out = build(SHOP, "--target", "compose", "--out", tmp_path / "o", "--force")
    assert code == 2
    assert "looks like a project folder" in out
    assert (tmp_path / "o" / ".git").is_dir()


def test_github_writes_into_a_repository_and_replaces_only_with_force(tmp_path: Path) -> None:
    """The workflow goes into the repository's root, beside what is there."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "README.md").write_text("mine")
    code, out = build(SHOP, "--target", "github", "--out", tmp_path)
    assert code == 0, out
    workflow = tmp_path / ".github" / "workflows" / "shop.yml"
    assert workflow.is_file()
    assert (tmp_path / "README.md").read_text() == "mine"
    code, out = build(SHOP, "--target", "github", "--out", tmp_path)
    assert code == 2
    assert "shop.yml exists; --force to replace it" in out
    workflow.write_text("old")
    code, out = build(SHOP, "--target", "github", "--out", tmp_path, "--force")
    assert code == 0, out
    assert workflow.read_text() != "old"


@pytest.mark.parametrize("target", ["github", "compose"])
def test_out_is_a_file(tmp_path: Path, target: str) -> None:
    (tmp_path / "o").write_text("x")
    code, out = build(SHOP, "--target", target, "--out", tmp_path / "o")
    assert code == 2
    assert "is a file; give a folder" in out


def test_out_is_the_app_folder(grouped_shop: Path) -> None:
    code, out = build(grouped_shop, "--target", "compose", "--out", grouped_shop, "--force")
    assert code == 2
    assert "is the app's own folder" in out


def test_target_and_out_are_required(tmp_path: Path) -> None:
    code, out = build(SHOP, "--out", tmp_path / "o")
    assert code == 2
    assert "give --target" in out
    code, out = build(SHOP, "--target", "compose")
    assert code == 2
    assert "--out DIR" in out


def test_check_takes_no_target(tmp_path: Path) -> None:
    code, out = build("--check", tmp_path, "--target", "kubernetes")
    assert code == 2
    assert "--check takes no --target or --out" in out


def test_check_of_a_missing_folder(tmp_path: Path) -> None:
    code, out = build("--check", tmp_path / "nope")
    assert code == 2
    assert "does not exist: give the folder `cleave build` wrote" in out


def test_a_missing_app(tmp_path: Path) -> None:
    code, out = build(tmp_path / "nope", "--target", "github", "--out", tmp_path / "o")
    assert code == 2
    assert "no such directory" in out


def test_a_lock_that_does_not_exist(tmp_path: Path) -> None:
    code, out = build(
        SHOP, "--target", "compose", "--out", tmp_path / "o", "--lock", tmp_path / "no.lock"
    )
    assert code == 2
    assert "no such file; give a requirements lock with hashes" in out


def test_a_lock_without_hashes(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("msgspec==0.22.0\n")
    code, out = build(
        SHOP, "--target", "compose", "--out", tmp_path / "o", "--lock", tmp_path / "plain.txt"
    )
    assert code == 2
    assert "has no --hash lines" in out


@pytest.mark.parametrize("target", ["kubernetes", "compose"])
def test_a_plan_error_stops_before_writing(tmp_path: Path, target: str) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "cleave.toml").write_text('[app]\ntarget = "shop.app:app"\n[groups]\nx = ["nope"]\n')
    code, out = build(app_dir, "--target", target, "--out", tmp_path / "o")
    assert code == 2
    assert "[groups] x lists 'nope', which is not a service" in out
    assert not (tmp_path / "o").exists()


def test_check_of_a_whole_build_folder(built: Path) -> None:
    """The base's Deployments, with the plan file beside its kustomization."""
    code, out = build("--check", built)
    assert code == 0, out
    assert "5 Deployment(s) pass the checks" in out
