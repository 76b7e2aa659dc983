"""``cleave add service``: a new service in a project laid out as ``cleave new`` makes it.

It writes the contract, the service (with its database), its migrations
folder with a first revision, and a test; then registers the service in the
app module, by editing the ``services=[...]`` list of its ``cleave.App(...)``
call and adding the import. What it cannot edit with certainty (another
layout) it leaves alone and says what to add by hand.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cleave.config import load_plan
from cleave.data.migrations import init
from cleave.errors import ConfigError
from cleave.scaffold import _revision_fields, check_name, class_name, render, templates

__all__ = ["Added", "add_service", "register"]


class Added:
    """What ``add_service`` wrote, and whether it registered the service itself."""

    def __init__(self, files: list[Path], registered: bool, by_hand: str) -> None:
        self.files = files
        self.registered = registered
        #: When not registered: what to add to the app module, and where.
        self.by_hand = by_hand


def _package(root: Path) -> tuple[str, Path]:
    """The app's package and its module file, from ``[app] target``."""
    target = load_plan(root).app.target or ""
    module = target.partition(":")[0]
    package, dot, _ = module.partition(".")
    folder = root / package
    if not dot or not all((folder / sub).is_dir() for sub in ("contracts", "services")):
        raise ConfigError(
            f"{root}: `cleave add service` needs the layout `cleave new` makes ([app] target = "
            f'"PACKAGE.app:app", with PACKAGE/contracts and PACKAGE/services); this app\'s '
            f"target is {target or '(none)'!r}: add the service by hand"
        )
    return package, root / (module.replace(".", "/") + ".py")


def _exists(folder: Path, name: str) -> str:
    """Why ``name`` is taken in the package ``folder``, or ''."""
    for path in (
        folder / "contracts" / f"{name}.py",
        folder / "services" / f"{name}.py",
        folder / "migrations" / name,
    ):
        if path.exists():
            return f"{path} exists"
    for path in (folder / "contracts").glob("*.py"):
        for call in ('contract("', "contract('"):
            if f"{call}{name}{call[-1]}" in path.read_text():
                return f"{path} declares a contract named {name!r}"
    return ""


def add_service(root: Path, name: str) -> Added:
    """Add service ``name`` to the app in ``root``; refuses a bad or taken name."""
    check_name(name, "service name")
    package, module = _package(root)
    folder = root / package
    taken = _exists(folder, name)
    if taken:
        raise ConfigError(f"a service named {name!r} exists already ({taken}); choose another name")
    cls = class_name(name)
    fields = {"package": package, "service": name, "Class": cls, **_revision_fields()}
    source = templates("service")
    migrations = folder / "migrations" / name
    init(migrations)
    targets = {
        "contract.py.tmpl": folder / "contracts" / f"{name}.py",
        "service.py.tmpl": folder / "services" / f"{name}.py",
        "migration.py.tmpl": migrations
        / "versions"
        / f"{fields['revision']}_create_{name}_tables.py",
        "test.py.tmpl": root / "tests" / f"test_{name}.py",
    }
    for template, path in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render((source / template).read_text(), fields))
    line = f"from {package}.services.{name} import {cls}Service"
    try:
        module.write_text(register(module.read_text(), line, f"{cls}Service"))
        registered, by_hand = True, ""
    except ValueError as exc:
        registered = False
        by_hand = (
            f"{module}: {exc}; add `{line}` to its imports and {cls}Service to the "
            "services=[...] of its cleave.App(...)"
        )
    return Added(list(targets.values()), registered, by_hand)


def register(source: str, import_line: str, service: str) -> str:
    """``source`` (an app module) with ``service`` imported and in ``cleave.App(services=[...])``.

    Raises ValueError saying what it did not find.
    """
    tree = ast.parse(source)
    found: list[ast.List] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_app(node.func):
            found += [
                k.value
                for k in node.keywords
                if k.arg == "services" and isinstance(k.value, ast.List)
            ]
    if len(found) != 1:
        raise ValueError(
            "found no cleave.App(...) call with a literal services=[...] list"
            if not found
            else "found several cleave.App(...) calls"
        )
    listing = found[0]
    lines = source.splitlines(keepends=True)
    indent = " " * _column(lines, listing)
    items = [ast.get_source_segment(source, e) or "" for e in listing.elts] + [service]
    body = "".join(f"{indent}    {item},\n" for item in items)
    new_list = f"[\n{body}{indent}]"
    start = _offset(lines, listing.lineno, listing.col_offset)
    end = _offset(lines, listing.end_lineno or listing.lineno, listing.end_col_offset or 0)
    source = source[:start] + new_list + source[end:]
    return _add_import(source, import_line)


def _is_app(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "App"
    return isinstance(func, ast.Name) and func.id == "App"


def _column(lines: list[str], node: ast.List) -> int:
    """The indentation of the line the list starts on."""
    line = lines[node.lineno - 1]
    return len(line) - len(line.lstrip())


def _offset(lines: list[str], lineno: int, col: int) -> int:
    # ast columns count UTF-8 bytes.
    prefix = lines[lineno - 1].encode()[:col].decode()
    return sum(len(line) for line in lines[: lineno - 1]) + len(prefix)


def _add_import(source: str, line: str) -> str:
    """Insert ``line`` among the module's top-level ``from`` imports of its own package, sorted."""
    tree = ast.parse(source)
    package = line.split()[1].split(".")[0]
    own = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and node.module is not None
        and node.module.split(".")[0] == package
    ]
    if not own:
        raise ValueError(f"found no `from {package}...` import to add the new one beside")
    module = line.split()[1]
    after = [n for n in own if (n.module or "") < module]
    lines = source.splitlines(keepends=True)
    # After the last import that sorts before it, else before the first.
    at = (after[-1].end_lineno or after[-1].lineno) if after else own[0].lineno - 1
    lines.insert(at, line + "\n")
    return "".join(lines)
