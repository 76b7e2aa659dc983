"""Change coupling as code-maat measures it, and what follows from it.

code-maat's ``coupling`` analysis (Adam Tornhill, *Your Code as a Crime
Scene*): for two entities changed in ``revs_a`` and ``revs_b`` change sets,
``shared`` of them together,

    degree = 100 * shared / mean(revs_a, revs_b)      (truncated to an int)

and a pair is reported when the mean revisions reach ``min_revs`` (5), the
shared ones ``min_shared`` (5) and the degree ``min_degree`` (30). Its
``soc`` (sum of coupling) adds, for each change set, the number of other
entities in it. Here an entity is a service, or a file inside one service
when looking for parts of it that change apart (:func:`clusters`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Cluster", "Pair", "Thresholds", "clusters", "coupling", "revisions", "sum_of_coupling"]


@dataclass(frozen=True)
class Thresholds:
    """code-maat's defaults."""

    min_revs: int = 5
    min_shared: int = 5
    min_degree: int = 30


@dataclass(frozen=True)
class Pair:
    """Two entities, how often each changed, and how often together."""

    a: str
    b: str
    degree: int
    shared: int
    revisions_a: int
    revisions_b: int

    @property
    def mean_revisions(self) -> float:
        return (self.revisions_a + self.revisions_b) / 2

    def significant(self, t: Thresholds) -> bool:
        return (
            self.mean_revisions >= t.min_revs
            and self.shared >= t.min_shared
            and self.degree >= t.min_degree
        )


def revisions(changesets: Iterable[frozenset[str]]) -> Counter[str]:
    """How many change sets touched each entity."""
    counts: Counter[str] = Counter()
    for cs in changesets:
        counts.update(cs)
    return counts


def coupling(changesets: Sequence[frozenset[str]]) -> list[Pair]:
    """Every pair that changed together at least once, strongest first (no thresholds)."""
    revs = revisions(changesets)
    shared: Counter[tuple[str, str]] = Counter()
    for cs in changesets:
        shared.update(itertools.combinations(sorted(cs), 2))
    pairs = [
        Pair(a, b, int(100 * n / ((revs[a] + revs[b]) / 2)), n, revs[a], revs[b])
        for (a, b), n in shared.items()
    ]
    return sorted(pairs, key=lambda p: (-p.degree, -p.shared, p.a, p.b))


def sum_of_coupling(changesets: Iterable[frozenset[str]]) -> Counter[str]:
    """code-maat's ``soc``: per entity, the other entities it changed with, summed over changes."""
    soc: Counter[str] = Counter()
    for cs in changesets:
        for entity in cs:
            soc[entity] += len(cs) - 1
    return soc


@dataclass(frozen=True)
class Cluster:
    """Files of one service that change together, and how often."""

    files: tuple[str, ...]
    changes: int


def clusters(
    changesets: Sequence[frozenset[str]], t: Thresholds
) -> tuple[list[Cluster], int, str | None]:
    """Groups of files that change together but apart from each other.

    ``changesets`` are one service's changes, as the files of it they touched.
    Files changed at least ``min_revs // 2`` times start as groups of their
    own; the two groups that change together most (degree, as for pairs) are
    joined while that degree is at least ``APART`` percent. Each group left
    that changed in at least ``min_revs`` changes is a cluster. When
    everything ends in one group only because one file (an entry module that
    wires every part) changes with all of them, that file is set aside and
    named. Returns the clusters, the changes that touched more than one of
    them, and the file set aside (or None).
    """
    revs = revisions(changesets)
    active = {f for f, n in revs.items() if n >= max(2, t.min_revs // 2)}
    found, crossing = _agglomerate(changesets, active, t)
    if len(found) >= 2 or len(active) < 3:
        return found, crossing, None
    for hub in sorted(active, key=lambda f: (-revs[f], f))[:3]:
        without = [cs - {hub} for cs in changesets]
        split, cross = _agglomerate(without, active - {hub}, t)
        if len(split) >= 2:
            return split, cross, hub
    return found, crossing, None


#: Groups of files that change together at least this much (degree) are one cluster.
APART = 20


def _agglomerate(
    changesets: Sequence[frozenset[str]], files: set[str], t: Thresholds
) -> tuple[list[Cluster], int]:
    touched = [cs & files for cs in changesets]
    touched = [cs for cs in touched if cs]
    groups = [frozenset({f}) for f in sorted(files)]
    while len(groups) > 1:
        hits = [{i for i, cs in enumerate(touched) if cs & g} for g in groups]
        best, pair = -1.0, (0, 0)
        for i, j in itertools.combinations(range(len(groups)), 2):
            shared = len(hits[i] & hits[j])
            degree = 100 * shared / ((len(hits[i]) + len(hits[j])) / 2) if shared else 0.0
            if degree > best:
                best, pair = degree, (i, j)
        if best < APART:
            break
        i, j = pair
        groups = [g for k, g in enumerate(groups) if k not in pair] + [groups[i] | groups[j]]
    counted = []
    for members in groups:
        n = sum(1 for cs in touched if cs & members)
        if n >= t.min_revs:
            counted.append(Cluster(tuple(sorted(members)), n))
    counted.sort(key=lambda c: (-c.changes, c.files))
    crossing = sum(1 for cs in touched if sum(1 for c in counted if cs & set(c.files)) > 1)
    return counted, crossing
