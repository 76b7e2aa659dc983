"""An app: a set of services, a gateway, and where to find its deployment plan.

::

    app = cleave.App("shop", services=[CatalogService, OrdersService, ...], gateway=gateway)

Creating an App checks the declarations as a whole: every used contract is
served by a service of the app, every consumed event is published by one,
names are unique. :func:`load` finds an app on disk from its folder (or its
``cleave.toml``) the way the ``cleave`` command does.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from cleave.config import Plan, load_plan
from cleave.contracts import ContractSpec
from cleave.errors import ConfigError, DefinitionError
from cleave.gateway.routes import Gateway
from cleave.messages import Event
from cleave.service import Service, ServiceSpec, spec_of_service

__all__ = ["App", "Edge", "LoadedApp", "load"]


class Edge:
    """A declared dependency: ``source`` calls ``target``, or consumes its ``event``."""

    __slots__ = ("event", "kind", "source", "target")

    def __init__(self, source: str, target: str, kind: str, event: str = "") -> None:
        self.source = source
        self.target = target
        self.kind = kind  # "call" or "event"
        self.event = event

    def __repr__(self) -> str:
        arrow = f"-[{self.event}]->" if self.kind == "event" else "->"
        return f"<edge {self.source} {arrow} {self.target}>"


class App:
    """The services of an application and its public gateway."""

    def __init__(
        self,
        name: str,
        *,
        services: Iterable[type[Service]],
        gateway: Gateway | None = None,
    ) -> None:
        self.name = name
        self.gateway = gateway
        self.services: dict[str, ServiceSpec] = {}
        for cls in services:
            spec = spec_of_service(cls)
            if spec.name in self.services:
                raise DefinitionError(
                    f"app {name}: {spec.cls.__qualname__} and "
                    f"{self.services[spec.name].cls.__qualname__} both implement {spec.name!r}"
                )
            self.services[spec.name] = spec
        if not self.services:
            raise DefinitionError(f"app {name} has no services")
        self._check_dependencies()
        self.event_sources = self._resolve_events()

    def _check_dependencies(self) -> None:
        callers = [(s.name, list(s.dependencies.values())) for s in self.services.values()]
        if self.gateway is not None:
            callers.append(("gateway", self.gateway.contracts))
        for caller, deps in callers:
            for dep in deps:
                served = self.services.get(dep.name)
                if served is None:
                    raise DefinitionError(
                        f"app {self.name}: {caller} calls {dep.name!r}, but no service of the app "
                        "implements it; add its service to App(services=[...])"
                    )
                if dep not in served.contracts:
                    majors = ", ".join(f"v{v}" for v in served.majors)
                    raise DefinitionError(
                        f"app {self.name}: {caller} calls {dep.name} v{dep.version} but "
                        f"{served.cls.__qualname__} serves {majors}; keep serving the major its "
                        "callers use with also=[...] until they moved on"
                    )

    def _resolve_events(self) -> dict[type[Event], ContractSpec]:
        """Which contract publishes each event that some service consumes."""
        producers: dict[type[Event], list[ContractSpec]] = {}
        for spec in self.services.values():
            for ev in spec.events:
                # The stream and subject are the service's: any of its majors stands for it.
                producers.setdefault(ev, []).append(spec.contract)
        sources: dict[type[Event], ContractSpec] = {}
        for spec in self.services.values():
            for sub in spec.subscriptions:
                options = producers.get(sub.event, [])
                if sub.source is not None:
                    if sub.source.name not in {c.name for c in options}:
                        raise DefinitionError(
                            f"{spec.cls.__qualname__}.{sub.attr} subscribes to "
                            f"{sub.event.__name__} from {sub.source.name}, which does not declare "
                            "it in events=[...]"
                        )
                    sources[sub.event] = next(c for c in options if c.name == sub.source.name)
                elif len(options) == 1:
                    sources[sub.event] = options[0]
                elif not options:
                    raise DefinitionError(
                        f"{spec.cls.__qualname__}.{sub.attr} subscribes to {sub.event.__name__}, "
                        f"but no service of app {self.name} publishes it; add it to a contract's "
                        "events=[...]"
                    )
                else:
                    names = ", ".join(c.name for c in options)
                    raise DefinitionError(
                        f"{spec.cls.__qualname__}.{sub.attr}: {sub.event.__name__} is published "
                        f"by {names}; say which with @cleave.subscribe(..., source=Contract)"
                    )
        return sources

    @property
    def edges(self) -> list[Edge]:
        """Every declared call and event flow: the app's topology."""
        edges: list[Edge] = []
        if self.gateway is not None:
            called = dict.fromkeys(c.name for c in self.gateway.contracts)  # majors once
            edges += [Edge("gateway", name, "call") for name in called]
        for spec in self.services.values():
            edges += [Edge(spec.name, dep, "call") for dep in spec.calls]
            for sub in spec.subscriptions:
                src = self.event_sources[sub.event]
                edges.append(Edge(src.name, spec.name, "event", sub.event.__topic__))
        return edges

    def start_order(self) -> list[str]:
        """Service names, callees before callers where the calls allow it."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in visiting:
                return  # already placed, or a cycle: either order works
            visiting.add(name)
            for dep in self.services[name].calls:
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in self.services:
            visit(name)
        return order

    def __repr__(self) -> str:
        return f"<App {self.name} services={list(self.services)}>"


class LoadedApp:
    """An app found on disk, with its folder, plan and state folder."""

    def __init__(self, app: App, root: Path, plan: Plan, state_dir: Path) -> None:
        self.app = app
        self.root = root
        self.plan = plan
        self.state_dir = state_dir

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def groups(self) -> dict[str, tuple[str, ...]]:
        return self.plan.groups_for(list(self.app.services))


def find_root(path: str | os.PathLike[str] | None) -> Path:
    """The app folder: ``path`` (a folder or its cleave.toml), or the nearest one upwards."""
    if path is not None:
        p = Path(path).resolve()
        if p.is_file() and p.name == "cleave.toml":
            return p.parent
        if not p.is_dir():
            raise ConfigError(f"{path} is not an app folder (no such directory)")
        return p
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "cleave.toml").exists():
            return candidate
    raise ConfigError(
        "no app given and no cleave.toml in this folder or above it; pass the app folder, "
        "e.g. `cleave up examples/shop`"
    )


def load(path: str | os.PathLike[str] | None = None, *, state_dir: Path | None = None) -> LoadedApp:
    """Import the app in folder ``path`` (see :func:`find_root`) and read its plan."""
    root = find_root(path)
    plan = load_plan(root)
    target = plan.app.target or _guess_target(root)
    module_name, _, attr = target.partition(":")
    attr = attr or "app"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import {module_name!r} from {root} (set [app] target = "
                '"package.module:app" in cleave.toml)'
            ) from exc
        raise
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{module_name}:{attr} is not a cleave.App (found {type(app).__name__})")
    plan.check({n: sorted({m.name for m in s.methods}) for n, s in app.services.items()})
    env_state = os.environ.get("CLEAVE_STATE_DIR")
    state = state_dir or (Path(env_state) if env_state else root / ".cleave")
    return LoadedApp(app, root, plan, state.resolve())


def _guess_target(root: Path) -> str:
    candidates: Sequence[str] = (f"{root.name}.app", "app")
    for mod in candidates:
        if (root / mod.replace(".", "/")).with_suffix(".py").exists():
            return f"{mod}:app"
    return "app:app"
