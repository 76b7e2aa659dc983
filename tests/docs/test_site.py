"""The documentation site builds without a warning, and the tutorial's code works.

The tutorial (docs/tutorial/) is executable: its Python and TOML blocks with a
``title="path"`` are the files of a real app, written page by page into a
fresh folder, and its shell blocks are run there, in order, against the
source tree under test. A block that is not meant to run says so in an HTML
comment on the line before it (invisible on the site)::

    <!-- docs-test: skip -- why -->     not run (the reason is required)
    <!-- docs-test: background -->      a server: started, left running until the
                                        page ends, then stopped with SIGINT
    <!-- docs-test: retry -->           run again (up to RETRY_FOR s) until it succeeds
                                        and prints what the output block below says
    <!-- docs-test: output -->          expected output of the shell block above:
                                        each line must appear in what it printed
    <!-- docs-test: in-process -->      `pytest` of the app's tests: their test
                                        functions are run here, in this process
    <!-- docs-test: in-parent -->       run in the folder above the app's (it makes it)
    <!-- docs-test: files -->           a listing: every path must exist at the end
    <!-- docs-test: needs=FEATURE -->   needs a part of Cleave that may be missing
                                        (see FEATURES): skipped until it exists

Every other block must be run, and the test asserts that each one was. Two
things are changed on the way, so the test never takes a fixed port or the
system's NATS: the gateway's port 8000 becomes a free one (added as
``--port`` to ``cleave run``/``cleave up``), and ``nats://127.0.0.1:4222``
becomes the test's own nats-server. The app's state goes to a temporary
folder (``CLEAVE_STATE_DIR``). ``DOCS_TEST_TIMES=1`` (with ``pytest -s``) prints
how long each command took.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorial"
#: The tutorial's pages, in reading order (the order of the nav in mkdocs.yml).
PAGES = ["index.md", "contracts.md", "services.md", "run.md", "processes.md", "cluster.md"]
#: How long a `retry` block may take to succeed.
RETRY_FOR = 30.0
SHELL = {"sh", "bash", "console", "shell"}
FENCE = re.compile(r"^(?P<ticks>`{3,})\s*(?P<lang>[\w+-]*)\s*(?P<info>.*)$")
MARK = re.compile(r"^<!--\s*docs-test:\s*(?P<marks>.*?)\s*-->\s*$")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')


def _has_command(name: str) -> bool:
    import typer.main

    from cleave.cli import app

    group = typer.main.get_command(app)
    return name in getattr(group, "commands", {})


def _has_cluster() -> bool:
    from cleave.config import NatsSettings

    return "cluster" in NatsSettings.__struct_fields__


#: Parts of Cleave that tutorial blocks may need, and how to tell they exist.
FEATURES: dict[str, Callable[[], bool]] = {
    "cluster": _has_cluster,
    "serve": lambda: _has_command("serve"),
    "gateway": lambda: _has_command("gateway"),
}


@dataclass(eq=False)
class Block:
    page: str
    line: int
    lang: str
    title: str
    body: str
    marks: set[str] = field(default_factory=set)
    needs: str = ""
    reason: str = ""

    def __str__(self) -> str:
        return f"docs/tutorial/{self.page}:{self.line} ({self.lang or 'no language'})"


def parse(page: str) -> list[Block]:
    """The fenced blocks of a tutorial page, with their docs-test marks."""
    lines = (TUTORIAL / page).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == m["ticks"])
        title = TITLE.search(m["info"])
        body = "\n".join(lines[i + 1 : end])
        block = Block(page, start + 1, m["lang"], title["title"] if title else "", body)
        mark = MARK.match(lines[start - 1]) if start else None
        if mark:
            words, _, reason = mark["marks"].partition("--")
            for word in words.split():
                if word.startswith("needs="):
                    block.needs = word.removeprefix("needs=")
                else:
                    block.marks.add(word)
            block.reason = reason.strip()
        blocks.append(block)
        i = end + 1
    return blocks


def test_marks_are_known() -> None:
    """A mistyped mark would silently skip a block: every mark and feature must be known."""
    known = {"skip", "background", "retry", "output", "in-process", "in-parent", "files"}
    blocks = [b for page in PAGES for b in parse(page)]
    assert sorted(p.name for p in TUTORIAL.glob("*.md")) == sorted(PAGES), "update PAGES"
    assert len(blocks) > 20
    for b in blocks:
        assert b.marks <= known, f"{b}: unknown docs-test mark {b.marks - known}"
        assert not b.needs or b.needs in FEATURES, f"{b}: unknown feature {b.needs!r}"
        assert "skip" not in b.marks or b.reason, f"{b}: say why it is skipped (skip -- why)"


# -- the site -------------------------------------------------------------------------------


def test_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a bad nav entry or a docstring griffe cannot
    parse fails the build; the pages and the API reference are there; no web font is used."""
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    for page in (
        "index.html",
        "tutorial/run/index.html",
        "concepts/contracts/index.html",
        "howto/replay-dead-letters/index.html",
        "architecture/index.html",
    ):
        assert (site / page).is_file(), f"{page} missing from the site"
    api = (site / "reference/cleave/index.html").read_text()
    import cleave

    for name in cleave.__all__:
        assert f'id="cleave.{name}"' in api, f"cleave.{name} missing from the API reference"
    testing = (site / "reference/testing/index.html").read_text()
    for name in ("Harness", "NatsHarness", "build", "published", "token"):
        assert f'id="cleave.testing.{name}"' in testing
    for html in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in html.read_text(), f"{html} loads a web font"


