"""``cleave build``: check the plan, then write one target's artifacts into an empty folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from cleave.app import LoadedApp
from cleave.deploy import checks, compose, github, image, kubernetes, monitoring
from cleave.deploy.model import Deployment
from cleave.errors import ConfigError

__all__ = ["OVERLAYS", "TARGETS", "build"]

TARGETS = ("kubernetes", "compose", "github")
OVERLAYS = kubernetes.OVERLAYS


def _prepare(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(
                f"--out {out} is not empty; give an empty folder, or --force to replace it"
            )
        if (out / ".git").exists() or (
            (out / "cleave.toml").exists() and not (out / "image").exists()
        ):
            raise ConfigError(
                f"--out {out} looks like a project folder (it holds .git or an app); "
                "not replacing it even with --force"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build(
    loaded: LoadedApp,
    target: str,
    out: Path,
    *,
    overlay: str | None = None,
    force: bool = False,
    lock: Path | None = None,
) -> list[Path]:
    """Write ``target``'s artifacts for ``loaded`` into ``out``; the files written."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    if overlay is not None:
        if target != "kubernetes":
            raise ConfigError(f"--overlay is for --target kubernetes, not {target}")
        if overlay not in OVERLAYS:
            raise ConfigError(f"unknown overlay {overlay!r}: use one of {', '.join(OVERLAYS)}")
    dep = Deployment.of(loaded)
    checks.check_plan(dep)
    out = out.resolve()
    if target == "github":
        # Into a repository's root: only the workflow file is written, never the folder cleared.
        workflow = github.path(dep, out)
        if workflow.exists() and not force:
            raise ConfigError(f"{workflow} exists; --force to replace it")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder")
        github.render(dep, out)
        return [workflow]
    if out == loaded.root.resolve():
        raise ConfigError(f"--out {out} is the app's own folder; give a folder of its own")
    _prepare(out, force)
    image.render(dep, out, lock)
    if target == "compose":
        compose.render(dep, out)
    else:
        kubernetes.render(dep, out / "kubernetes")
        checks.check_dir(out / "kubernetes" / "base")
        monitoring.render(dep, out / "monitoring")
        if overlay is not None:
            # Only the chosen overlay is kept, for a folder that deploys one environment.
            for other in OVERLAYS:
                if other != overlay:
                    shutil.rmtree(out / "kubernetes" / "overlays" / other)
    return sorted(
        p for p in out.rglob("*") if p.is_file() and "app" not in p.relative_to(out).parts[:2]
    )
