"""The wheelhouse: the tests that install packages install from it, never from an index.

`make wheelhouse` (a prerequisite of `make test`, so `.ci/run` makes it) downloads into
the venv's ``wheelhouse/`` what those tests install: this checkout's dependencies and build
backend, the dev tools `cleave new` pins, and the image's requirements for the image's
platform. The test run itself then needs no network: uv is configured (a config file of
its own, named by ``UV_CONFIG_FILE``) with no index, offline, and the wheelhouse as its
only source, so a missing wheel is an error, not a download.

Without a wheelhouse (pytest run without make) those tests skip, naming the make target;
with CLEAVE_REQUIRE_DEPLOY_TOOLS set (CI), they fail instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

#: Made by `make wheelhouse` in the venv that runs the tests.
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CLEAVE_REQUIRE_DEPLOY_TOOLS"):
        pytest.fail(reason)
    pytest.skip(reason)


def wheelhouse() -> Path:
    """The wheelhouse, once `make wheelhouse` has finished it; else skip (or fail in CI)."""
    if WHEELHOUSE.is_dir() and any(WHEELHOUSE.parent.glob(".wheelhouse-*")):
        return WHEELHOUSE
    _missing(f"no wheelhouse at {WHEELHOUSE}: run `make wheelhouse` (make test does)")


def uv() -> str:
    """The uv of the dev extra."""
    try:
        from uv import find_uv_bin
    except ImportError:
        _missing("uv is not installed; the dev extra installs it")
    return str(find_uv_bin())


def offline_env(folder: Path) -> dict[str, str]:
    """Environment variables that make uv install and resolve from the wheelhouse alone.

    The settings go in a config file (written in ``folder``) because uv reads no
    environment variable for ``--no-index``; the config file also replaces the user's.
    """
    config = folder / "uv-offline.toml"
    config.write_text(
        f"no-index = true\noffline = true\nfind-links = [{json.dumps(str(wheelhouse()))}]\n"
        'python-downloads = "never"\n'
    )
    return {"UV_CONFIG_FILE": str(config), "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never"}
