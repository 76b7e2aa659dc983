"""Logical changes: the commits that make one change, across commits and repositories.

A change spread over several commits, or over several repositories, must
count once, or a team that commits often would look more coupled than one
that squashes. Commits naming the same ticket (``ABC-123`` by default, the
``[coupling] ticket`` pattern) are one change wherever they are; other
commits of one author within ``window_hours`` of the first one are one
change (strictly less: commits an hour apart are two changes by
default), unless that would make it larger than ``max_changeset``: the
window is a guess, and must not build a change too large to count. Commits
and changes touching more than ``max_changeset`` files are
left out, as code-maat does: a mass rename or reformat couples everything to
everything and says nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cleave.coupling.history import Commit

__all__ = ["Change", "group_changes"]

#: A file as (repository name, path in it).
File = tuple[str, str]


@dataclass(frozen=True)
class Change:
    """One logical change: its commits, authors, time span and files."""

    key: str
    authors: frozenset[str]
    start: float
    end: float
    commits: tuple[str, ...]
    files: frozenset[File]


def group_changes(
    commits: Iterable[Commit],
    *,
    ticket: str,
    window_hours: float,
    max_changeset: int,
    keep: Callable[[File], bool] = lambda f: True,
) -> list[Change]:
    """Group ``commits`` into changes, oldest first, keeping the files ``keep`` accepts."""
    pattern = re.compile(ticket) if ticket else None
    window = window_hours * 3600.0
    groups: dict[str, list[Commit]] = {}
    kept: dict[str, set[File]] = {}
    open_by_author: dict[str, str] = {}
    for commit in sorted(commits, key=lambda c: c.when):
        files = {f for f in ((commit.repo, p) for p in commit.files) if keep(f)}
        if not files or len(files) > max_changeset:
            continue
        found = pattern.search(commit.message) if pattern else None
        if found:
            key = f"ticket {found.group(0)}"
        else:
            key = open_by_author.get(commit.author, "")
            first = groups[key][0].when if key else 0.0
            too_big = bool(key) and len(kept[key] | files) > max_changeset
            if not key or commit.when - first >= window or too_big:
                key = f"{commit.author} {commit.sha}"
                open_by_author[commit.author] = key
        groups.setdefault(key, []).append(commit)
        kept.setdefault(key, set()).update(files)
    changes = [
        Change(
            key,
            frozenset(c.author for c in group),
            group[0].when,
            group[-1].when,
            tuple(c.sha for c in group),
            frozenset(kept[key]),
        )
        for key, group in groups.items()
        if len(kept[key]) <= max_changeset
    ]
    return sorted(changes, key=lambda c: c.start)
