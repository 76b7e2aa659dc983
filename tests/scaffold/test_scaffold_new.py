"""`cleave new` and `cleave add service`: what they write, what they refuse, what they edit."""

from __future__ import annotations

import ast
import json
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cleave
from cleave.cli import app as cli_app
from cleave.scaffold import DEV_TOOLS, new_project
from cleave.scaffold.service import register
from conftest import ROOT, SAMPLE, Run

runner = CliRunner()


def test_a_new_project_has_everything_and_no_placeholder_left(tmp_path: Path) -> None:
    package, files = new_project(tmp_path / "hello")
    assert package == "hello"
    names = {p.relative_to(tmp_path / "hello").as_posix() for p in files}
    assert {
        "pyproject.toml",
        "cleave.toml",
        "README.md",
        ".gitignore",
        "hello/app.py",
        "hello/contracts/greeter.py",
        "hello/contracts/visits.py",
        "hello/services/greeter.py",
        "hello/services/visits.py",
        "tests/test_app.py",
        "tests/test_greeter.py",
    } <= names
    for service in ("greeter", "visits"):
        folder = tmp_path / "hello" / "hello" / "migrations" / service
        assert (folder / "script.py.mako").is_file()
        assert len(list((folder / "versions").glob("*_create_*_tables.py"))) == 1
    for path in files:
        text = path.read_text()
        assert "{{" not in text, path
        if path.suffix == ".py":
            ast.parse(text)  # valid Python
    pyproject = (tmp_path / "hello" / "pyproject.toml").read_text()
    assert f'"cleave=={cleave.__version__}"' in pyproject
    assert 'target = "hello.app:app"' in (tmp_path / "hello" / "cleave.toml").read_text()


def test_the_dev_tools_are_the_versions_cleave_tests_with() -> None:
    import tomllib

    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(DEV_TOOLS) <= set(dev["dev"])


def test_the_name_option_and_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    package, _ = new_project(tmp_path / "empty", "my_app")
    assert package == "my_app"
    assert (tmp_path / "empty" / "my_app" / "app.py").is_file()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("My-App", "not a valid name: use lowercase letters"),
        ("1app", "not a valid name"),
        ("class", "is a Python keyword"),
        ("email", "would shadow a module"),
        ("cleave", "would shadow a module"),
    ],
)
def test_a_bad_name_is_refused_before_anything_is_written(
    tmp_path: Path, name: str, why: str
) -> None:
    result = runner.invoke(cli_app, ["new", str(tmp_path / "p"), "--name", name])
    assert result.exit_code == 2
    assert why in result.output
    assert not (tmp_path / "p").exists()


def test_a_folder_name_that_is_no_package_name_asks_for_one(tmp_path: Path) -> None:
    result = runner.invoke(cli_app, ["new", str(tmp_path / "My Shop")])
    assert result.exit_code == 2
    assert "project name 'My Shop' is not a valid name" in result.output


def test_a_non_empty_folder_or_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = runner.invoke(cli_app, ["new", str(tmp_path / "taken")])
    assert result.exit_code == 2
    assert "already exists and is a non-empty folder" in result.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    result = runner.invoke(cli_app, ["new", str(tmp_path / "file")])
    assert "is a non-empty file" in result.output


def test_cli_new_says_what_to_do_next(tmp_path: Path) -> None:
    result = runner.invoke(cli_app, ["new", str(tmp_path / "hello")])
    assert result.exit_code == 0, result.output
    assert "created hello" in result.output
    assert "pip install -e '.[dev]'" in result.output
    assert "cleave run ." in result.output


