"""What ``cleave contracts check`` compares with: the lock, a lock file, or a git revision.

At a git revision the app folder is extracted with ``git archive`` into a
temporary folder and snapshotted by ``cleave contracts snapshot`` in a fresh
interpreter: what is compared is the code at that revision (a committed lock
may lag behind it), and its modules cannot clash with the ones already
imported from the working tree.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cleave.errors import ConfigError
from cleave.schema_lock import LOCK_FILE, Lock, read

__all__ = ["at_revision", "baseline"]


def baseline(root: Path, against: str | None) -> tuple[Lock, str]:
    """What to compare the app in ``root`` with, and a label for it.

    ``against`` is None (the app's lock file), a path to a lock file, or a git
    revision: the app folder at that revision is snapshotted.
    """
    if against is None:
        return read(root / LOCK_FILE), LOCK_FILE
    if Path(against).is_file():
        return read(Path(against)), against
    return at_revision(root, against), f"git {against}"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)


def at_revision(root: Path, rev: str) -> Lock:
    """Snapshot the contracts of the app in ``root`` as they were at git revision ``rev``.

    The app folder at ``rev`` is extracted with ``git archive`` into a temporary
    folder and loaded by ``cleave contracts snapshot`` in a fresh interpreter,
    so its modules do not clash with the ones already imported from ``root``.
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise ConfigError(
            f"--against {rev}: {root} is not in a git repository, and {rev} is not a file; "
            "pass a lock file or a git revision"
        )
    toplevel = Path(top.stdout.decode().strip())
    relative = root.resolve().relative_to(toplevel.resolve()).as_posix() or "."
    archive = _git(toplevel, "archive", "--format=tar", rev, "--", relative)
    if archive.returncode != 0:
        raise ConfigError(
            f"--against {rev}: git cannot read {relative} at {rev} "
            f"({archive.stderr.decode().strip()}); pass a commit, branch or tag that has the app"
        )
    with tempfile.TemporaryDirectory(prefix="cleave-contracts-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        out = Path(tmp) / LOCK_FILE
        env = {**os.environ, "CLEAVE_STATE_DIR": str(Path(tmp) / ".cleave")}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cleave.cli",
                "contracts",
                "snapshot",
                str(Path(tmp) / relative),
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise ConfigError(
                f"--against {rev}: the app at {rev} does not load: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return read(out)
