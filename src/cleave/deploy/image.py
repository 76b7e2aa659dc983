"""The image: one for every group, its dependencies locked by hash, running as a numeric user.

``cleave build`` writes a complete Docker build context in ``OUT/image``:

- ``wheels/cleave-<version>-py3-none-any.whl``: Cleave itself, packed from the
  package that runs the command (so an editable checkout ships what it runs),
  byte for byte the same on every build (fixed timestamps and order);
- ``requirements.lock``: every dependency pinned with its ``--hash`` lines, resolved
  by ``uv pip compile --generate-hashes --universal`` from Cleave's own pins and the
  app's ``requirements.txt``, plus the wheel above with its hash; or a lock you give
  (``--lock``), to which the wheel is added;
- ``app/``: the app's folder, without its state, caches and the output itself;
- ``Dockerfile``: installs the lock with ``--require-hashes`` in a build stage and
  copies the virtualenv into a slim runtime stage.

The group is chosen by the arguments: ``ENTRYPOINT ["cleave"]``, and each
Deployment or compose service passes ``serve /app --group NAME``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import cleave
from cleave.deploy.model import APP_DIR, Deployment
from cleave.errors import ConfigError

__all__ = ["BASE_IMAGE", "UID", "dockerfile", "render", "wheel"]

#: Pinned by tag; a registry digest can be added where the image is built.
BASE_IMAGE = "python:3.11.11-slim-bookworm"
#: What the lock is resolved for: the base image's CPython and glibc (bookworm: 2.36), amd64.
#: Not ``--universal``: that also resolves the Windows and macOS branches of every marker
#: (colorama for click on Windows, ...), which the image never installs and which an index
#: holding only Linux wheels (a mirror, a wheelhouse) cannot satisfy. Hashes from PyPI
#: cover every file of each pinned version, so an arm64 build of the image installs the
#: same lock; only a dependency whose markers name a machine could differ.
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-manylinux_2_36"
UID = 10001
_SKIP = {"__pycache__", ".cleave", ".git", ".venv", ".pytest_cache", ".mypy_cache", "node_modules"}


def render(dep: Deployment, out: Path, lock: Path | None) -> None:
    context = out / "image"
    context.mkdir(parents=True, exist_ok=True)
    whl = wheel(context / "wheels")
    _copy_app(dep.root, context / "app", skip=out.resolve())
    (context / "requirements.in").write_text(_requirements_in(dep))
    if lock is not None:
        if not lock.is_file():
            raise ConfigError(f"--lock {lock}: no such file; give a requirements lock with hashes")
        text = _without_cleave(lock.read_text())
        if "--hash=" not in text:
            raise ConfigError(
                f"--lock {lock} has no --hash lines; write one with "
                "`uv pip compile --generate-hashes` (or pip-compile --generate-hashes)"
            )
    else:
        text = _compile(context / "requirements.in")
    digest = hashlib.sha256(whl.read_bytes()).hexdigest()
    text = text.rstrip("\n") + f"\n./wheels/{whl.name} \\\n    --hash=sha256:{digest}\n"
    (context / "requirements.lock").write_text(text)
    (context / "Dockerfile").write_text(dockerfile(dep))
    (context / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\nrequirements.in\n")


def dockerfile(dep: Deployment) -> str:
    port, gateway = dep.admin_port, dep.gateway_port
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/healthz')"
    return f"""\
# syntax=docker/dockerfile:1
# The image of {dep.app} {dep.version}, written by `cleave build`: one for every group.
# Build it from this folder: docker build -t {dep.image} .
FROM {BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY requirements.lock ./
COPY wheels/ ./wheels/
# Every file checked against its hash; nothing resolved at build time.
RUN python -m venv /opt/venv \\
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock

FROM {BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    CLEAVE_STATE_DIR=/tmp/cleave
COPY --from=build /opt/venv /opt/venv
COPY --chown=0:0 app/ {APP_DIR}/
WORKDIR {APP_DIR}
USER {UID}:{UID}
EXPOSE {gateway} {port}
# The admin port of `cleave serve`; the gateway's compose service and the Kubernetes
# probes ask their own endpoints instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \\
    CMD ["python", "-c", "{probe}"]
ENTRYPOINT ["cleave"]
CMD ["serve", "{APP_DIR}", "--group", "{dep.groups[0].name}", "--admin-port", "{port}"]
"""


def _requirements_in(dep: Deployment) -> str:
    """Cleave's own pinned requirements, then the app's ``requirements.txt``."""
    lines = ["# What the image needs besides Cleave's wheel: written by `cleave build`."]
    try:
        requires = importlib.metadata.requires("cleave") or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "cleave is not installed as a distribution (no metadata): install it with pip"
        ) from None
    lines += [r for r in requires if "extra ==" not in r]
    own = dep.root / "requirements.txt"
    if own.is_file():
        lines += ["# The app's requirements.txt", *own.read_text().splitlines()]
    return "\n".join(lines) + "\n"


def _uv() -> str:
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found,unused-ignore]

        return str(find_uv_bin())
    except ImportError:
        found = shutil.which("uv")
        if found is None:
            raise ConfigError(
                "no uv to lock the image's requirements with hashes: `pip install uv`, or pass "
                "--lock FILE (a requirements lock with --hash lines)"
            ) from None
        return found


def _compile(requirements: Path) -> str:
    """Resolve ``requirements`` for the image's Python, with every file's hash.

    uv is configured the usual way (``UV_INDEX_URL``, ``UV_FIND_LINKS``, ``UV_OFFLINE``,
    ``UV_CONFIG_FILE``, a ``uv.toml``): a private index or a wheelhouse works unchanged.
    """
    cmd = [
        _uv(),
        "pip",
        "compile",
        requirements.name,
        "--generate-hashes",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PYTHON_PLATFORM,
        "--no-header",
        "--quiet",
    ]
    done = subprocess.run(cmd, cwd=requirements.parent, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"locking the image's requirements failed: {last}")
    return done.stdout


def _without_cleave(text: str) -> str:
    """A lock without a previous build's wheel line (it is added again, with its new hash)."""
    return re.sub(r"^\./wheels/cleave-[^\n]*\\\n\s+--hash=[^\n]*\n?", "", text, flags=re.M)


def _copy_app(root: Path, target: Path, skip: Path) -> None:
    if target.exists():
        shutil.rmtree(target)

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).resolve()
        return {n for n in names if n in _SKIP or n.endswith(".pyc") or here / n == skip}

    shutil.copytree(root, target, ignore=ignore)


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def wheel(folder: Path) -> Path:
    """Pack the running ``cleave`` package as a wheel, reproducibly (same bytes each time)."""
    package = Path(cleave.__file__).parent
    version = importlib.metadata.version("cleave")
    dist_info = f"cleave-{version}.dist-info"
    entries: list[tuple[str, bytes]] = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package.parent)
        if path.is_file() and not ({"__pycache__"} & set(rel.parts)) and path.suffix != ".pyc":
            entries.append((rel.as_posix(), path.read_bytes()))
    metadata = importlib.metadata.distribution("cleave").read_text("METADATA") or ""
    entries += [
        (f"{dist_info}/METADATA", metadata.encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: cleave build\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
        (f"{dist_info}/entry_points.txt", b"[console_scripts]\ncleave = cleave.cli:main\n"),
    ]
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in entries)
    record += f"{dist_info}/RECORD,,\n"
    entries.append((f"{dist_info}/RECORD", record.encode()))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("cleave-*.whl"):
        old.unlink()
    target = folder / f"cleave-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return target
