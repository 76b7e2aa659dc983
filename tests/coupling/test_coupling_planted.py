"""The advice finds what was planted: precision and recall over generated histories.

Hundreds of histories are built in memory (``Commit`` objects, as ``git log``
gives them) over one generated app, with noise; a few are committed to real
git repositories and read back through the command, end to end.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from coupling_synth import (
    INDEPENDENT,
    PLANTED,
    Knobs,
    commit_all,
    history,
    init_repo,
    write_app,
)
from typer.testing import CliRunner

from cleave.app import load
from cleave.cli import app as cli_app
from cleave.coupling.advice import advise
from cleave.coupling.analysis import analyse
from cleave.coupling.changes import group_changes
from cleave.coupling.history import Commit
from cleave.coupling.layout import layout_of
from cleave.coupling.structure import topology_of

HISTORIES = 300
KINDS = {"merge", "split", "decouple"}


def _found(advice: list) -> set[tuple[str, frozenset[str]]]:
    return {(a.kind, frozenset(a.services)) for a in advice if a.kind in KINDS}


def test_precision_and_recall_over_generated_histories(tmp_path: Path) -> None:
    pkg = write_app(tmp_path)
    loaded = load(tmp_path)
    layout = layout_of(loaded, "", "")
    topology = topology_of(loaded)
    settings = loaded.plan.coupling
    tp = fp = fn = 0
    named_independent = 0
    for seed in range(HISTORIES):
        rng = random.Random(seed)
        knobs = Knobs(
            planted=rng.randint(8, 20),
            alone=rng.randint(0, 3),
            independent=rng.randint(6, 16),
            noise=rng.uniform(0.0, 0.3),
            multi_commit=rng.uniform(0.0, 0.5),
            stray_author=rng.uniform(0.0, 0.2),
        )
        commits = history(rng, pkg, knobs)
        changes = group_changes(
            commits,
            ticket=settings.ticket,
            window_hours=settings.window_hours,
            max_changeset=settings.max_changeset,
            keep=lambda f: layout.service_of(*f) is not None,
        )
        advice = advise(analyse(changes, layout, topology, settings))
        found = _found(advice)
        tp += len(found & PLANTED)
        fp += len(found - PLANTED)
        fn += len(PLANTED - found)
        named_independent += sum(1 for a in advice if INDEPENDENT & set(a.services))
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    print(
        f"\n{HISTORIES} histories: precision {precision:.3f}, recall {recall:.3f} "
        f"(tp {tp}, fp {fp}, fn {fn}); advice naming an independent service: {named_independent}"
    )
    assert precision >= 0.9
    assert recall >= 0.9
    assert named_independent == 0


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _run(runner: CliRunner, *args: str) -> dict:
    result = runner.invoke(cli_app, ["coupling", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("seed", [1, 2])
def test_real_git_repositories_end_to_end(tmp_path: Path, runner: CliRunner, seed: int) -> None:
    """The planted cases come back through `git log` and the command's --json."""
    pkg = write_app(tmp_path)
    init_repo(tmp_path)
    rng = random.Random(seed)
    commit_all(tmp_path, history(rng, pkg, Knobs(planted=10, alone=2, independent=8)))
    doc = _run(runner, str(tmp_path))
    found = {(a["kind"], frozenset(a["services"])) for a in doc["advice"] if a["kind"] in KINDS}
    assert found >= PLANTED
    assert not [a for a in doc["advice"] if INDEPENDENT & set(a["services"])]
    pair = next(p for p in doc["pairs"] if {p["a"], p["b"]} == {"cart", "pricing"})
    assert pair["degree"] >= 60
    assert pair["shared"] >= 10
    assert set(pair) >= {"a", "b", "degree", "shared", "revisions_a", "revisions_b"}
    split = next(a for a in doc["advice"] if a["kind"] == "split")
    halves = [sorted(Path(f).name for f in c) for c in split["clusters"]]
    assert sorted(halves) == [["avatars.py", "profile.py"], ["ledger.py", "payouts.py"]]
    decouple = next(a for a in doc["advice"] if a["kind"] == "decouple")
    assert any("shared/schema.py" in e for e in decouple["evidence"])
    merge = next(a for a in doc["advice"] if a["kind"] == "merge")
    assert '[groups]\ncart_pricing = ["cart", "pricing"]' in merge["action"]