# -- the tutorial ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tutorial's app folder; importable as `hello` while the module's tests run."""
    folder = tmp_path_factory.mktemp("tutorial") / "hello"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n == "hello" or n.startswith("hello.")]:
            del sys.modules[name]


def write_files(project: Path, blocks: list[Block]) -> list[Block]:
    """Write the titled blocks that can be used now; return them."""
    written = []
    for b in blocks:
        if b.title and "skip" not in b.marks and (not b.needs or FEATURES[b.needs]()):
            target = project / b.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.body + "\n")
            written.append(b)
    return written


class Reader:
    """Runs a tutorial's blocks in order, the way a reader at a terminal would."""

    def __init__(self, project: Path, state: Path, nats_url: Callable[[], str]) -> None:
        from cleave.runtime.natsd import free_port

        self.project = project
        self.port = free_port()
        self.nats_url = nats_url
        bin_dir = state.parent / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "cleave"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cleave.cli "$@"\n')
        wrapper.chmod(0o755)
        (bin_dir / "python").symlink_to(sys.executable)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT / "src"),
            "CLEAVE_STATE_DIR": str(state),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        self.background: list[tuple[Block, subprocess.Popen[bytes]]] = []
        self.done: set[Block] = set()
        self.pending: list[Block] = []  # blocks that need a part of Cleave not here yet
        self.up = False

    def command(self, line: str) -> str:
        """A line as the test runs it: its own gateway port and NATS server."""
        if re.match(r"^(\S+=\S+\s+)*cleave (run|up)\b", line) and "--port" not in line:
            line += f" --port {self.port}"
        line = re.sub(r"\b8000\b", str(self.port), line)
        if "nats://127.0.0.1:4222" in line:
            line = line.replace("nats://127.0.0.1:4222", self.nats_url())
        return line

    def script(self, block: Block) -> str:
        lines = [ln for ln in block.body.splitlines() if ln.strip() and not ln.startswith("#")]
        return "\n".join(["set -e", *map(self.command, lines)])

    def page(self, blocks: list[Block]) -> None:
        try:
            for i, b in enumerate(blocks):
                self.block(b, blocks[i + 1] if i + 1 < len(blocks) else None)
        finally:
            self.stop_background()

    def block(self, b: Block, following: Block | None) -> None:
        if b in self.done or "skip" in b.marks:
            return
        if b.needs and not FEATURES[b.needs]():
            self.pending.append(b)
            return
        if b.title:
            target = self.project / b.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.body + "\n")
            self.done.add(b)
        elif "files" in b.marks:
            return  # checked at the end, when every file is there
        elif b.lang in SHELL and "in-process" in b.marks:
            run_tests(self.project / "tests")
            self.done.add(b)
        elif b.lang in SHELL and "background" in b.marks:
            self.start(b)
        elif b.lang in SHELL:
            expected = None
            if following is not None and "output" in following.marks:
                expected = [ln.strip() for ln in following.body.splitlines() if ln.strip()]
                self.done.add(following)
            self.run(b, expected)
        else:
            raise AssertionError(f"{b}: no way to run this block; mark it (see this module)")

    def run(self, b: Block, expected: list[str] | None) -> None:
        script = self.script(b)
        if re.search(r"\bcleave up\b", script):
            self.up = True  # before it runs: a half-started app must be stopped too
        started = time.monotonic()
        deadline = started + (RETRY_FOR if "retry" in b.marks else 0)
        while True:
            r = subprocess.run(
                ["bash", "-c", script],
                cwd=self.project.parent if "in-parent" in b.marks else self.project,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            missing = [e for e in expected or [] if e not in r.stdout]
            if r.returncode == 0 and not missing:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{b}: `{script}` exited {r.returncode}"
                    + (f"; its output lacks {missing}" if missing else "")
                    + f"\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
                )
            time.sleep(0.5)
        if os.environ.get("DOCS_TEST_TIMES"):
            print(f"{b}: {time.monotonic() - started:.1f}s")
        if re.search(r"\bcleave down\b", script):
            self.up = False
        self.done.add(b)

    def start(self, b: Block) -> None:
        [line] = [ln for ln in b.body.splitlines() if ln.strip()]
        line = self.command(line)
        proc = subprocess.Popen(
            # `env`: a line may start with VAR=value, which `exec` alone takes for the command.
            ["bash", "-c", f"exec env {line}"],
            cwd=self.project,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.background.append((b, proc))
        words = shlex.split(line)
        if "--port" in words:  # a gateway: wait until it answers
            url = f"http://127.0.0.1:{words[words.index('--port') + 1]}/healthz"
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    raise AssertionError(f"{b}: `{line}` exited {proc.returncode}:\n{out}")
                try:
                    urllib.request.urlopen(url, timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{b}: {url} did not answer in 90 s") from None
                    time.sleep(0.2)
        self.done.add(b)

    def stop_background(self) -> None:
        """Ctrl-C for each server of the page, newest first; each must stop cleanly."""
        problems = []
        while self.background:
            b, proc = self.background.pop()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                problems.append(f"{b}: did not stop within 60 s of SIGINT")
            if proc.returncode not in (0, -signal.SIGINT, 130):
                out = proc.stdout.read().decode() if proc.stdout else ""
                problems.append(f"{b}: exited {proc.returncode} on SIGINT:\n{out}")
        assert not problems, "\n".join(problems)

    def cleanup(self) -> None:
        self.stop_background()
        if self.up:
            subprocess.run(
                [sys.executable, "-m", "cleave.cli", "down"],
                cwd=self.project,
                env=self.env,
                capture_output=True,
                timeout=120,
            )


def run_tests(folder: Path) -> None:
    """What `pytest` would run in ``folder``: each module's test functions, here."""
    ran = 0
    for path in sorted(folder.glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"tutorial_{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, fn in vars(module).items():
            if name.startswith("test_") and callable(fn):
                result = fn()
                if inspect.iscoroutine(result):
                    asyncio.run(result)
                ran += 1
    assert ran, f"no test functions in {folder}"


def test_reader_refuses_what_it_cannot_check(tmp_path: Path) -> None:
    """The rules that keep the tutorial honest fail when broken."""
    project = tmp_path / "app"
    project.mkdir()
    reader = Reader(project, tmp_path / "state", lambda: "")
    with pytest.raises(AssertionError, match="no way to run this block"):
        reader.block(Block("x.md", 1, "python", "", "print('untitled')"), None)
    with pytest.raises(AssertionError, match=r"lacks \['goodbye'\]"):
        reader.run(Block("x.md", 2, "sh", "", "echo hello"), ["goodbye"])
    with pytest.raises(AssertionError, match="exited 3"):
        reader.run(Block("x.md", 3, "sh", "", "true\nexit 3\necho never"), None)
    reader.run(Block("x.md", 4, "sh", "", "# a comment\necho hello"), ["hello"])
    assert reader.command("cleave run") == f"cleave run --port {reader.port}"
    assert reader.command("curl -s localhost:8000/x") == f"curl -s localhost:{reader.port}/x"


@pytest.mark.nats
@pytest.mark.processes
def test_tutorial_runs(project: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Every page in order: its files written, its commands run, its outputs checked."""
    reader = Reader(project, tmp_path / "state", lambda: request.getfixturevalue("nats_url"))
    blocks = {page: parse(page) for page in PAGES}
    try:
        for page in PAGES:
            reader.page(blocks[page])
    finally:
        reader.cleanup()
    every = [b for page in PAGES for b in blocks[page]]
    for listing in (b for b in every if "files" in b.marks):
        for name in listing.body.split():
            assert (project / name).is_file(), f"{listing}: {name} was never made"
        reader.done.add(listing)
    left = [
        str(b)
        for b in every
        if b not in reader.done and b not in reader.pending and "skip" not in b.marks
    ]
    assert not left, f"tutorial blocks that nothing ran: {left}"
    if reader.pending:
        # Shown in pytest's warnings summary, without failing: they wait for their feature.
        warnings.warn(
            f"tutorial blocks pending a newer Cleave: {', '.join(map(str, reader.pending))}",
            stacklevel=1,
        )


@pytest.mark.parametrize("placement", ["monolith", pytest.param("nats", marks=pytest.mark.nats)])
async def test_tutorial_app_in_both_placements(
    project: Path, placement: str, request: pytest.FixtureRequest
) -> None:
    """The tutorial's app, loaded as `cleave` loads it, answers alike in both placements."""
    from cleave.app import load
    from cleave.testing import Harness, NatsHarness

    write_files(project, [b for page in PAGES for b in parse(page) if b.lang == "python"])
    if not (project / "cleave.toml").exists():
        write_files(project, [b for b in parse("run.md") if b.title == "cleave.toml"])
    loaded = load(project, state_dir=project.parent / f"state-{placement}")
    contracts = importlib.import_module("hello.contracts")
    harness: Any = (
        Harness(loaded.app, loaded.state_dir)
        if placement == "monolith"
        else NatsHarness(loaded.app, request.getfixturevalue("nats_url"), loaded.state_dir)
    )
    async with harness as h:
        greeter = h.client(contracts.Greeter)
        assert (await greeter.greet(contracts.Greet(name="Ada"))).text == (
            "Hello, Ada! Visit number 1."
        )
        second = await greeter.greet(contracts.Greet(name="Ada"))
        assert second.text == "Hello, Ada! Visit number 2."
        await greeter.greet(contracts.Greet(name="Grace"))
        await h.settle()
        assert (await greeter.recent(contracts.Recent())).names == ("Grace", "Ada", "Ada")
