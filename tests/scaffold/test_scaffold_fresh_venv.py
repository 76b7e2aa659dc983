"""A new project, as a user gets it: a fresh venv, Cleave installed from this checkout
(built as a wheel, with its dependencies), then `cleave new` and `cleave add service`; the
project's ruff, mypy --strict and tests (through the pytest plugin's entry point) pass.

The venv is new and empty, as a user's would be; only the installer and the source of the
packages differ from a user's `pip install`: uv, with no index, from the wheelhouse that
`make wheelhouse` downloaded at install time (tests/wheelhouse.py). The same pinned
versions, and no network during the test; uv installs them in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cleave.scaffold import DEV_TOOLS
from conftest import ROOT
from wheelhouse import offline_env, uv

pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.nats]


def run(*args: str | Path, cwd: Path, timeout: float = 300, **extra: str) -> str:
    # Not this checkout's PYTHONPATH: the project must work with what was installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n"
        f"{result.stderr}"
    )
    return result.stdout


def check(venv: Path, project: Path) -> str:
    """Lint, types and the project's own tests; the tests' summary line."""
    bin_ = venv / "bin"
    run(bin_ / "ruff", "check", ".", cwd=project)
    run(bin_ / "ruff", "format", "--check", ".", cwd=project)
    run(bin_ / "mypy", cwd=project)
    out = run(bin_ / "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    return out.strip().splitlines()[-1]


def test_a_new_project_passes_its_checks_in_a_fresh_venv(tmp_path: Path) -> None:
    venv, offline = tmp_path / "venv", offline_env(tmp_path)
    run(uv(), "venv", "--quiet", "--python", sys.executable, venv, cwd=tmp_path, **offline)
    install = [uv(), "pip", "install", "--quiet", "--python", venv / "bin" / "python"]
    run(*install, ROOT, *DEV_TOOLS, cwd=tmp_path, **offline)

    run(venv / "bin" / "cleave", "new", "hello", cwd=tmp_path)
    project = tmp_path / "hello"
    summary = check(venv, project)
    # 5 app tests in 2 placements, 2 unit tests: the plugin's fixtures ran them all.
    assert summary.startswith("12 passed"), summary

    run(venv / "bin" / "cleave", "add", "service", "orders", cwd=project)
    summary = check(venv, project)
    assert summary.startswith("15 passed"), summary
