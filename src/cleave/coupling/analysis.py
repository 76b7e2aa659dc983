"""From changes, layout, topology and traffic to the measures of each service and pair.

:func:`analyse` is pure: it reads no git and imports no app, so the tests run
it over hundreds of generated histories in a second, and the command feeds it
what :mod:`cleave.coupling.history` and :mod:`cleave.coupling.layout` found.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cleave.config import CouplingSettings
from cleave.coupling.changes import Change
from cleave.coupling.layout import SHARED, Layout
from cleave.coupling.measures import (
    Cluster,
    Pair,
    Thresholds,
    clusters,
    coupling,
    revisions,
    sum_of_coupling,
)
from cleave.coupling.structure import Topology, cycles, hubs
from cleave.coupling.traffic import CallCosts, EdgeTraffic

__all__ = ["Analysis", "ServiceFacts", "analyse"]

_WEEK = 7 * 86400.0


@dataclass
class ServiceFacts:
    """What the history says about one service."""

    name: str
    revisions: int = 0
    soc: int = 0
    authors: Counter[str] = field(default_factory=Counter)
    clusters: list[Cluster] = field(default_factory=list)
    cluster_authors: list[Counter[str]] = field(default_factory=list)
    crossing: int = 0
    hub_file: str | None = None
    deploys: int = 0
    deploys_per_week: float = 0.0


@dataclass
class Analysis:
    """Every measure, ready for advice and reports."""

    settings: CouplingSettings
    layout: Layout
    topology: Topology
    changes: list[Change]
    service_sets: list[frozenset[str]]
    services: dict[str, ServiceFacts]
    pairs: list[Pair]
    #: For each pair (a, b): shared (non-service) files changed in most of their shared changes.
    mediators: dict[tuple[str, str], list[str]]
    shipped_together: dict[tuple[str, str], int]
    delivery_source: str
    weeks: float
    authors: Counter[str]
    smells: list[dict[str, Any]]
    traffic: list[EdgeTraffic]
    costs: CallCosts | None

    @property
    def thresholds(self) -> Thresholds:
        s = self.settings
        return Thresholds(s.min_revs, s.min_shared, s.min_degree)

    def significant(self) -> list[Pair]:
        return [p for p in self.pairs if p.significant(self.thresholds)]

    def author_overlap(self, a: str, b: str) -> float:
        """Jaccard overlap of the two services' authors (1: the same people)."""
        x, y = set(self.services[a].authors), set(self.services[b].authors)
        return round(len(x & y) / len(x | y), 2) if x | y else 0.0

    def multi_service_share(self) -> float:
        """Share of the changes touching a service that touch more than one."""
        if not self.service_sets:
            return 0.0
        return sum(1 for s in self.service_sets if len(s) > 1) / len(self.service_sets)


def _file_name(layout: Layout, repo: str, path: str) -> str:
    if repo == layout.app_repo and path.startswith(layout.app_prefix):
        return path[len(layout.app_prefix) :]
    return f"{repo}:{path}"


