"""Generated apps and histories with planted coupling, for the coupling tests.

The app is laid out like the shop (a cleave.toml, a package with contracts/
and services/<name>/ folders, a shared/ folder). Its roles:

- ``cart`` calls ``pricing`` and the two always change together: merge;
- ``accounts`` holds two halves (profile, payouts) that change apart, each by
  its own people: split;
- ``search`` and ``reviews`` declare nothing between them but change together
  through ``shared/schema.py``: hidden coupling, decouple;
- ``mailer`` and ``audit`` change on their own: no advice may name them.

:func:`history` builds a history in memory (``Commit`` objects, as
``git log`` would give them), with noise; :func:`commit_all` writes one into a
real git repository.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

from cleave.coupling.history import Commit

SERVICES = ("cart", "pricing", "accounts", "search", "reviews", "mailer", "audit")
CALLS = {"cart": ["pricing"]}
FILES = {
    "cart": ["core.py", "store.py", "api.py"],
    "pricing": ["core.py", "rules.py", "api.py"],
    "accounts": ["profile.py", "avatars.py", "payouts.py", "ledger.py"],
    "search": ["core.py", "index.py"],
    "reviews": ["core.py", "moderation.py"],
    "mailer": ["core.py", "templates.py"],
    "audit": ["core.py", "trail.py"],
}
HALVES = (["profile.py", "avatars.py"], ["payouts.py", "ledger.py"])
SHARED_FILE = "shared/schema.py"
TEAMS = {
    "cart": ["ann", "bo"],
    "pricing": ["ann", "bo"],
    "profile": ["cy", "di"],
    "payouts": ["ed", "flo"],
    "search": ["gus", "hal"],
    "reviews": ["gus", "hal"],
    "mailer": ["ivy", "jo"],
    "audit": ["kai", "lu"],
}
#: What the advice must say, as (kind, services).
PLANTED = {
    ("merge", frozenset({"cart", "pricing"})),
    ("split", frozenset({"accounts"})),
    ("decouple", frozenset({"search", "reviews"})),
}
INDEPENDENT = {"mailer", "audit"}

_counter = itertools.count()


def write_app(root: Path) -> str:
    """Write the app into ``root``; returns its (unique) package name."""
    pkg = f"synthshop{os.getpid()}_{next(_counter)}"
    base = root / pkg
    (base / "contracts").mkdir(parents=True)
    (base / "services").mkdir()
    (base / "shared").mkdir()
    (root / "cleave.toml").write_text(f'[app]\nname = "synth"\ntarget = "{pkg}.app:app"\n')
    for path in (base, base / "contracts", base / "services", base / "shared"):
        (path / "__init__.py").write_text("")
    (base / SHARED_FILE).write_text("# the schema search and reviews both read\n")
    imports, classes = [], []
    for name in SERVICES:
        title = name.capitalize()
        (base / "contracts" / f"{name}.py").write_text(
            textwrap.dedent(
                f'''
                from typing import Protocol

                import cleave


                class Ping{title}(cleave.Message):
                    text: str


                @cleave.contract("{name}", version=1)
                class {title}(Protocol):
                    async def ping(self, req: Ping{title}) -> Ping{title}: ...
                '''
            )
        )
        folder = base / "services" / name
        folder.mkdir()
        uses = "".join(
            f"from {pkg}.contracts.{dep} import {dep.capitalize()}\n" for dep in CALLS.get(name, [])
        )
        clients = "".join(
            f"    {dep} = cleave.use({dep.capitalize()})\n" for dep in CALLS.get(name, [])
        )
        (folder / "__init__.py").write_text(
            f"import cleave\nfrom {pkg}.contracts.{name} import {title}, Ping{title}\n{uses}\n\n"
            f"class {title}Service(cleave.Service, implements={title}):\n{clients}"
            f"    async def ping(self, req: Ping{title}) -> Ping{title}:\n"
            f"        return req\n"
        )
        for file in FILES[name]:
            (folder / file).write_text(f"# {name}: {file}\n")
        imports.append(f"from {pkg}.services.{name} import {title}Service")
        classes.append(f"{title}Service")
    (base / "app.py").write_text(
        "import cleave\n"
        + "\n".join(imports)
        + f'\n\napp = cleave.App("synth", services=[{", ".join(classes)}])\n'
    )
    return pkg


def service_files(pkg: str, name: str, files: list[str]) -> list[str]:
    return [f"{pkg}/services/{name}/{f}" for f in files]


@dataclass
class Knobs:
    """How one generated history looks."""

    planted: int = 12  # changes per planted structure
    alone: int = 3  # changes of each merge partner on its own
    independent: int = 10  # changes of each independent service
    noise: float = 0.15  # extra random changes, as a share of the rest
    multi_commit: float = 0.3  # share of changes made in two commits with a ticket id
    stray_author: float = 0.1  # a change by someone outside the owning team


def history(rng: random.Random, pkg: str, knobs: Knobs, *, repo: str = "") -> list[Commit]:
    """A history with the planted structure, shuffled in time, with noise."""
    changes: list[tuple[str, list[str]]] = []  # (team, files)

    def pick(name: str, files: list[str]) -> list[str]:
        return service_files(pkg, name, rng.sample(files, rng.randint(1, len(files))))

    for _ in range(knobs.planted):
        files = pick("cart", FILES["cart"]) + pick("pricing", FILES["pricing"])
        changes.append(("cart", files))
        changes.append(("profile", pick("accounts", HALVES[0])))
        changes.append(("payouts", pick("accounts", HALVES[1])))
        files = pick("search", FILES["search"]) + pick("reviews", FILES["reviews"])
        changes.append(("search", [*files, f"{pkg}/{SHARED_FILE}"]))
    for _ in range(knobs.alone):
        changes.append(("cart", pick("cart", FILES["cart"])))
        changes.append(("pricing", pick("pricing", FILES["pricing"])))
    for _ in range(knobs.independent):
        changes.append(("mailer", pick("mailer", FILES["mailer"])))
        changes.append(("audit", pick("audit", FILES["audit"])))
    everything = [(n, f) for n in SERVICES for f in FILES[n]]
    for _ in range(int(knobs.noise * len(changes))):
        picked = rng.sample(everything, rng.randint(1, 2))
        team = rng.choice(list(TEAMS))
        changes.append((team, [f"{pkg}/services/{n}/{f}" for n, f in picked]))
    rng.shuffle(changes)
    commits: list[Commit] = []
    when = 1_700_000_000.0
    ticket = itertools.count(100)
    everyone = sorted({a for team in TEAMS.values() for a in team})
    for team, files in changes:
        when += rng.uniform(3, 30) * 3600  # hours apart: the author window never joins two
        author = (
            rng.choice(everyone) if rng.random() < knobs.stray_author else rng.choice(TEAMS[team])
        )
        files = sorted(set(files))
        if len(files) > 1 and rng.random() < knobs.multi_commit:
            # One change in two commits, a day apart, tied by a ticket id.
            key = f"SYN-{next(ticket)}"
            cut = rng.randint(1, len(files) - 1)
            for i, part in enumerate((files[:cut], files[cut:])):
                sha = f"{rng.getrandbits(160):040x}"
                commits.append(
                    Commit(sha, author, when + i * 86400, f"{key} part {i}", tuple(part), repo)
                )
        else:
            sha = f"{rng.getrandbits(160):040x}"
            commits.append(Commit(sha, author, when, "work", tuple(files), repo))
    return commits


def git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return done.stdout


def init_repo(root: Path) -> None:
    """A repository whose first commit holds every file now in ``root``."""
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "setup")
    git(root, "config", "user.email", "setup@example.com")
    git(root, "config", "commit.gpgsign", "false")
    git(root, "add", "-A")
    env = {"GIT_AUTHOR_DATE": "@1690000000 +0000", "GIT_COMMITTER_DATE": "@1690000000 +0000"}
    git(root, "commit", "-q", "-m", "the app", env=env)


def commit_all(root: Path, commits: list[Commit]) -> None:
    """Make each commit for real, as its author at its time, with ``git fast-import``.

    Each commit appends a line to each of its files. One fast-import stream
    makes a hundred commits in a few milliseconds, where ``git commit`` in a
    loop takes seconds on a busy machine.
    """
    contents: dict[str, bytes] = {}
    stream = bytearray()
    for n, c in enumerate(sorted(commits, key=lambda c: c.when)):
        who = f"{c.author} <{c.author}@example.com> {int(c.when)} +0000"
        message = c.message.encode()
        stream += f"commit refs/heads/main\nauthor {who}\ncommitter {who}\n".encode()
        stream += f"data {len(message)}\n".encode() + message + b"\n"
        if n == 0:
            stream += b"from refs/heads/main^0\n"
        for path in c.files:
            if path not in contents:
                current = root / path
                contents[path] = current.read_bytes() if current.exists() else b""
            contents[path] += f"# change {n}\n".encode()
            stream += f"M 100644 inline {path}\ndata {len(contents[path])}\n".encode()
            stream += contents[path] + b"\n"
    subprocess.run(
        ["git", "-C", str(root), "fast-import", "--quiet"], input=bytes(stream), check=True
    )
    git(root, "reset", "-q", "--hard", "main")
