"""Commits and release points, read from git with ``git log``.

``git`` itself does the reading (no library to keep in step with git's
formats): one ``git log`` per repository, with a record separator that no
commit message contains, so :func:`parse_log` is a split, not a grammar. The
tests feed it logs built in memory as well as real repositories.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cleave.errors import ConfigError

__all__ = [
    "Commit",
    "Repo",
    "has_commits",
    "open_repo",
    "parse_date",
    "parse_log",
    "read_commits",
    "release_times",
]

_RS, _US = "\x1e", "\x1f"
#: Hash, author, e-mail, author time, message; then (with ``--name-only -z``) the files.
LOG_FORMAT = "%x1e%H%x1f%aN%x1f%aE%x1f%at%x1f%B%x1f"


@dataclass(frozen=True)
class Commit:
    """One commit: who, when (seconds since the epoch), why, and the files it touched."""

    sha: str
    author: str
    when: float
    message: str
    files: tuple[str, ...]
    repo: str = ""


@dataclass(frozen=True)
class Repo:
    """A git work tree: its top folder, and the name its files are known by."""

    top: Path
    name: str


def _git(top: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(top), *args], capture_output=True, check=False, text=False
    )
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigError(
            f"git {args[0]} failed in {top}: {reason[-1] if reason else 'no reason given'}"
        )
    return done.stdout.decode("utf-8", errors="replace")


def open_repo(path: Path) -> Repo:
    """The repository holding ``path``; a clear error when it is not in one."""
    if not path.exists():
        raise ConfigError(f"--repo {path}: no such folder; pass a git work tree")
    done = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise ConfigError(
            f"--repo {path} is not a git repository (git rev-parse found none); pass the folder "
            "of a git work tree, e.g. --repo ."
        )
    top = Path(done.stdout.decode().strip()).resolve()
    return Repo(top, top.name)


def parse_date(text: str) -> float:
    """``--since``: an ISO date (``2026-01-31``) or date and time, as seconds since the epoch."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is not a date; use an ISO date such as 2026-01-31 "
            "(or 2026-01-31T12:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def parse_log(text: str, repo: str = "") -> list[Commit]:
    """Commits from the output of ``git log --name-only -z --format=LOG_FORMAT``."""
    commits: list[Commit] = []
    for record in text.split(_RS):
        if not record.strip("\0\n"):
            continue
        parts = record.split(_US)
        if len(parts) != 6:
            raise ConfigError(f"unexpected git log record: {record[:80]!r}")
        sha, author, _email, when, message, rest = parts
        files = tuple(f for f in rest.lstrip("\0").lstrip("\n").split("\0") if f)
        commits.append(Commit(sha, author, float(when), message.strip(), files, repo))
    return commits


def read_commits(repo: Repo, since: float | None = None) -> list[Commit]:
    """The commits of ``repo`` reachable from HEAD (no merges: their changes are the branch's)."""
    args = ["log", "--no-renames", "--no-merges", "--name-only", "-z", f"--format={LOG_FORMAT}"]
    if not has_commits(repo):
        return []
    commits = parse_log(_git(repo.top, *args), repo.name)
    # By author time, as everything else here: git's --since reads the committer's, which
    # a rebase or `git commit --date` leaves at the moment of rewriting.
    return [c for c in commits if since is None or c.when >= since]


def has_commits(repo: Repo) -> bool:
    """Whether HEAD names a commit (a fresh ``git init`` has none)."""
    done = subprocess.run(
        ["git", "-C", str(repo.top), "rev-parse", "--verify", "-q", "HEAD"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def release_times(repo: Repo) -> tuple[str, list[tuple[float, str]]]:
    """Release points: tags (with their names) if any, else first-parent merges; and which.

    Every release point counts for the whole app: a tag named after one
    service is not told apart (yet).
    """
    if not has_commits(repo):
        return "none", []
    tags = _git(
        repo.top,
        "for-each-ref",
        "refs/tags",
        "--format=%(creatordate:unix)%09%(refname:short)",
    )
    points = [
        (float(when), name)
        for when, _, name in (line.partition("\t") for line in tags.splitlines())
        if when.strip()
    ]
    if points:
        return "tags", sorted(points)
    merges = _git(repo.top, "log", "--merges", "--first-parent", "--format=%at%x09%h")
    points = [
        (float(when), name)
        for when, _, name in (line.partition("\t") for line in merges.splitlines())
        if when.strip()
    ]
    return ("merges", sorted(points)) if points else ("none", [])
