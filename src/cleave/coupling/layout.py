"""Which service each file belongs to.

A file of the app's repository belongs to a service by the first rule that
matches its path inside the app folder (docs/coupling.md has them with
examples):

1. ``[coupling] ignore`` globs: no one's (generated files such as
   ``contracts.lock.json``);
2. ``[coupling.paths]`` globs, service by service: what the team says;
3. the service's own module, and its folder when that folder holds no other
   service and not the app module (``shop/orders/`` for ``shop/orders/service.py``);
   the module of each contract it serves, when no other service's contract is
   in it; its migrations folder (``cleave.Database(migrations=...)``);
4. a folder named after the service anywhere in the path
   (``shop/migrations/orders/...``), else a file named after it
   (``contracts/orders.py``, ``tests/test_orders.py``);
5. anything else in the app folder is shared (it counts as evidence, e.g. a
   shared schema file), and files outside the app folder are left out.

In another repository than the app's, every file belongs to the service the
repository is named after (or that ``[coupling.repos]`` names), else rules 4
and 5 apply to its paths.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cleave.app import LoadedApp
from cleave.data.database import Database

__all__ = ["SHARED", "Layout", "databases_of", "layout_of"]

#: The owner of a file of the app that belongs to no service.
SHARED = ""


@dataclass
class Layout:
    """Maps ``(repository, path)`` to a service, :data:`SHARED`, or None (not the app's)."""

    services: tuple[str, ...]
    app_repo: str = ""
    app_prefix: str = ""
    files: dict[str, str] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    repos: dict[str, str] = field(default_factory=dict)
    _seen: dict[tuple[str, str], str | None] = field(default_factory=dict, repr=False)

    def service_of(self, repo: str, path: str) -> str | None:
        """The service ``path`` of ``repo`` belongs to, SHARED, or None when outside the app."""
        key = (repo, path)
        if key not in self._seen:
            self._seen[key] = self._owner(repo, path)
        return self._seen[key]

    def _owner(self, repo: str, path: str) -> str | None:
        if repo != self.app_repo:
            owner = self.repos.get(repo) or (repo if repo in self.services else None)
            return owner or self._by_name(path)
        if not path.startswith(self.app_prefix):
            return None
        rel = path[len(self.app_prefix) :]
        if any(_match(rel, g) for g in self.ignore):
            return None
        for service, globs in self.paths.items():
            if any(_match(rel, g) for g in globs):
                return service
        if rel in self.files:
            return self.files[rel]
        for folder in sorted(self.folders, key=len, reverse=True):
            if rel.startswith(folder):
                return self.folders[folder]
        return self._by_name(rel) or SHARED

    def _by_name(self, rel: str) -> str | None:
        parts = PurePosixPath(rel).parts
        for part in reversed(parts[:-1]):
            if part in self.services:
                return part
        stem = PurePosixPath(rel).stem
        for name in self.services:
            if stem in (name, f"test_{name}", f"{name}_test"):
                return name
        return None

    def rules(self) -> dict[str, list[str]]:
        """What each service was found to own, for the report (app-relative)."""
        out: dict[str, list[str]] = {s: [] for s in self.services}
        for service, globs in self.paths.items():
            out.setdefault(service, []).extend(f"{g} (cleave.toml)" for g in globs)
        for folder, service in self.folders.items():
            out[service].append(folder)
        for file, service in self.files.items():
            out[service].append(file)
        for name in self.services:
            out[name].append(f"**/{name}/**, {name}.py, test_{name}.py")
        return out


def _match(rel: str, glob: str) -> bool:
    if glob.endswith("/"):
        return rel.startswith(glob)
    return fnmatch.fnmatch(rel, glob) or fnmatch.fnmatch(PurePosixPath(rel).name, glob)


def _rel(path: str | None, root: Path) -> str | None:
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def _source(obj: object) -> str | None:
    try:
        return inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except TypeError:
        return None


def _folder_of(module: str) -> str:
    parent = PurePosixPath(module).parent.as_posix()
    return "" if parent == "." else parent + "/"


def layout_of(loaded: LoadedApp, app_repo: str, app_prefix: str) -> Layout:
    """The layout of a loaded app whose folder is ``app_prefix`` in repository ``app_repo``."""
    root = loaded.root.resolve()
    app = loaded.app
    settings = loaded.plan.coupling
    modules = {n: _rel(_source(s.cls), root) for n, s in app.services.items()}
    app_module = _app_module(loaded)
    contracts: dict[str, list[str]] = {}
    for name, spec in app.services.items():
        for contract in spec.contracts:
            file = _rel(_source(contract.cls), root)
            if file:
                contracts.setdefault(file, []).append(name)
    layout = Layout(
        services=tuple(app.services),
        app_repo=app_repo,
        app_prefix=app_prefix,
        paths={k: tuple(v) for k, v in settings.paths.items()},
        ignore=tuple(settings.ignore),
        repos=dict(settings.repos),
    )
    others = [m for m in modules.values() if m]
    for name, module in modules.items():
        if not module or others.count(module) > 1 or module == app_module:
            continue  # a module of several services, or the app's own, is nobody's alone
        layout.files[module] = name
        folder = _folder_of(module)
        holds_others = any(m != module and m.startswith(folder) for m in others)
        holds_app = app_module is not None and app_module.startswith(folder)
        if folder and not holds_others and not holds_app:
            layout.folders[folder] = name
    for file, owners in contracts.items():
        if len(set(owners)) == 1 and file not in layout.files:
            layout.files[file] = owners[0]
    for name, spec in app.services.items():
        for db in databases_of(spec.cls):
            if db.migrations is not None:
                migrations = _rel(str(db.migrations), root)
                if migrations:
                    layout.folders[migrations.rstrip("/") + "/"] = name
    return layout


def _app_module(loaded: LoadedApp) -> str | None:
    """The file (app-relative) of the module that defines the app: never a service's folder."""
    root = loaded.root.resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        rel = _rel(file, root)
        if rel and any(v is loaded.app for v in vars(module).values()):
            return rel
    return None


def databases_of(cls: type) -> Iterable[Database]:
    """The ``cleave.Database`` attributes of a service class (and its bases)."""
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, Database):
                yield value
