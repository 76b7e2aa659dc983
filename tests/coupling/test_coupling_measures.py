"""code-maat's measures, reproduced; logical changes; reading git logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from coupling_synth import git

from cleave.coupling.changes import group_changes
from cleave.coupling.history import (
    LOG_FORMAT,
    Commit,
    open_repo,
    parse_date,
    parse_log,
    read_commits,
    release_times,
)
from cleave.coupling.measures import Thresholds, clusters, coupling, sum_of_coupling
from cleave.errors import ConfigError


def test_code_maat_published_example() -> None:
    """Two files with 2 and 1 revisions sharing 1: degree 66 (truncated, as code-maat does)."""
    pairs = coupling([frozenset({"A", "B"}), frozenset({"A"})])
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.a, p.b, p.degree, p.shared, p.revisions_a, p.revisions_b) == ("A", "B", 66, 1, 2, 1)
    # With code-maat's default thresholds it is not reported; with 1, 1, 30 it is.
    assert not p.significant(Thresholds())
    assert p.significant(Thresholds(min_revs=1, min_shared=1, min_degree=30))


def test_thresholds_are_code_maats_defaults() -> None:
    changes = [frozenset({"a", "b"})] * 5 + [frozenset({"a"})] * 5
    (p,) = coupling(changes)
    assert (p.degree, p.shared, p.mean_revisions) == (66, 5, 7.5)
    assert p.significant(Thresholds())
    four = coupling([frozenset({"a", "b"})] * 4)[0]
    assert not four.significant(Thresholds())  # 4 shared revisions < 5


def test_sum_of_coupling_counts_the_others_in_each_change() -> None:
    soc = sum_of_coupling([frozenset("abc"), frozenset("ab"), frozenset("c")])
    assert soc == {"a": 3, "b": 3, "c": 2}


def test_clusters_that_change_apart_and_a_hub_file() -> None:
    halves = [frozenset({"x1", "x2"})] * 6 + [frozenset({"y1", "y2"})] * 6
    found, crossing, hub = clusters(halves, Thresholds())
    assert [c.files for c in found] == [("x1", "x2"), ("y1", "y2")]
    assert (crossing, hub) == (0, None)
    wired = [cs | {"main.py"} for cs in halves]  # an entry module changed with every change
    found, crossing, hub = clusters(wired, Thresholds())
    assert [c.files for c in found] == [("x1", "x2"), ("y1", "y2")]
    assert hub == "main.py"
    together = [frozenset({"x1", "y1"})] * 12
    assert len(clusters(together, Thresholds())[0]) == 1


def _c(sha: str, author: str, hours: float, message: str, *files: str) -> Commit:
    return Commit(sha * 40, author, 1_700_000_000 + hours * 3600, message, files)


def test_changes_group_by_ticket_then_by_author_window() -> None:
    commits = [
        _c("a", "ann", 0, "ABC-1 start", "x.py"),
        _c("b", "bo", 30, "ABC-1 finish, a day later, by someone else", "y.py"),
        _c("c", "ann", 40, "no ticket", "z.py"),
        _c("d", "ann", 40.5, "typo", "w.py"),  # within the hour: the same change
        _c("e", "ann", 41.5, "later", "v.py"),  # an hour and a half after the first
    ]
    changes = group_changes(commits, ticket=r"\b[A-Z]+-\d+\b", window_hours=1, max_changeset=30)
    assert [sorted(p for _, p in c.files) for c in changes] == [
        ["x.py", "y.py"],
        ["w.py", "z.py"],
        ["v.py"],
    ]
    assert changes[0].authors == {"ann", "bo"}
    assert changes[0].key == "ticket ABC-1"


def test_large_change_sets_are_left_out() -> None:
    big = _c("a", "ann", 0, "reformat", *(f"f{i}.py" for i in range(31)))
    small = _c("b", "bo", 5, "fix", "f1.py", "f2.py")
    changes = group_changes([big, small], ticket="", window_hours=1, max_changeset=30)
    assert [c.commits for c in changes] == [(small.sha,)]


def test_parse_log_reads_names_with_spaces_and_multiline_messages() -> None:
    text = (
        "\x1e" + "1" * 40 + "\x1fAnn Lee\x1fann@x\x1f1700000000\x1fABC-1 first\n\nbody\n\x1f\x00\n"
        "a.py\x00dir/b c.py\x00"
        "\x1e" + "2" * 40 + "\x1fBo\x1fbo@x\x1f1700003600\x1fsecond\n\x1f\x00\nz.py\x00"
    )
    first, second = parse_log(text, "repo")
    assert first.files == ("a.py", "dir/b c.py")
    assert first.message == "ABC-1 first\n\nbody"
    assert (first.author, first.when, first.repo) == ("Ann Lee", 1_700_000_000.0, "repo")
    assert second.files == ("z.py",)
    assert LOG_FORMAT.startswith("%x1e")


def test_reading_a_real_repository(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    for i, (who, stamp) in enumerate([("ann", "1700000000"), ("bo", "1700086400")]):
        (tmp_path / f"f{i}.txt").write_text("x\n")
        git(tmp_path, "add", "-A")
        env = {
            "GIT_AUTHOR_NAME": who,
            "GIT_AUTHOR_EMAIL": f"{who}@x",
            "GIT_COMMITTER_NAME": who,
            "GIT_COMMITTER_EMAIL": f"{who}@x",
            "GIT_AUTHOR_DATE": f"@{stamp} +0000",
            "GIT_COMMITTER_DATE": f"@{stamp} +0000",
        }
        git(tmp_path, "commit", "-q", "-m", f"commit {i}", env=env)
    git(tmp_path, "tag", "v1")
    repo = open_repo(tmp_path / ".")
    commits = read_commits(repo)
    assert [(c.author, c.files) for c in commits] == [("bo", ("f1.txt",)), ("ann", ("f0.txt",))]
    assert [c.author for c in read_commits(repo, parse_date("2023-11-15"))] == ["bo"]
    source, points = release_times(repo)
    assert source == "tags"
    assert [name for _, name in points] == ["v1"]


def test_not_a_git_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a git repository"):
        open_repo(tmp_path)
    with pytest.raises(ConfigError, match="no such folder"):
        open_repo(tmp_path / "missing")


def test_a_bad_since_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="--since 'last tuesday' is not a date"):
        parse_date("last tuesday")
    assert parse_date("2026-01-31") == parse_date("2026-01-31T00:00:00+00:00")


def test_the_author_window_never_builds_a_change_too_large_to_count() -> None:
    first = _c("a", "ann", 0, "start", *(f"a{i}.py" for i in range(20)))
    second = _c("b", "ann", 0.5, "more", *(f"b{i}.py" for i in range(20)))
    changes = group_changes([first, second], ticket="", window_hours=1, max_changeset=30)
    assert [len(c.files) for c in changes] == [20, 20]


def test_a_table_two_services_declare_is_decouple_advice() -> None:
    from cleave.config import CouplingSettings
    from cleave.coupling.advice import advise
    from cleave.coupling.analysis import analyse
    from cleave.coupling.layout import Layout
    from cleave.coupling.structure import Topology

    topo = Topology(
        services=("a", "b", "c"),
        tables={"a": {"accounts", "x"}, "b": {"accounts"}, "c": {"y"}},
    )
    changes = group_changes(
        [_c(str(i), "ann", 5 * i, "w", f"a/{i}.py") for i in range(3)],
        ticket="",
        window_hours=1,
        max_changeset=30,
    )
    advice = advise(analyse(changes, Layout(services=topo.services), topo, CouplingSettings()))
    (decouple,) = [x for x in advice if x.kind == "decouple"]
    assert decouple.services == ("a", "b")
    assert "accounts" in decouple.evidence[0]


def test_smells_cycles_hubs_and_a_service_every_change_touches() -> None:
    from cleave.config import CouplingSettings
    from cleave.coupling.analysis import analyse
    from cleave.coupling.layout import Layout
    from cleave.coupling.structure import Topology

    topo = Topology(
        services=("a", "b", "c", "d"),
        edges={("a", "b", "call"), ("b", "a", "event"), ("c", "b", "call"), ("b", "d", "call")},
    )
    commits = [_c(str(i), "ann", 5 * i, "w", "core/x.py", f"{'cd'[i % 2]}/y.py") for i in range(10)]
    changes = group_changes(commits, ticket="", window_hours=1, max_changeset=30)
    layout = Layout(services=topo.services, paths={"a": ("core/",)})
    smells = analyse(changes, layout, topo, CouplingSettings()).smells
    assert {(s["kind"], tuple(s["services"])) for s in smells} == {
        ("cycle", ("a", "b")),
        ("hub", ("b",)),
        ("every-change", ("a",)),
    }
