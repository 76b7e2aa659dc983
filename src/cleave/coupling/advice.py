"""Advice: what to do about the coupling measured, with its evidence and the change that does it.

Each rule reads the :class:`~cleave.coupling.analysis.Analysis` and says one
of six things (docs/coupling.md gives each rule and its thresholds):

- ``merge``: services that always change together (degree >= ``merge_degree``)
  are one deployable in practice; make them one group, then one service;
- ``co-locate``: a chatty edge (>= ``chatty_calls`` calls per request) between
  services that ship together: one process, calls in memory;
- ``split``: a service whose files form clusters that change apart;
- ``decouple``: services that change together with no declared dependency
  (a shared file, a shared table, copied logic);
- ``make-async``: a call whose answer is never read could be an event;
- ``keep-monolith``: too little history, or changes that cross most services:
  a split would cost more than it pays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from cleave.coupling.analysis import Analysis
from cleave.coupling.measures import Pair

__all__ = ["Advice", "advise", "groups_action"]

KINDS = ("merge", "split", "decouple", "make-async", "keep-monolith", "co-locate")


@dataclass(frozen=True)
class Advice:
    """One thing to do: which services, why (evidence lines), and how (the action)."""

    kind: str
    services: tuple[str, ...]
    evidence: tuple[str, ...]
    action: str
    extra: dict[str, object] = field(default_factory=dict)


def _pct(x: float) -> str:
    return f"{round(100 * x)}%"


def groups_action(members: set[str], groups: dict[str, tuple[str, ...]]) -> str:
    """The ``[groups]`` line that puts ``members`` in one process, joining their groups."""
    joined = set(members)
    names = []
    for name, group in groups.items():
        if joined & set(group):
            joined |= set(group)
            names.append(name)
    name = names[0] if names else "_".join(sorted(members))
    listed = ", ".join(f'"{s}"' for s in sorted(joined))
    line = f"[groups]\n{name} = [{listed}]"
    if len(names) > 1:
        line += f"\n# and remove the groups {', '.join(names[1:])}"
    return line


def _pair_evidence(an: Analysis, p: Pair) -> list[str]:
    lines = [
        f"{p.a} and {p.b} changed together in {p.shared} changes: degree {p.degree}% "
        f"({p.a} {p.revisions_a} changes, {p.b} {p.revisions_b})",
    ]
    declared = an.topology.declared(p.a, p.b)
    lines.append("declared: " + "; ".join(declared) if declared else "no declared dependency")
    overlap = an.author_overlap(p.a, p.b)
    lines.append(f"author overlap {_pct(overlap)}")
    together = an.shipped_together.get((p.a, p.b), 0)
    if together:
        lines.append(f"shipped together {together} times (estimate, from {an.delivery_source})")
    return lines


def _merge(an: Analysis) -> list[Advice]:
    pairs = [
        p
        for p in an.significant()
        if p.degree >= an.settings.merge_degree
        and (an.topology.declared(p.a, p.b) or (p.a, p.b) not in an.mediators)
    ]
    parent = {s: s for p in pairs for s in (p.a, p.b)}

    def find(s: str) -> str:
        while parent[s] != s:
            s = parent[s]
        return s

    for p in pairs:
        parent[find(p.a)] = find(p.b)
    components: dict[str, set[str]] = {}
    for s in parent:
        components.setdefault(find(s), set()).add(s)
    out = []
    for members in sorted(components.values(), key=sorted):
        if any(members <= set(g) for g in an.topology.groups.values()):
            continue  # already one group: nothing to enact
        evidence = [e for p in pairs if {p.a, p.b} <= members for e in _pair_evidence(an, p)]
        evidence.append(
            "they change as one: deploying them apart buys nothing and costs a remote call "
            "per interaction"
        )
        action = (
            groups_action(members, an.topology.groups)
            + "\n# one process and one deploy today; fold them into one service when convenient"
        )
        out.append(Advice("merge", tuple(sorted(members)), tuple(evidence), action))
    return out


def _decouple(an: Analysis) -> list[Advice]:
    out = []
    seen: set[tuple[str, str]] = set()
    for p in an.significant():
        if an.topology.declared(p.a, p.b):
            continue
        seen.add((p.a, p.b))
        evidence = _pair_evidence(an, p)
        via = an.mediators.get((p.a, p.b), [])
        tables = sorted(an.topology.shared_tables(p.a, p.b))
        if via:
            evidence.append(f"through shared files changed with most of them: {', '.join(via)}")
        if tables:
            evidence.append(f"shared tables: {', '.join(tables)}")
        if via:
            action = (
                f"give {', '.join(via)} one owner: move it into {p.a} or {p.b} and let the other "
                f"call for what it needs (cleave.use) or react to its events (cleave.subscribe); "
                "copied types belong in the owner's contract"
            )
        else:
            action = (
                f"find what {p.a} and {p.b} both encode (a schema, a rule, copied types): give it "
                "one owner and declare the dependency (cleave.use or cleave.subscribe), or merge "
                "them"
            )
        out.append(Advice("decouple", (p.a, p.b), tuple(evidence), action))
    services = an.topology.services
    for i, a in enumerate(services):
        for b in services[i + 1 :]:
            tables = sorted(an.topology.shared_tables(a, b))
            if tables and (a, b) not in seen and (b, a) not in seen:
                out.append(
                    Advice(
                        "decouple",
                        (a, b),
                        (f"{a} and {b} both declare the tables {', '.join(tables)}",),
                        f"one service owns each table: move {', '.join(tables)} to {a} or {b} "
                        "and let the other reach it through the owner's contract",
                    )
                )
    return out


def _split(an: Analysis) -> list[Advice]:
    out = []
    for facts in an.services.values():
        if len(facts.clusters) < 2:
            continue
        evidence = [
            f"{facts.name}'s files form {len(facts.clusters)} clusters that change apart: "
            f"{facts.crossing} of {facts.revisions} changes touched more than one"
        ]
        folders = []
        owners = []
        for i, (cluster, people) in enumerate(
            zip(facts.clusters, facts.cluster_authors, strict=True), 1
        ):
            top = [a for a, _ in people.most_common(2)]
            owners.append({a for a, _ in people.most_common(3)})
            evidence.append(
                f"cluster {i}: {', '.join(cluster.files)} ({cluster.changes} changes; "
                f"mostly {', '.join(top)})"
            )
            folders.append(_common_folder(cluster.files))
        if facts.hub_file:
            evidence.append(f"{facts.hub_file} changes with every cluster: it wires them")
        disjoint = all(not (x & y) for i, x in enumerate(owners) for y in owners[i + 1 :])
        evidence.append(
            "different owners: each part could be its own team's"
            if disjoint
            else "the same people work on both: a split buys independent deploys, not teams"
        )
        places = []
        for folder, cluster in zip(folders, facts.clusters, strict=True):
            others = [f for c in facts.clusters if c is not cluster for f in c.files]
            alone = folder and not any(f.startswith(folder) for f in others)
            places.append(folder if alone else ", ".join(cluster.files))
        label = _label(folders[1], facts.clusters[1].files, places[1] == folders[1])
        action = (
            f"keep {places[0]} in {facts.name}; move {places[1]} into a new service "
            f"{facts.name}_{label} (its own contract and service class; cleave.use() where one "
            "calls the other)"
        )
        for place in places[2:]:
            action += f"; likewise {place}"
        action += (
            f"; list both in one [groups] entry until they need to deploy apart: "
            f'{facts.name}_parts = ["{facts.name}", "{facts.name}_{label}"]'
        )
        out.append(
            Advice(
                "split",
                (facts.name,),
                tuple(evidence),
                action,
                {"clusters": [list(c.files) for c in facts.clusters]},
            )
        )
    return out


def _common_folder(files: tuple[str, ...]) -> str:
    parts = [PurePosixPath(f).parent.parts for f in files]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common) + "/" if common else ""


def _label(folder: str, files: tuple[str, ...], by_folder: bool) -> str:
    """A name for the new service: its folder's, or its first file's."""
    return PurePosixPath(folder).name if by_folder else PurePosixPath(files[0]).stem


def _make_async(an: Analysis) -> list[Advice]:
    out = []
    by_method: dict[tuple[str, str, str], list[str]] = {}
    for d in an.topology.discarded:
        by_method.setdefault((d.source, d.target, d.method), []).append(d.where)
    for (source, target, method), places in sorted(by_method.items()):
        sites = an.topology.call_sites.get((source, target, method), 0)
        if len(places) < sites:
            continue  # some call site reads the answer
        evidence = (
            f"{source} calls {target}.{method} and never reads the answer "
            f"({len(places)} of {sites} call sites): {'; '.join(places)}",
            "the caller waits for the callee, and fails when it is down, for nothing",
        )
        action = (
            f"add an event to {source}'s contract (events=[...]); publish it where {source} now "
            f"calls {target}.{method}; handle it in {target} with @cleave.subscribe(...) and "
            f"drop the call: {source} no longer waits for {target}, nor fails when it is down"
        )
        out.append(Advice("make-async", (source, target), evidence, action))
    return out


def _co_locate(an: Analysis, merged: set[frozenset[str]]) -> list[Advice]:
    out = []
    costs = an.costs
    for edge in an.traffic:
        a, b = edge.source, edge.target
        if a not in an.services or b not in an.services:
            continue
        if any({a, b} <= set(g) for g in an.topology.groups.values()):
            continue
        if any({a, b} <= m for m in merged):
            continue
        key = (min(a, b), max(a, b))
        pair = next((p for p in an.pairs if (p.a, p.b) == key), None)
        together = an.shipped_together.get(key, 0)
        fewer = min(an.services[a].deploys, an.services[b].deploys)
        co_deployed = fewer > 0 and together >= 0.5 * fewer
        chatty = edge.calls_per_request >= an.settings.chatty_calls
        if not (chatty and (co_deployed or edge.latency_share >= 0.25)):
            continue
        evidence = [
            f"{a} calls {b} {edge.calls_per_request} times per request ({edge.requests} "
            f"requests recorded); {_pct(edge.latency_share)} of their time is spent in those calls",
        ]
        if pair is not None:
            evidence.append(f"co-change degree {pair.degree}% ({pair.shared} shared changes)")
        if fewer:
            evidence.append(
                f"shipped together {together} of {fewer} times (estimate, from "
                f"{an.delivery_source})"
            )
        if costs is not None:
            saved = edge.calls_per_request * costs.saving_us
            evidence.append(
                f"co-location dividend: about {saved / 1000:.2f} ms per request "
                f"({_pct(min(1.0, saved / 1000 / max(edge.request_ms, 1e-9)))} of it), at "
                f"{costs.remote_us:g} us per remote call and {costs.colocated_us:g} us "
                f"co-located ({costs.source})"
            )
        out.append(
            Advice(
                "co-locate",
                (a, b),
                tuple(evidence),
                groups_action({a, b}, an.topology.groups),
            )
        )
    return out


def _keep_monolith(an: Analysis, splits: list[Advice]) -> list[Advice]:
    """One deployable when the history cannot tell the services apart.

    Either too little history (fewer than two services changed ``min_revs``
    times), or changes that cross services: most of them (>= 50% with a small
    team, >= 70% otherwise) and most services (>= 75% of the active ones) in a
    significant pair. Never beside a split: that would contradict it.
    """
    if not an.service_sets or splits:
        return []
    people = len(an.authors)
    share = an.multi_service_share()
    busy = [f.name for f in an.services.values() if f.revisions >= an.settings.min_revs]
    significant = an.significant()
    coupled = {s for p in significant for s in (p.a, p.b)}
    broad = len(busy) >= 2 and len(coupled & set(busy)) >= 0.75 * len(busy)
    few = people <= an.settings.small_team
    thin = len(busy) < 2
    if not (thin or (broad and share >= (0.5 if few else 0.7))):
        return []
    evidence = [
        f"{people} author(s) over {len(an.service_sets)} changes in about {an.weeks:g} weeks",
        f"{_pct(share)} of the changes touched more than one service",
        f"{len(busy)} of {len(an.services)} services changed at least "
        f"{an.settings.min_revs} times; {len(coupled)} are in a significant pair",
    ]
    if significant:
        strongest = significant[0]
        evidence.append(
            f"strongest coupling: {strongest.a}-{strongest.b} {strongest.degree}% "
            f"({strongest.shared} shared changes)"
        )
    evidence.append(
        "too little history to justify a split"
        if thin
        else "changes cross service lines: one deployable ships them faster"
    )
    evidence.append(
        "keep the boundaries in code (contracts); split when deploys start to wait on each other"
    )
    members = ", ".join(f'"{s}"' for s in an.topology.services)
    action = (
        f"run it as one: `cleave run` (or, with `cleave up`, [groups] app = [{members}]); "
        "run `cleave coupling` again as the team and history grow"
    )
    return [Advice("keep-monolith", an.topology.services, tuple(evidence), action)]


def advise(an: Analysis) -> list[Advice]:
    """Every piece of advice the analysis supports, in a stable order."""
    merges = _merge(an)
    merged = {frozenset(a.services) for a in merges}
    splits = _split(an)
    return [
        *_keep_monolith(an, splits),
        *merges,
        *_co_locate(an, merged),
        *splits,
        *_decouple(an),
        *_make_async(an),
    ]
