"""The command line as a whole: help with examples, one-line errors, `--debug`, and the
operations commands against a running monolith (`cleave run`), piped at full width."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import typer.main
from typer.testing import CliRunner

from cleave.cli import app
from conftest import SAMPLE, Run, cli, processes_of, wait_until


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the app, sub-groups included: commands added later too."""
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        if hasattr(command, "commands"):  # a group (Typer's own click)
            found.extend(_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


def test_every_command_has_help_with_an_example() -> None:
    paths = _commands(typer.main.get_command(app))
    assert len(paths) >= 20  # run, up, ps, ..., db *, dlq *, contracts *
    runner = CliRunner()
    missing = []
    for path in [(), *paths]:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        # `Example: cleave <the command itself> ...`, on a line of its own
        wanted = re.compile(r"^\s*Example: cleave " + re.escape(" ".join(path)), re.M)
        if not wanted.search(result.output):
            missing.append(" ".join(path) or "cleave")
    assert not missing, f"no 'Example: cleave <command> ...' line in the help of: {missing}"


def test_an_unexpected_error_is_one_line_and_a_traceback_with_debug(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # the state folder is a file: nothing expects that
    args = ("token", SAMPLE, "--sub", "acc-1", "--state-dir", blocker)
    plain = cli(*args, check=False)
    assert plain.returncode == 1
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1, plain.stderr
    assert lines[0].startswith("error: ")
    assert "--debug" in lines[0]
    assert "Traceback" not in plain.stderr
    debug = cli("--debug", *args, check=False)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr


def test_ops_commands_work_on_a_running_monolith(tmp_path: Path) -> None:
    # An earlier `cleave up` left its workers' logs: `cleave logs` must not show them now.
    (tmp_path / "logs").mkdir(parents=True)
    (tmp_path / "logs" / "greeter.0.log").write_text(
        json.dumps({"timestamp": "2020-01-01T00:00:00Z", "event": "from an earlier up"}) + "\n"
    )
    state = tmp_path / "run" / "supervisor.json"
    run = Run(SAMPLE, tmp_path).start()
    try:
        wait_until(state.exists, timeout=30)
        assert json.loads(state.read_text())["placement"] == "monolith"
        assert httpx.post(f"{run.url}/greet", json={"name": "mono"}).status_code == 201
        assert httpx.post(f"{run.url}/fail", json={"how": "crash"}).status_code >= 500

        ps = cli("ps", SAMPLE, "--state-dir", tmp_path).stdout
        rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in ps.splitlines() if "│" in ln]
        assert {r[0] for r in rows if "monolith" in r} == {"greeter", "front", "audit", "gateway"}
        assert max(len(ln) for ln in ps.splitlines()) > 80  # piped: full width, nothing cut
        listed = json.loads(cli("ps", SAMPLE, "--json", "--state-dir", tmp_path).stdout)
        assert {r["status"] for r in listed} == {"ready"}
        version = listed[0]["version"]
        assert version in ps  # whole, not cut to fit 80 columns

        status = json.loads(cli("status", SAMPLE, "--json", "--state-dir", tmp_path).stdout)
        assert "outbox" in status["monolith"]

        table = cli("chaos", "latency", "greeter", "0.2", SAMPLE, "--state-dir", tmp_path).stdout
        assert "monolith" in table
        assert "latency 0.2" in table
        cleared = cli("chaos", "clear", "greeter", SAMPLE, "--json", "--state-dir", tmp_path)
        assert json.loads(cleared.stdout)["faults"] == {"latency": 0, "drop": 0, "fail": 0}
        kill = cli("chaos", "kill", "greeter", SAMPLE, "--state-dir", tmp_path, check=False)
        assert kill.returncode == 1
        assert "cleave up" in kill.stderr
        assert len(kill.stderr.strip().splitlines()) == 1

        logs = wait_until(
            lambda: (
                (out := cli("logs", SAMPLE, "--state-dir", tmp_path).stdout)
                and "method failed" in out
                and out
            ),
            timeout=20,
        )
        assert "from an earlier up" not in logs
        assert "monolith ready" in logs
        assert cli("logs", "greeter", SAMPLE, "--state-dir", tmp_path).returncode == 0
        ghost = cli("logs", SAMPLE, "ghost", "--state-dir", tmp_path, check=False)
        assert ghost.returncode == 2
        assert "has no service 'ghost'" in ghost.stderr

        second = cli("run", SAMPLE, "--port", "0", "--state-dir", tmp_path, check=False)
        assert second.returncode == 1
        assert "already up" in second.stderr

        down = cli("down", SAMPLE, "--state-dir", tmp_path)
        assert "sample: stopped" in down.stdout
        run.proc.wait(timeout=30)
    finally:
        if run.proc.poll() is None:
            run.stop()
    assert run.proc.returncode == 0
    assert not state.exists()
    assert not (tmp_path / "run" / "control-token").exists()
    assert processes_of(tmp_path) == []
    after = cli("down", SAMPLE, "--state-dir", tmp_path).stdout
    assert "was not running" in after


def test_logs_takes_the_app_folder_positionally(tmp_path: Path) -> None:
    nothing = cli("logs", SAMPLE, "--state-dir", tmp_path, check=False)
    assert nothing.returncode == 1
    assert "start the app first" in nothing.stderr
    assert f"cleave run {SAMPLE}" in nothing.stderr


def test_progress_spins_on_a_terminal_only() -> None:
    import io
    import time

    from rich.console import Console

    from cleave._cliutil import progress

    terminal = Console(file=io.StringIO(), force_terminal=True, width=80)
    with progress(terminal, "deploying orders"):
        time.sleep(0.3)
    assert "deploying orders" in terminal.file.getvalue()  # type: ignore[attr-defined]
    piped = Console(file=io.StringIO(), force_terminal=False)
    with progress(piped, "deploying orders"):
        time.sleep(0.3)
    assert piped.file.getvalue() == ""  # type: ignore[attr-defined]


def test_the_app_folder_and_the_service_go_in_either_order() -> None:
    from cleave._cliutil import split_app

    assert split_app(str(SAMPLE), None) == (str(SAMPLE), None)
    assert split_app("greeter", None) == (None, "greeter")
    assert split_app("greeter", str(SAMPLE)) == (str(SAMPLE), "greeter")
    assert split_app(str(SAMPLE), "greeter") == (str(SAMPLE), "greeter")
    assert split_app(".", "greeter") == (".", "greeter")


def test_the_app_folder_may_be_among_dead_letter_ids() -> None:
    from cleave._cliutil import pop_app

    assert pop_app(["a1", str(SAMPLE), "b2"]) == (str(SAMPLE), ["a1", "b2"])
    assert pop_app([str(SAMPLE)]) == (str(SAMPLE), None)
    assert pop_app(["a1"]) == (None, ["a1"])
    assert pop_app(None) == (None, None)
