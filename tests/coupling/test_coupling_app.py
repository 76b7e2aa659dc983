"""The command on apps: the shop's layout and structure, traces, outputs and every error."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from coupling_synth import Knobs, commit_all, history, init_repo, write_app
from typer.testing import CliRunner

from cleave.app import load
from cleave.cli import app as cli_app
from cleave.coupling.layout import SHARED, layout_of
from cleave.coupling.structure import cycles, hubs, topology_of
from cleave.coupling.traffic import DEFAULT_COSTS, edge_traffic, per_call_costs, read_spans
from cleave.errors import ConfigError
from conftest import cli

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"


@pytest.fixture(scope="module")
def shop() -> Any:
    return load(SHOP)


def test_shop_files_map_to_their_services(shop: Any) -> None:
    layout = layout_of(shop, "repo", "examples/shop/")
    owner = lambda path: layout.service_of("repo", path)  # noqa: E731 - a table below
    assert owner("examples/shop/shop/services/orders.py") == "orders"
    assert owner("examples/shop/shop/contracts/billing.py") == "billing"
    assert owner("examples/shop/shop/migrations/inventory/versions/x.py") == "inventory"
    assert owner("examples/shop/shop/app.py") == SHARED
    assert owner("examples/shop/shop/contracts/paging.py") == SHARED
    assert owner("examples/shop/contracts.lock.json") is None  # ignored: generated
    assert owner("src/cleave/app.py") is None  # outside the app
    assert owner("examples/shop/tests/test_orders.py") == "orders"


def test_shop_structure(shop: Any) -> None:
    topo = topology_of(shop)
    assert ("orders", "billing", "call") in topo.edges
    assert topo.declared("orders", "billing")
    assert not topo.declared("catalog", "billing")
    assert cycles(topo) == [["notifications", "orders", "shipping"]]
    assert [h[0] for h in hubs(topo)] == ["orders"]
    # Queries called for their errors (access checks) are not "unused answers".
    assert all(not d.method.startswith("get_") for d in topo.discarded)
    assert {(d.source, d.target, d.method) for d in topo.discarded} >= {
        ("orders", "billing", "refund")
    }


def _span(trace: str, sid: str, parent: str, kind: str, service: str, t0: float, t1: float):
    return {
        "trace_id": trace,
        "span_id": sid,
        "parent_id": parent,
        "name": f"{service} op",
        "kind": kind,
        "service": service,
        "start": t0,
        "end": t1,
        "attributes": {},
    }


def _dashboard_spans(
    requests: int = 3, calls: int = 4, caller: str = "cart", callee: str = "pricing"
) -> list[dict[str, Any]]:
    """Each request: gateway -> ``caller`` server, which calls ``callee`` ``calls`` times."""
    spans = []
    for r in range(requests):
        t, tid = 100.0 * r, f"{r:032x}"
        spans.append(_span(tid, f"g{r:015x}", "", "server", "gateway", t, t + 0.010))
        spans.append(_span(tid, f"c{r:015x}", f"g{r:015x}", "server", caller, t, t + 0.009))
        for k in range(calls):
            s = t + 0.001 + k * 0.002
            cid, sid = f"a{r:07x}{k:08x}", f"b{r:07x}{k:08x}"
            spans.append(_span(tid, cid, f"c{r:015x}", "client", caller, s, s + 0.0015))
            spans.append(_span(tid, sid, cid, "server", callee, s, s + 0.001))
    return spans


def _otlp(spans: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = {"server": 2, "client": 3}
    by_service: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_service.setdefault(s["service"], []).append(
            {
                "traceId": s["trace_id"],
                "spanId": s["span_id"],
                "parentSpanId": s["parent_id"],
                "name": s["name"],
                "kind": kinds[s["kind"]],
                "startTimeUnixNano": str(int(s["start"] * 1e9)),
                "endTimeUnixNano": str(int(s["end"] * 1e9)),
            }
        )
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": name}}]
                },
                "scopeSpans": [{"scope": {"name": "cleave"}, "spans": items}],
            }
            for name, items in by_service.items()
        ]
    }


def test_traffic_from_both_formats(tmp_path: Path) -> None:
    spans = _dashboard_spans()
    (tmp_path / "dash.json").write_text(json.dumps({"summary": None, "spans": spans}))
    (tmp_path / "otlp.json").write_text(json.dumps(_otlp(spans)))
    lines = "\n".join(json.dumps(_otlp([s])) for s in spans)
    (tmp_path / "otlp.jsonl").write_text(lines)
    for name in ("dash.json", "otlp.json", "otlp.jsonl"):
        (edge,) = edge_traffic(read_spans(tmp_path / name))
        assert (edge.source, edge.target, edge.requests, edge.calls) == ("cart", "pricing", 3, 12)
        assert edge.calls_per_request == 4
        assert edge.latency_share == pytest.approx(0.6, abs=0.01)  # 4 x 1.5 ms of 10 ms


def test_traces_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        read_spans(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        read_spans(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"metrics": []}))
    with pytest.raises(ConfigError, match="unknown format"):
        read_spans(tmp_path / "other.json")


def test_per_call_costs_from_the_newest_bench_results(tmp_path: Path) -> None:
    costs = per_call_costs(ROOT / "bench" / "results")
    assert costs.remote_us > 10 * costs.colocated_us
    assert costs.source != DEFAULT_COSTS.source
    old = {"date": "2026-01-01", "remote": {"cleave": {"sequential": {"p50_us": 900.0}}}}
    old["colocated"] = {"tracing_on": {"cleave_ns": 9000.0}}
    new = json.loads(json.dumps(old))
    new["date"] = "2026-02-01"
    new["remote"]["cleave"]["sequential"]["p50_us"] = 500.0
    (tmp_path / "a.json").write_text(json.dumps(new))
    (tmp_path / "b.json").write_text(json.dumps(old))
    (tmp_path / "c.json").write_text(json.dumps({"date": "2027-01-01", "remote": {}}))
    assert per_call_costs(tmp_path).remote_us == 500.0
    assert per_call_costs(tmp_path / "none") == DEFAULT_COSTS


@pytest.fixture(scope="module")
def synth_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    pkg = write_app(root)
    init_repo(root)
    import random

    commit_all(root, history(random.Random(7), pkg, Knobs(planted=10, alone=1, independent=8)))
    return root


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app, ["coupling", *map(str, args)])


def test_traces_give_co_locate_advice_with_the_dividend(synth_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps(_dashboard_spans(requests=5, calls=6)))
    result = _invoke(synth_repo, "--traces", tmp_path / "t.json", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["traffic"][0]["calls_per_request"] == 6
    # cart and pricing always change together: merge says it (and co-locates them) already.
    kinds = {a["kind"] for a in doc["advice"] if set(a["services"]) == {"cart", "pricing"}}
    assert "merge" in kinds
    assert doc["call_costs"]["remote_us"] > doc["call_costs"]["colocated_us"]


def test_a_chatty_edge_that_ships_together_is_co_located(synth_repo: Path, tmp_path: Path) -> None:
    spans = _dashboard_spans(requests=4, calls=5, caller="search", callee="reviews")
    (tmp_path / "t.json").write_text(json.dumps(spans))
    doc = json.loads(_invoke(synth_repo, "--traces", tmp_path / "t.json", "--json").stdout)
    (advice,) = [a for a in doc["advice"] if a["kind"] == "co-locate"]
    assert advice["services"] == ["search", "reviews"]
    assert advice["action"] == '[groups]\nreviews_search = ["reviews", "search"]'
    evidence = "\n".join(advice["evidence"])
    assert "search calls reviews 5.0 times per request" in evidence
    assert "co-location dividend: about" in evidence
    assert doc["call_costs"]["source"] in evidence
    # Without traces: no co-locate.
    plain = json.loads(_invoke(synth_repo, "--json").stdout)
    assert not [a for a in plain["advice"] if a["kind"] == "co-locate"]


def test_terminal_and_html_reports(synth_repo: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = _invoke(synth_repo, "--html", page)
    assert result.exit_code == 0, result.output
    for word in ("services", "change coupling", "advice", "merge", "split", "decouple"):
        assert word in result.stdout
    text = page.read_text()
    assert text.count("<svg") >= 3
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text
    assert "cart_pricing" in text
    for svg in re.findall(r"<svg.*?</svg>", text, re.S):
        ElementTree.fromstring(svg)  # each chart is well-formed SVG
    graph = re.search(r'<svg[^>]*aria-label="service graph".*?</svg>', text, re.S)
    assert graph is not None
    assert graph.group(0).count("<circle") == 7  # one node per service


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope"], "no such directory"),
        (["{synth}", "--since", "yesterday"], "--since 'yesterday' is not a date"),
        (["{synth}", "--repo", "{tmp}"], "is not a git repository"),
        (["{synth}", "--traces", "{tmp}/missing.json"], "cannot read it"),
        (["{synth}", "--traces", "{tmp}/unknown.json"], "unknown format"),
        (["{synth}", "--traces", "{tmp}/empty.json"], "no calls between services"),
        (["{synth}", "--html", "{tmp}/no/such/dir/r.html"], "cannot write it"),
    ],
)
def test_error_paths(synth_repo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "unknown.json").write_text('{"hello": 1}')
    (tmp_path / "empty.json").write_text("[]")
    filled = [a.format(tmp=tmp_path, synth=synth_repo) for a in args]
    result = _invoke(*filled)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_an_app_outside_git_is_a_clear_error(tmp_path: Path) -> None:
    write_app(tmp_path)
    result = _invoke(tmp_path)
    assert result.exit_code == 2
    assert "is not a git repository" in result.stderr


def test_this_repositorys_shop() -> None:
    """The command as docs/coupling.md runs it, on this repository's own history."""
    inside = subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True)
    if inside.returncode != 0:
        pytest.skip("not run from a git checkout")
    result = _invoke(SHOP, "--repo", ROOT, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {s["name"] for s in doc["services"]} == {
        "catalog",
        "inventory",
        "orders",
        "billing",
        "shipping",
        "notifications",
    }
    assert doc["changes"] >= 1


def test_the_command_in_a_subprocess(synth_repo: Path) -> None:
    """`cleave coupling --json` as a user runs it: a process, JSON on standard output."""
    doc = json.loads(cli("coupling", synth_repo, "--json").stdout)
    assert {a["kind"] for a in doc["advice"]} >= {"merge", "split", "decouple"}
    assert not cli("coupling", synth_repo / "nope", check=False).stdout


def test_service_folders_of_a_generated_app(tmp_path: Path) -> None:
    pkg = write_app(tmp_path)
    layout = layout_of(load(tmp_path), "r", "")
    assert layout.service_of("r", f"{pkg}/services/cart/store.py") == "cart"
    assert layout.service_of("r", f"{pkg}/services/cart/deep/er.py") == "cart"
    assert layout.service_of("r", f"{pkg}/contracts/pricing.py") == "pricing"
    assert layout.service_of("r", f"{pkg}/shared/schema.py") == SHARED
    assert layout.service_of("r", f"{pkg}/app.py") == SHARED
    assert layout.service_of("elsewhere", "audit/x.py") == "audit"  # by folder name
    assert layout.service_of("elsewhere", "README") is None


def test_services_sharing_one_module_and_overrides(tmp_path: Path) -> None:
    """A module of several services is nobody's alone; [coupling.paths] says what is whose."""
    pkg = f"onefile{id(tmp_path)}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "app.py").write_text(
        "from typing import Protocol\nimport cleave\n\n"
        "class Ping(cleave.Message):\n    text: str\n\n"
        '@cleave.contract("left", version=1)\nclass Left(Protocol):\n'
        "    async def ping(self, req: Ping) -> Ping: ...\n\n"
        '@cleave.contract("right", version=1)\nclass Right(Protocol):\n'
        "    async def ping(self, req: Ping) -> Ping: ...\n\n"
        "class LeftService(cleave.Service, implements=Left):\n"
        "    async def ping(self, req: Ping) -> Ping:\n        return req\n\n"
        "class RightService(cleave.Service, implements=Right):\n"
        "    async def ping(self, req: Ping) -> Ping:\n        return req\n\n"
        'app = cleave.App("one", services=[LeftService, RightService])\n'
    )
    (tmp_path / "cleave.toml").write_text(
        f'[app]\ntarget = "{pkg}.app:app"\n\n[coupling]\nignore = ["*.md"]\n'
        f'paths = {{ left = ["{pkg}/lefty/"], right = ["*_right.py"] }}\n'
    )
    layout = layout_of(load(tmp_path), "r", "")
    assert layout.service_of("r", f"{pkg}/app.py") == SHARED
    assert layout.service_of("r", f"{pkg}/lefty/a.py") == "left"
    assert layout.service_of("r", f"{pkg}/x/helpers_right.py") == "right"
    assert layout.service_of("r", "NOTES.md") is None