def test_the_app_in_a_subfolder_and_a_change_over_two_repositories(
    tmp_path: Path, runner: CliRunner
) -> None:
    """A ticket id ties commits of two repositories into one change; paths are app-relative."""
    mono, other = tmp_path / "mono", tmp_path / "mailer"
    app_dir = mono / "apps" / "synth"
    app_dir.mkdir(parents=True)
    other.mkdir()
    pkg = write_app(app_dir)
    init_repo(mono)
    (other / "README").write_text("the mailer, kept in its own repository\n")
    init_repo(other)
    commits = []
    for i in range(6):
        when = 1_700_000_000.0 + i * 86400
        commits.append(
            Commit(
                f"{i:040x}",
                "ann",
                when,
                f"SHOP-{i} audit it",
                (f"apps/synth/{pkg}/services/audit/core.py",),
            )
        )
    commit_all(mono, commits)
    commit_all(
        other,
        [
            Commit(
                f"{i:040x}",
                "bo",
                1_700_000_000.0 + i * 86400 + 7200,
                f"SHOP-{i} mail it",
                ("templates.txt",),
            )
            for i in range(6)
        ],
    )
    doc = _run(runner, str(app_dir), "--repo", str(mono), "--repo", str(other))
    pair = next(p for p in doc["pairs"] if {p["a"], p["b"]} == {"audit", "mailer"})
    # mailer changed once more: its repository's first commit (the app's has too many files).
    assert (pair["shared"], pair["revisions_b"], pair["degree"]) == (6, 7, int(100 * 6 / 6.5))
    assert doc["changes"] == 7  # six tickets, and the mailer repository's first commit
    audit = next(s for s in doc["services"] if s["name"] == "audit")
    assert any(f.startswith(f"{pkg}/services/audit/") for f in audit["files"])


@pytest.fixture(scope="module")
def synth_app(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("app")
    pkg = write_app(root)
    loaded = load(root)
    return pkg, layout_of(loaded, "", ""), topology_of(loaded), loaded.plan.coupling


def _advise(synth_app: tuple, commits: list) -> list:
    _, layout, topology, settings = synth_app
    changes = group_changes(
        commits,
        ticket=settings.ticket,
        window_hours=settings.window_hours,
        max_changeset=settings.max_changeset,
        keep=lambda f: layout.service_of(*f) is not None,
    )
    return advise(analyse(changes, layout, topology, settings))


def test_one_author_does_not_hide_the_planted_cases(synth_app: tuple) -> None:
    """A history written by one person: the planted cases stand, nothing names the others."""
    pkg = synth_app[0]
    commits = history(random.Random(3), pkg, Knobs(planted=12, alone=1, independent=10))
    solo = [dataclasses.replace(c, author="solo") for c in commits]
    advice = _advise(synth_app, solo)
    found = _found(advice)
    assert {
        ("merge", frozenset({"cart", "pricing"})),
        ("decouple", frozenset({"search", "reviews"})),
    } <= found
    # One author for both halves, but no change crosses them: still a split.
    assert ("split", frozenset({"accounts"})) in found
    assert not [a for a in advice if INDEPENDENT & set(a.services)]


def test_keep_the_monolith_when_everything_changes_together(synth_app: tuple) -> None:
    pkg = synth_app[0]
    services = ["cart", "pricing", "search", "reviews", "mailer", "audit"]
    commits = [
        Commit(
            f"{i:040x}",
            ["ann", "bo"][i % 2],
            1_700_000_000.0 + i * 86400,
            "feature",
            tuple(f"{pkg}/services/{s}/core.py" for k, s in enumerate(services) if k != i % 6),
        )
        for i in range(12)
    ]
    advice = _advise(synth_app, commits)
    kinds = [a.kind for a in advice]
    assert "keep-monolith" in kinds
    keep = advice[kinds.index("keep-monolith")]
    assert "2 author(s) over 12 changes" in keep.evidence[0]
    assert "cleave run" in keep.action


def test_a_merge_already_enacted_is_not_advised_again(synth_app: tuple) -> None:
    pkg, layout, topology, settings = synth_app
    commits = history(random.Random(5), pkg, Knobs(planted=12, alone=0, independent=10))
    assert ("merge", frozenset({"cart", "pricing"})) in _found(_advise(synth_app, commits))
    grouped = dataclasses.replace(topology, groups={"checkout": ("cart", "pricing")})
    advice = _advise((pkg, layout, grouped, settings), commits)
    assert not [a for a in advice if a.kind == "merge"]
    # Joining a group that exists: the line names it, with every member.
    partial = dataclasses.replace(topology, groups={"shop": ("cart", "mailer")})
    (merge,) = [a for a in _advise((pkg, layout, partial, settings), commits) if a.kind == "merge"]
    assert 'shop = ["cart", "mailer", "pricing"]' in merge.action
