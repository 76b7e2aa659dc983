"""The image's build context: a lock of hashes that really installs, and a reproducible wheel."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_support import built, grouped_shop, lock, tool  # noqa: F401 - fixtures

from cleave.deploy.image import PYTHON_PLATFORM, PYTHON_VERSION, wheel
from wheelhouse import offline_env


def test_every_requirement_is_pinned_with_hashes(lock: Path) -> None:
    text = lock.read_text()
    entries = re.split(r"\n(?=[^\s#])", text.strip())
    names = [e.split("==")[0] for e in entries if "==" in e.split()[0]]
    assert {"msgspec", "nats-py", "sqlalchemy", "alembic"} <= set(names)
    for entry in entries:
        if entry.startswith("#"):
            continue
        first = entry.split()[0]
        assert "==" in first or first.startswith("./wheels/cleave-"), entry
        assert "--hash=sha256:" in entry, entry


def test_the_lock_names_the_wheel_by_its_hash(built: Path, lock: Path) -> None:
    [whl] = (built / "image" / "wheels").glob("cleave-*.whl")
    digest = hashlib.sha256(whl.read_bytes()).hexdigest()
    assert f"./wheels/{whl.name} \\\n    --hash=sha256:{digest}" in lock.read_text()


def test_the_wheel_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    one = wheel(tmp_path / "a").read_bytes()
    two = wheel(tmp_path / "b").read_bytes()
    assert one == two
    names = zipfile.ZipFile(tmp_path / "a" / "cleave-0.1.0-py3-none-any.whl").namelist()
    assert "cleave/cli.py" in names
    assert "cleave/observability/dashboard.html" in names
    assert "cleave-0.1.0.dist-info/entry_points.txt" in names
    assert not [n for n in names if "__pycache__" in n]


def test_the_dockerfile(built: Path) -> None:
    text = (built / "image" / "Dockerfile").read_text()
    assert text.count("FROM python:3.11.11-slim-bookworm") == 2
    assert "--require-hashes -r requirements.lock" in text
    assert "\nUSER 10001:10001\n" in text
    assert '\nENTRYPOINT ["cleave"]\n' in text


@pytest.mark.slow
def test_the_lock_installs_with_hashes_checked_and_runs_the_app(
    built: Path, tmp_path: Path
) -> None:
    """The Dockerfile's build stage in a fresh virtualenv; then the app's contracts check.

    From the wheelhouse, the lock names the one file of each version found there, for the
    image's platform: this machine must be that platform to install it.
    """
    uv = tool("uv")
    here = (f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())
    glibc = tuple(int(n) for n in platform.libc_ver()[1].split(".") if n.isdigit())
    if here != (PYTHON_VERSION, "x86_64") or glibc < (2, 36):
        pytest.skip(f"the lock is for {PYTHON_PLATFORM}, CPython {PYTHON_VERSION}; this is {here}")
    venv = tmp_path / "venv"
    context = built / "image"
    env = {**os.environ, **offline_env(tmp_path), "VIRTUAL_ENV": str(venv)}
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, venv], env=env, check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", "requirements.lock"],
        cwd=context,
        env=env,
        check=True,
        timeout=300,
    )
    done = subprocess.run(
        [venv / "bin" / "cleave", "contracts", "check", "."],
        cwd=context / "app",
        capture_output=True,
        text=True,
        env={"CLEAVE_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
