"""The dashboard in a real browser (headless Chromium), on both placements."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleave.testing import token
from conftest import SAMPLE, SHOP, Run, Up, cli, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERVICES = ["gateway", "catalog", "inventory", "orders", "billing", "shipping", "notifications"]
DOCS = Path(__file__).resolve().parents[2] / "docs"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not os.environ.get("CLEAVE_REQUIRE_BROWSER"),
        reason="Chromium is not installed (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def shot(page: Any, tmp: Path, name: str, element: str = "") -> None:
    """Keep a screenshot; with CLEAVE_UPDATE_SCREENSHOTS=1, also the docs' copy."""
    page.screenshot(path=str(tmp / name), full_page=True)
    if os.environ.get("CLEAVE_UPDATE_SCREENSHOTS"):
        target = page.locator(element) if element else page
        target.screenshot(path=str(DOCS / name))


def steady_orders(url: str, state: Path, seconds: float) -> None:
    """Some traffic, so the live numbers have something to show."""
    import time

    end = time.monotonic() + seconds
    accounts = ["acc-alice", "acc-bob", "acc-carol", "acc-poor"]
    i = 0
    while time.monotonic() < end:
        order(url, state, accounts[i % len(accounts)])
        httpx.get(f"{url}/v1/products", timeout=10)
        i += 1


def admin(state: Path) -> dict[str, str]:
    """Headers with a token of an admin, from the dev issuer of the app run on ``state``."""
    return {"authorization": f"Bearer {token(state, 'ops', 'admin', audience='shop')}"}


def order(url: str, state: Path, account: str, sku: str = "CBL-01") -> dict[str, Any]:
    resp = httpx.post(
        f"{url}/v1/orders",
        json={"account_id": account, "items": [{"sku": sku, "qty": 1}]},
        headers=admin(state),
        timeout=30,
    )
    assert resp.status_code in (201, 202), resp.text
    body: dict[str, Any] = resp.json()
    return body


def dashboard_of(run: Run) -> str:
    assert run.proc.stdout is not None
    return wait_until(lambda: _dashboard_line(run), timeout=10)


def _dashboard_line(run: Run) -> str | None:
    line = run.proc.stdout.readline().decode()
    return line.split("dashboard:", 1)[1].strip() if "dashboard:" in line else None


def test_monolith_topology_and_why_an_order_failed(browser: Any, tmp_path: Path) -> None:
    run = Run(SHOP, tmp_path).start()
    try:
        url = dashboard_of(run)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        for name in SERVICES:
            page.wait_for_selector(f"#nodes [data-node='{name}']", timeout=15_000)
        assert "monolith" in page.inner_text("#placement")
        for _ in range(3):
            order(run.url, tmp_path, "acc-alice")
        failed = order(run.url, tmp_path, "acc-poor")
        assert failed["status"] == "cancelled"
        page.wait_for_timeout(2500)  # one refresh of the page's live numbers
        assert page.locator("#processes tbody tr").count() == len(SERVICES)
        page.fill("#search", failed["order_id"])
        page.press("#search", "Enter")
        page.wait_for_selector("#waterfall .main-svg", timeout=15_000)
        errors = page.inner_text("#trace-errors")
        assert "payment declined: insufficient funds" in errors
        assert failed["order_id"] in page.inner_text("#trace-summary")
        shot(page, tmp_path, "dashboard-trace.png", element="#trace-panel")
        _fits_1400_pixels(page)
        for _ in range(3):
            order(run.url, tmp_path, "acc-alice")  # traffic in the window: the edges have labels
        _edges_show_rate_errors_and_p99(page)
    finally:
        run.stop()


def _fits_1400_pixels(page: Any) -> None:
    """No sideways scrolling in a 1400-pixel window; the traces' errors column in view."""
    page.set_viewport_size({"width": 1400, "height": 900})
    page.fill("#search", "")
    page.press("#search", "Enter")
    page.wait_for_selector("#traces td.err:not(:empty)", timeout=15_000)
    widths = page.evaluate(
        """() => ({doc: document.documentElement.scrollWidth,
                   view: document.documentElement.clientWidth,
                   table: document.querySelector("#traces").scrollWidth,
                   panel: document.querySelector("#traces").parentElement.clientWidth,
                   err: document.querySelector("#traces td.err:not(:empty)")
                            .getBoundingClientRect().right})"""
    )
    assert widths["doc"] <= widths["view"], widths
    assert widths["table"] <= widths["panel"], widths  # not cut, not scrolled inside its panel
    assert widths["err"] <= 1400, widths


def _edges_show_rate_errors_and_p99(page: Any) -> None:
    """Each busy call edge's label: its rate, error rate and p99."""
    page.wait_for_function(
        """() => (document.getElementById("topology").layout?.annotations ?? [])
                   .some(a => (a.text || "").includes(" p99 "))""",
        timeout=15_000,
    )
    labels = page.evaluate(
        """() => document.getElementById("topology").layout.annotations
                   .map(a => a.text).filter(t => t)"""
    )
    calls = [t for t in labels if " p99 " in t]
    assert calls, labels
    for text in calls:
        assert re.fullmatch(r"[\d.]+/s · err [\d.]+% · p99 ([\d.]+ms|-)", text), text