def test_add_service_writes_and_registers_it(tmp_path: Path) -> None:
    new_project(tmp_path / "hello")
    root = tmp_path / "hello"
    result = runner.invoke(cli_app, ["add", "service", "order_history", str(root)])
    assert result.exit_code == 0, result.output
    assert "added service order_history" in result.output
    pkg = root / "hello"
    assert (pkg / "contracts" / "order_history.py").is_file()
    assert (pkg / "services" / "order_history.py").is_file()
    assert (pkg / "migrations" / "order_history" / "script.py.mako").is_file()
    assert list((pkg / "migrations" / "order_history" / "versions").glob("*.py"))
    assert (root / "tests" / "test_order_history.py").is_file()
    app_source = (pkg / "app.py").read_text()
    assert "from hello.services.order_history import OrderHistoryService\n" in app_source
    tree = ast.parse(app_source)
    listed = [
        ast.unparse(e)
        for node in ast.walk(tree)
        if isinstance(node, ast.keyword) and node.arg == "services"
        for e in node.value.elts  # type: ignore[attr-defined]
    ]
    assert listed == ["GreeterService", "VisitsService", "OrderHistoryService"]


def test_add_service_refuses_a_taken_or_bad_name(tmp_path: Path) -> None:
    new_project(tmp_path / "hello")
    root = tmp_path / "hello"
    before = (root / "hello" / "app.py").read_text()
    taken = runner.invoke(cli_app, ["add", "service", "visits", str(root)])
    assert taken.exit_code == 2
    assert "a service named 'visits' exists already" in taken.output
    bad = runner.invoke(cli_app, ["add", "service", "Orders", str(root)])
    assert bad.exit_code == 2
    assert "service name 'Orders' is not a valid name" in bad.output
    (root / "hello" / "contracts" / "misc.py").write_text('@cleave.contract("billing", version=1)')
    declared = runner.invoke(cli_app, ["add", "service", "billing", str(root)])
    assert "declares a contract named 'billing'" in declared.output
    assert (root / "hello" / "app.py").read_text() == before


def test_add_service_refuses_another_layout_and_says_why() -> None:
    result = runner.invoke(cli_app, ["add", "service", "orders", str(SAMPLE)])
    assert result.exit_code == 2
    assert "needs the layout `cleave new` makes" in result.output
    assert "'sample_app:app'" in result.output


def test_an_app_module_it_cannot_edit_gets_instructions(tmp_path: Path) -> None:
    new_project(tmp_path / "hello")
    root = tmp_path / "hello"
    app_py = root / "hello" / "app.py"
    app_py.write_text(
        app_py.read_text()
        .replace(
            "services=[\n        GreeterService,\n        VisitsService,\n    ]",
            "services=SERVICES",
        )
        .replace(
            "app = cleave.App(", "SERVICES = [GreeterService, VisitsService]\napp = cleave.App("
        )
    )
    result = runner.invoke(cli_app, ["add", "service", "orders", str(root)])
    assert result.exit_code == 0, result.output
    assert "add it to the app by hand" in result.output
    assert "from hello.services.orders import OrdersService" in result.output
    assert (root / "hello" / "services" / "orders.py").is_file()


def test_register_keeps_the_rest_of_the_module() -> None:
    source = (
        "from __future__ import annotations\n\n"
        "import cleave\n\n"
        "from shop.services.a import AService\n"
        "from shop.services.c import CService\n\n"
        "app = cleave.App('shop', services=[AService, CService], gateway=None)  # one line\n"
    )
    edited = register(source, "from shop.services.b import BService", "BService")
    assert edited == (
        "from __future__ import annotations\n\n"
        "import cleave\n\n"
        "from shop.services.a import AService\n"
        "from shop.services.b import BService\n"
        "from shop.services.c import CService\n\n"
        "app = cleave.App('shop', services=[\n"
        "    AService,\n"
        "    CService,\n"
        "    BService,\n"
        "], gateway=None)  # one line\n"
    )
    with pytest.raises(ValueError, match=r"several cleave\.App"):
        register(source + source.splitlines()[-1] + "\n", "from shop.x import X", "X")


@pytest.mark.processes
def test_cleave_run_serves_a_new_project(tmp_path: Path) -> None:
    new_project(tmp_path / "hello")
    served = Run(tmp_path / "hello", tmp_path / "state").start()
    try:
        with urllib.request.urlopen(served.url + "/hello/Ada", timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read()) == {"text": "Hello, Ada!", "visits": 1}
        with urllib.request.urlopen(served.url + "/hello/Ada", timeout=10) as resp:
            assert json.loads(resp.read())["visits"] == 2
    finally:
        served.stop()
    assert served.proc.returncode == 0