def analyse(
    changes: list[Change],
    layout: Layout,
    topology: Topology,
    settings: CouplingSettings,
    *,
    releases: list[float] | None = None,
    delivery_source: str = "changes",
    traffic: list[EdgeTraffic] | None = None,
    costs: CallCosts | None = None,
) -> Analysis:
    """Measure ``changes`` (already grouped) against the app's layout and topology."""
    t = Thresholds(settings.min_revs, settings.min_shared, settings.min_degree)
    services = {name: ServiceFacts(name) for name in topology.services}
    per_change: list[tuple[Change, frozenset[str], dict[str, frozenset[str]], frozenset[str]]] = []
    for change in changes:
        owned: dict[str, set[str]] = {}
        shared: set[str] = set()
        for repo, path in change.files:
            owner = layout.service_of(repo, path)
            if owner is None or (owner != SHARED and owner not in services):
                continue
            name = _file_name(layout, repo, path)
            if owner == SHARED:
                shared.add(name)
            else:
                owned.setdefault(owner, set()).add(name)
        if owned:
            per_change.append(
                (
                    change,
                    frozenset(owned),
                    {s: frozenset(f) for s, f in owned.items()},
                    frozenset(shared),
                )
            )
    service_sets = [touched for _, touched, _, _ in per_change]
    revs = revisions(service_sets)
    soc = sum_of_coupling(service_sets)
    authors: Counter[str] = Counter()
    for change, touched, _, _ in per_change:
        authors.update(change.authors)
        for s in touched:
            services[s].authors.update(change.authors)
    for name, facts in services.items():
        facts.revisions = revs[name]
        facts.soc = soc[name]
        own = [(c, files[name]) for c, touched, files, _ in per_change if name in touched]
        found, crossing, hub = clusters([files for _, files in own], t)
        if len(found) >= 2 and _apart(found, crossing, own):
            facts.clusters, facts.crossing, facts.hub_file = found, crossing, hub
            facts.cluster_authors = [
                Counter(a for c, files in own if files & set(cl.files) for a in c.authors)
                for cl in found
            ]
    pairs = coupling(service_sets)
    mediators: dict[tuple[str, str], list[str]] = {}
    for p in pairs:
        together = [sh for _, touched, _, sh in per_change if {p.a, p.b} <= touched]
        counts: Counter[str] = Counter(f for sh in together for f in sh)
        common = sorted(f for f, n in counts.items() if n * 2 >= len(together))
        if common:
            mediators[(p.a, p.b)] = common
    # Delivery: which release each change went out with (an estimate from times).
    points = sorted(releases or [])
    span = (changes[-1].end - changes[0].start) if changes else 0.0
    weeks = max(1.0, span / _WEEK)
    shipped: dict[int, set[str]] = {}
    pair_shipped: Counter[tuple[str, str]] = Counter()
    for i, (change, touched, _, _) in enumerate(per_change):
        if points:
            slot = next((k for k, when in enumerate(points) if when >= change.end), None)
            if slot is None:
                continue  # not released yet
        else:
            slot = i  # no release points: every change is its own deploy
        shipped.setdefault(slot, set()).update(touched)
    for members in shipped.values():
        for p in pairs:
            if p.a in members and p.b in members:
                pair_shipped[(p.a, p.b)] += 1
    for facts in services.values():
        facts.deploys = sum(1 for members in shipped.values() if facts.name in members)
        facts.deploys_per_week = round(facts.deploys / weeks, 2)
    smells = _smells(topology, services, len(service_sets), settings)
    return Analysis(
        settings,
        layout,
        topology,
        changes,
        service_sets,
        services,
        pairs,
        mediators,
        dict(pair_shipped),
        delivery_source if points else "changes",
        round(weeks, 1),
        authors,
        smells,
        traffic or [],
        costs,
    )


def _owners(people: Counter[str]) -> set[str]:
    """The fewest authors who made 60% of the changes."""
    total, owners, covered = sum(people.values()), set(), 0
    for author, n in people.most_common():
        if covered >= 0.6 * total:
            break
        owners.add(author)
        covered += n
    return owners


def _apart(found: list[Cluster], crossing: int, own: list[tuple[Change, frozenset[str]]]) -> bool:
    """Whether clusters really change apart: rarely together, and by other people or almost never.

    A service of two files edited at random now one, now both, can look like
    two clusters in a short history; what it lacks is a clean separation
    (no change crossing) or separate owners.
    """
    sets = [{i for i, (_, files) in enumerate(own) if files & set(c.files)} for c in found]
    for i, x in enumerate(sets):
        for y in sets[i + 1 :]:
            if 100 * len(x & y) / ((len(x) + len(y)) / 2) > 15:
                return False
    if crossing <= 0.05 * len(own):
        return True  # all but a stray change or two keep to one cluster
    people = [
        _owners(Counter(a for c, files in own if files & set(cl.files) for a in c.authors))
        for cl in found
    ]
    return all(not (x & y) for i, x in enumerate(people) for y in people[i + 1 :])


def _smells(
    topo: Topology, services: dict[str, ServiceFacts], changes: int, settings: CouplingSettings
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for cycle in cycles(topo):
        found.append(
            {
                "kind": "cycle",
                "services": cycle,
                "evidence": f"declared calls and events form a cycle through {', '.join(cycle)}",
            }
        )
    for name, fan_in, fan_out in hubs(topo):
        found.append(
            {
                "kind": "hub",
                "services": [name],
                "evidence": f"{name} has {fan_in} services calling it or sending it events, "
                f"and calls or sends events to {fan_out}",
            }
        )
    if len(services) > 2 and changes >= settings.min_revs:
        for facts in services.values():
            if facts.revisions >= 0.8 * changes:
                share = round(100 * facts.revisions / changes)
                found.append(
                    {
                        "kind": "every-change",
                        "services": [facts.name],
                        "evidence": f"{facts.name} is touched by {share}% of the changes "
                        f"({facts.revisions} of {changes})",
                    }
                )
    return found