def test_a_bad_coupling_setting_is_a_clear_error(tmp_path: Path) -> None:
    write_app(tmp_path)
    with (tmp_path / "cleave.toml").open("a") as fh:
        fh.write("\n[coupling]\nmin_degree = 130\n")
    result = _invoke(tmp_path)
    assert result.exit_code == 2
    assert "coupling.min_degree" in result.stderr


def test_since_reads_the_author_date(tmp_path: Path) -> None:
    """`git commit --date` sets only the author date; --since must still see it."""
    from coupling_synth import git

    pkg = write_app(tmp_path)
    init_repo(tmp_path)
    for i, date in enumerate(["2020-01-01T12:00:00", "2020-01-02T12:00:00"] * 3):
        with (tmp_path / pkg / "services" / "audit" / "core.py").open("a") as fh:
            fh.write(f"# {i}\n")
        git(tmp_path, "commit", "-qam", f"AUD-{i}", f"--date={date}+0000")
    doc = json.loads(_invoke(tmp_path, "--since", "2020-01-02", "--json").stdout)
    audit = next(s for s in doc["services"] if s["name"] == "audit")
    assert audit["revisions"] == 3


def test_a_repository_without_commits(tmp_path: Path) -> None:
    write_app(tmp_path)
    subprocess.run(["git", "-C", str(tmp_path), "init", "-q"], check=True)
    result = _invoke(tmp_path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["changes"], doc["advice"], doc["delivery"]["source"]) == (0, [], "changes")
