"""Shared by the `cleave build` tests: the shop built once per session, and the validators.

The validators are the tools a cluster's owner runs (kubectl, kubernetes-validate,
checkov, hadolint, check-jsonschema, actionlint). A test skips when one is missing,
unless CLEAVE_REQUIRE_DEPLOY_TOOLS is set (CI sets it): then a missing tool fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SHOP, cli

BIN = Path(sys.executable).parent
#: The shop with two groups of two services, and four services alone.
GROUPS = '\n[groups]\nstorefront = ["catalog", "inventory"]\ncheckout = ["orders", "billing"]\n'


def tool(name: str) -> str:
    """The path of validator ``name``: the venv's, CLEAVE_<NAME>, or on PATH."""
    override = os.environ.get("CLEAVE_" + name.upper().replace("-", "_"))
    found = override or (str(BIN / name) if (BIN / name).exists() else shutil.which(name))
    if found:
        return found
    if os.environ.get("CLEAVE_REQUIRE_DEPLOY_TOOLS"):
        pytest.fail(f"{name} is not installed; .ci/run and the dev extra install it")
    pytest.skip(f"{name} is not installed")
    raise AssertionError  # unreachable


def run(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, (
        f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.fixture(scope="session")
def grouped_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shop whose plan groups services."""
    root = tmp_path_factory.mktemp("app") / "shop"
    shutil.copytree(SHOP, root, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
    (root / "cleave.toml").write_text((SHOP / "cleave.toml").read_text() + GROUPS)
    return root


@pytest.fixture(scope="session")
def built(grouped_shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cleave build --target kubernetes`, locking the requirements for real (uv, PyPI)."""
    if not (BIN / "uv").exists() and not shutil.which("uv"):
        tool("uv")
    out = tmp_path_factory.mktemp("build") / "out"
    cli("build", grouped_shop, "--target", "kubernetes", "--out", out)
    return out


@pytest.fixture(scope="session")
def lock(built: Path) -> Path:
    return built / "image" / "requirements.lock"


@pytest.fixture(scope="session")
def rendered(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """`kubectl kustomize` of each overlay, written to a file."""
    kubectl = tool("kubectl")
    folder = tmp_path_factory.mktemp("rendered")
    out = {}
    for overlay in ("dev", "prod"):
        text = run(kubectl, "kustomize", built / "kubernetes" / "overlays" / overlay)
        out[overlay] = folder / f"{overlay}.yaml"
        out[overlay].write_text(text)
    return out
