"""A new project, as a user gets it: a fresh venv, Cleave installed from this checkout
(as a wheel, with its dependencies), then `cleave new` and `cleave add service`; the
project's ruff, mypy --strict and tests (through the pytest plugin's entry point) pass.

The slow test of the suite (a venv and pip install): one test, run once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cleave.scaffold import DEV_TOOLS
from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.nats]


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> str:
    # Not this checkout's PYTHONPATH: the project must work with what pip installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
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


@pytest.mark.timeout(900)  # pip downloads and installs ~60 packages; on a busy machine, minutes
def test_a_new_project_passes_its_checks_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    # --no-compile: bytecode is written on first import anyway; compiling every
    # installed module up front is most of pip's time.
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile"]
    run(*pip, "--disable-pip-version-check", ROOT, *DEV_TOOLS, cwd=tmp_path)

    run(venv / "bin" / "cleave", "new", "hello", cwd=tmp_path)
    project = tmp_path / "hello"
    summary = check(venv, project)
    # 5 app tests in 2 placements, 2 unit tests: the plugin's fixtures ran them all.
    assert summary.startswith("12 passed"), summary

    run(venv / "bin" / "cleave", "add", "service", "orders", cwd=project)
    summary = check(venv, project)
    assert summary.startswith("15 passed"), summary