@pytest.mark.processes
@pytest.mark.nats
def test_processes_traces_cross_workers_and_a_down_service_shows(
    browser: Any, tmp_path: Path
) -> None:
    up = Up(SHOP, tmp_path).start()
    try:
        state = json.loads((tmp_path / "run" / "supervisor.json").read_text())
        url = state["dashboard_url"]
        placed = order(up.url, tmp_path, "acc-bob")
        assert placed["status"] == "confirmed"

        def found() -> dict[str, Any] | None:
            traces = httpx.get(f"{url}/api/traces", params={"q": placed["order_id"]}).json()
            if not traces:
                return None
            detail = httpx.get(f"{url}/api/traces/{traces[0]['trace_id']}").json()
            names = {(s["service"], s["name"]) for s in detail["spans"]}
            return detail if ("shipping", "handle order_confirmed") in names else None

        detail = wait_until(found, timeout=20)
        services = set(detail["summary"]["services"])
        assert {"gateway", "orders", "billing", "inventory", "shipping"} <= services
        declined = order(up.url, tmp_path, "acc-poor")
        assert declined["status"] == "cancelled"
        declined_trace = wait_until(lambda: _trace_of(url, declined["order_id"]), timeout=20)
        assert {"orders", "billing"} <= _services_in(url, declined_trace)

        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        for name in SERVICES:
            page.wait_for_selector(f"#nodes [data-node='{name}']", timeout=15_000)
        assert "processes" in page.inner_text("#placement")
        steady_orders(up.url, tmp_path, 6.0)
        page.wait_for_timeout(500)
        shot(page, tmp_path, "dashboard.png")

        cli("scale", "billing=0", SHOP, "--state-dir", tmp_path)
        page.wait_for_selector("#nodes [data-node='billing'].down", timeout=15_000)
        resp = httpx.post(
            f"{up.url}/v1/orders",
            json={"account_id": "acc-carol", "items": [{"sku": "CBL-01", "qty": 1}]},
            headers=admin(tmp_path),
            timeout=30,
        )
        assert resp.status_code in (503, 504)
        page.wait_for_timeout(2500)
        shot(page, tmp_path, "dashboard-billing-down.png")
        handled = _handled(url, "billing")
        assert handled > 0  # billing handled OrderCancelled of the declined orders
        cli("scale", "billing=1", SHOP, "--state-dir", tmp_path)
        page.wait_for_selector("#nodes [data-node='billing'].ok", timeout=20_000)
        cli("deploy", "orders", SHOP, "--state-dir", tmp_path)
        # What the workers that went had recorded stays: the trace's spans, the counts.
        assert {"orders", "billing"} <= _services_in(url, declined_trace)
        wait_until(lambda: _handled(url, "billing") >= handled, timeout=10)
        page.wait_for_timeout(2500)
        assert _handled(url, "billing") >= handled
    finally:
        up.stop()


def _trace_of(url: str, order_id: str) -> str | None:
    traces = httpx.get(f"{url}/api/traces", params={"q": order_id}).json()
    return traces[0]["trace_id"] if traces else None


def _services_in(url: str, trace_id: str) -> set[str]:
    detail = httpx.get(f"{url}/api/traces/{trace_id}").json()
    return {s["service"] for s in detail["spans"]}


def _handled(url: str, service: str) -> int:
    """Events ``service`` has handled, by the dashboard's count."""
    streams = httpx.get(f"{url}/api/overview").json()["streams"]
    return sum(s["processed"] for s in streams if s["service"] == service)


def _keep_letter(data_dir: Path, consumer: str, payload: bytes) -> str:
    """A dead letter of audit's, written into its database as its consumer would."""
    import asyncio
    import concurrent.futures

    from cleave.data.database import Database
    from cleave.data.deadletters import record

    async def go() -> str:
        db = Database().bind("audit", f"sqlite:///{data_dir / 'audit.db'}", {})
        await db.start()
        try:
            async with db.transaction() as tx:
                return await record(
                    tx,
                    consumer=consumer,
                    event_id=os.urandom(8).hex(),
                    subject="cleave.evt.greeter.greeted.v1",
                    payload=payload,
                    headers={},
                    error="RuntimeError: audit was down",
                    attempts=5,
                )
        finally:
            await db.stop()

    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def test_dead_letters_are_replayed_and_purged_from_the_page(browser: Any, tmp_path: Path) -> None:
    import sample_app

    from cleave.messages import to_msgpack

    run = Run(SAMPLE, tmp_path).start()
    try:
        url = dashboard_of(run)
        streams = wait_until(lambda: httpx.get(f"{url}/api/overview").json()["streams"])
        [consumer] = [s["name"] for s in streams if s["service"] == "audit"]
        good = _keep_letter(tmp_path / "data", consumer, to_msgpack(sample_app.Greeted(name="ann")))
        bad = _keep_letter(tmp_path / "data", consumer, b"\xc1 not msgpack")
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.on("dialog", lambda dialog: dialog.accept())  # "Purge ...?"
        page.goto(url)
        page.wait_for_selector(f"#letters tr[data-letter='{good}']", timeout=15_000)

        page.click(f"#letters tr[data-letter='{good}'] button[data-act='replay']")
        page.wait_for_selector(f"#letters tr[data-letter='{good}']", state="detached")
        assert f"{good} {consumer}: replayed" in page.inner_text("#letters-status")
        assert httpx.get(f"{run.url}/audit").json() == ["ann"]

        page.click(f"#letters tr[data-letter='{bad}'] button[data-act='purge']")
        page.wait_for_selector(f"#letters tr[data-letter='{bad}']", state="detached")
        assert "purged 1 dead letter(s)" in page.inner_text("#letters-status")
        assert httpx.get(f"{url}/api/dead-letters").json() == []
    finally:
        run.stop()
