"""Shared by the `cleave build` tests: the shop built once per session, and the validators.

The validators are the tools a cluster's owner runs (kubectl, kubernetes-validate,
checkov, hadolint, check-jsonschema, actionlint). A test skips when one is missing,
unless CLEAVE_REQUIRE_DEPLOY_TOOLS is set (CI sets it): then a missing tool fails.

The image's lock is made for real by uv, from the wheelhouse `make wheelhouse` downloaded
(tests/wheelhouse.py): `cleave build` reads uv's usual configuration, so no index is asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SHOP, cli
from wheelhouse import offline_env

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


#: What the session fixtures made. Test modules import the fixtures, so each module has its
#: own definitions; this keeps the work (a build, a lock) to once per session.
_made: dict[str, Any] = {}


@pytest.fixture(scope="session")
def grouped_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shop whose plan groups services."""
    if "shop" not in _made:
        root = tmp_path_factory.mktemp("app") / "shop"
        shutil.copytree(SHOP, root, ignore=shutil.ignore_patterns(".cleave", "__pycache__"))
        (root / "cleave.toml").write_text((SHOP / "cleave.toml").read_text() + GROUPS)
        _made["shop"] = root
    return _made["shop"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def built(grouped_shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cleave build --target kubernetes`, locking the requirements for real (uv, wheelhouse)."""
    if "built" not in _made:
        tool("uv")
        folder = tmp_path_factory.mktemp("build")
        out = folder / "out"
        cli("build", grouped_shop, "--target", "kubernetes", "--out", out, env=offline_env(folder))
        _made["built"] = out
    return _made["built"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def lock(built: Path) -> Path:
    return built / "image" / "requirements.lock"


@pytest.fixture(scope="session")
def rendered(built: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`kubectl kustomize` of each overlay, written to a file."""
    if "rendered" not in _made:
        kubectl = tool("kubectl")
        folder = tmp_path_factory.mktemp("rendered")
        out = {}
        for overlay in ("dev", "prod"):
            text = run(kubectl, "kustomize", built / "kubernetes" / "overlays" / overlay)
            out[overlay] = folder / f"{overlay}.yaml"
            out[overlay].write_text(text)
        _made["rendered"] = out
    return _made["rendered"]  # type: ignore[no-any-return]
