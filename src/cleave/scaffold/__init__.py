"""New projects and new services, from templates shipped with Cleave.

``cleave new PATH`` writes a project that runs, tests and type-checks as it
stands: two services (one calls the other, one consumes the other's event),
their contracts and migrations, a gateway route, and tests that run in both
placements through Cleave's pytest plugin. ``cleave add service NAME`` adds a
service to such a project and registers it in the app module.

Templates live in ``templates/`` (package data); ``{{key}}`` marks what is
filled in, and a ``PACKAGE`` folder is named after the project's package.
"""

from __future__ import annotations

import datetime as dt
import keyword
import re
import secrets
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from cleave.errors import ConfigError

__all__ = ["DEV_TOOLS", "check_name", "class_name", "new_project", "render"]

#: The tools a new project's ``dev`` extra pins: the versions Cleave's own suite runs.
DEV_TOOLS = ("pytest==9.2.0", "pytest-asyncio==1.5.0", "ruff==0.17.6", "mypy==2.4.1")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_FIELD = re.compile(r"\{\{(\w+)\}\}")
#: Names a project's package may not take: they would shadow what it imports.
_TAKEN = {"cleave", "tests", "test", "conftest", "setup", *sys.stdlib_module_names}


def check_name(name: str, what: str) -> str:
    """``name`` if it can name a package or a service; ConfigError saying why not."""
    if not _NAME.match(name):
        raise ConfigError(
            f"{what} {name!r} is not a valid name: use lowercase letters, digits and "
            "underscores, starting with a letter (e.g. 'orders' or 'order_history')"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ConfigError(f"{what} {name!r} is a Python keyword; choose another name")
    return name


def class_name(name: str) -> str:
    """``order_history`` -> ``OrderHistory``."""
    return "".join(part.capitalize() for part in name.split("_") if part)


def render(text: str, fields: dict[str, str]) -> str:
    """``text`` with every ``{{key}}`` replaced; a key without a value is a bug here."""

    def value(match: re.Match[str]) -> str:
        return fields[match.group(1)]

    return _FIELD.sub(value, text)


def templates(kind: str) -> Traversable:
    return resources.files("cleave.scaffold") / "templates" / kind


def _revision_fields() -> dict[str, str]:
    return {
        "revision": secrets.token_hex(6),
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }


def _copy_tree(source: Traversable, target: Path, fields: dict[str, str]) -> list[Path]:
    written: list[Path] = []
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        name = entry.name.replace("PACKAGE", fields["package"])
        if entry.is_dir():
            written += _copy_tree(entry, target / name, fields)
            continue
        if not name.endswith(".tmpl"):
            continue
        name = name.removesuffix(".tmpl")
        own = fields
        if name == "first.py":  # a migration: its own revision id, named as Alembic would
            own = {**fields, **_revision_fields()}
            name = f"{own['revision']}_create_{target.parent.name}_tables.py"
        elif name == "gitignore":
            name = ".gitignore"
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(entry.read_text(), own))
        written.append(path)
    return written


def new_project(path: Path, name: str | None = None) -> tuple[str, list[Path]]:
    """Write a new project into ``path`` (absent or empty); its package name and files.

    ``name`` defaults to the folder's name.
    """
    from cleave import __version__
    from cleave.data.migrations import init

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        kind = "folder" if path.is_dir() else "file"
        raise ConfigError(
            f"{path} already exists and is a non-empty {kind}; give a new or empty folder"
        )
    package = check_name(name if name is not None else path.resolve().name, "project name")
    if package in _TAKEN:
        raise ConfigError(
            f"project name {package!r} would shadow a module of the same name (Python's "
            f"standard library, Cleave or pytest); pass another with --name"
        )
    fields = {
        "package": package,
        "distribution": package.replace("_", "-"),
        "cleave_version": __version__,
        "dev_tools": ", ".join(f'"{t}"' for t in DEV_TOOLS),
    }
    path.mkdir(parents=True, exist_ok=True)
    written = _copy_tree(templates("project"), path, fields)
    for service in ("greeter", "visits"):  # the template Alembic renders new revisions from
        init(path / package / "migrations" / service)
    return package, written
