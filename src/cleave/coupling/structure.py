"""The declared graph: what the app says about its services, and what it smells of.

Everything here comes from the declarations (``use()``, ``subscribe()``, the
databases' tables) and from the services' source read with :mod:`ast`; no
history. Smells are the classic ones of a dependency graph: cycles (services
that cannot be deployed or reasoned about one at a time) and hubs (a service
that many call and that calls many: every change near it ripples).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field

from cleave.app import LoadedApp
from cleave.contracts import ContractSpec
from cleave.coupling.layout import databases_of
from cleave.service import Use

__all__ = ["DiscardedCall", "Topology", "cycles", "hubs", "topology_of"]


@dataclass(frozen=True)
class DiscardedCall:
    """A call whose answer the caller throws away: ``await self.billing.notify(...)``."""

    source: str
    target: str
    method: str
    where: str  # "OrdersService.place_order line 42"


@dataclass
class Topology:
    """The services, their declared edges (source, target, "call" or "event") and tables."""

    services: tuple[str, ...]
    edges: set[tuple[str, str, str]] = field(default_factory=set)
    tables: dict[str, set[str]] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    discarded: list[DiscardedCall] = field(default_factory=list)
    #: Call sites per (source, target, method): how many there are in all.
    call_sites: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def declared(self, a: str, b: str) -> list[str]:
        """The declared edges between ``a`` and ``b``, either way, as text."""
        out = []
        for src, dst, kind in sorted(self.edges):
            if {src, dst} == {a, b}:
                out.append(f"{src} {'calls' if kind == 'call' else 'sends events to'} {dst}")
        return out

    def shared_tables(self, a: str, b: str) -> set[str]:
        return self.tables.get(a, set()) & self.tables.get(b, set())


def topology_of(loaded: LoadedApp) -> Topology:
    """The declared topology of a loaded app, and the calls whose answer is unused."""
    app = loaded.app
    topo = Topology(services=tuple(app.services))
    for edge in app.edges:
        if edge.source in app.services and edge.target in app.services:
            topo.edges.add((edge.source, edge.target, edge.kind))
    for name, spec in app.services.items():
        topo.tables[name] = {t for db in databases_of(spec.cls) for t in db.metadata.tables}
        clients = {
            attr: value.contract
            for klass in spec.cls.__mro__
            for attr, value in vars(klass).items()
            if isinstance(value, Use)
        }
        if clients:
            sites, discarded = scan_calls(spec.cls, name, clients)
            topo.discarded += discarded
            for key, n in sites.items():
                topo.call_sites[key] = topo.call_sites.get(key, 0) + n
    topo.groups = {g: m for g, m in loaded.plan.groups.items() if m}
    return topo


_QUERY = ("get_", "list_", "find_", "search_", "check_", "read_", "fetch_", "count_", "is_")


def scan_calls(
    cls: type, source: str, clients: dict[str, ContractSpec]
) -> tuple[dict[tuple[str, str, str], int], list[DiscardedCall]]:
    """Every ``self.<client>.<method>(...)`` call in ``cls``, and those whose answer is unused.

    An answer is unused when the awaited call is a statement of its own
    (``await self.billing.notify(...)``): nothing reads what it returned. A
    query (``readonly=True``, or named like one: ``get_``, ``list_``...) called
    that way is an access or existence check, made for the error it may raise:
    it is not counted as unused.
    """
    try:
        lines, first = inspect.getsourcelines(cls)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return {}, []
    sites: dict[tuple[str, str, str], int] = {}
    discarded: list[DiscardedCall] = []
    clients_by_name = {c.name: c for c in clients.values()}
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        statements = {
            id(node.value.value)
            for node in ast.walk(func)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Await)
        }
        for node in ast.walk(func):
            target = _client_call(node, clients)
            if target is None:
                continue
            key = (source, *target)
            sites[key] = sites.get(key, 0) + 1
            method = clients_by_name[target[0]].methods.get(target[1])
            query = target[1].startswith(_QUERY) or (method is not None and method.readonly)
            if id(node) in statements and not query:
                line = getattr(node, "lineno", 0) + first - 1
                where = f"{cls.__name__}.{func.name} line {line}"
                discarded.append(DiscardedCall(source, target[0], target[1], where))
    return sites, discarded


def _client_call(node: ast.AST, clients: dict[str, ContractSpec]) -> tuple[str, str] | None:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    owner = node.func.value
    if (
        isinstance(owner, ast.Attribute)
        and isinstance(owner.value, ast.Name)
        and owner.value.id == "self"
        and owner.attr in clients
    ):
        return clients[owner.attr].name, node.func.attr
    return None


def cycles(topo: Topology) -> list[list[str]]:
    """Each strongly connected set of services over declared calls and events (Tarjan)."""
    graph: dict[str, set[str]] = {s: set() for s in topo.services}
    for src, dst, _ in topo.edges:
        graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def hubs(topo: Topology) -> list[tuple[str, int, int]]:
    """Services with at least two callers or consumers and two dependencies: (name, in, out)."""
    fan_in = {s: {src for src, dst, _ in topo.edges if dst == s} for s in topo.services}
    fan_out = {s: {dst for src, dst, _ in topo.edges if src == s} for s in topo.services}
    return [
        (s, len(fan_in[s]), len(fan_out[s]))
        for s in topo.services
        if len(fan_in[s]) >= 2 and len(fan_out[s]) >= 2
    ]
