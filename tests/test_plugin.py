"""The pytest plugin as a user's suite meets it: its fixtures, and its cost to other suites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE

pytest_plugins = ["pytester"]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(SAMPLE)]))


def test_an_unrelated_suite_does_not_import_cleave(pytester: pytest.Pytester, env: None) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_of_cleave_is_loaded():
            loaded = sorted(m for m in sys.modules if m.startswith("cleave"))
            assert loaded == ["cleave_pytest"]
            assert "sqlalchemy" not in sys.modules
            assert "nats" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "cleave_pytest", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_harness_runs_each_test_in_both_placements(
    pytester: pytest.Pytester, env: None
) -> None:
    (pytester.path / "cleave.toml").write_text((SAMPLE / "cleave.toml").read_text())
    pytester.makepyfile(
        """
        from sample_app import Greet, Greeter
        from cleave.testing import Harness, NatsHarness

        async def test_greet(cleave_harness, cleave_placement):
            kind = Harness if cleave_placement == "monolith" else NatsHarness
            assert isinstance(cleave_harness, kind)
            greeting = await cleave_harness.client(Greeter).greet(Greet(name="ann"))
            assert greeting.text == "hello ann"
        """
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "cleave_pytest",
        "-p",
        "no:cacheprovider",
        "-v",
        "-o",
        "asyncio_mode=auto",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_greet?monolith? PASSED*", "*test_greet?nats? PASSED*"])
    deselected = pytester.runpytest_subprocess(
        "-p",
        "cleave_pytest",
        "-p",
        "no:cacheprovider",
        "-m",
        "not nats",
        "-o",
        "asyncio_mode=auto",
    )
    deselected.assert_outcomes(passed=1, deselected=1)


def test_no_cleave_toml_says_what_to_do(pytester: pytest.Pytester, env: None) -> None:
    pytester.makepyfile(
        """
        def test_app(cleave_app):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "cleave_pytest", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*no cleave.toml in*define a `cleave_app` fixture*"])
    assert result.ret != 0


def test_the_entry_point_is_declared() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"cleave_pytest": "cleave_pytest"}
    assert Path(ROOT / "src" / "cleave_pytest" / "__init__.py").is_file()
