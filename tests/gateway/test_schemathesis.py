"""The shop's gateway against its own OpenAPI document: schemathesis, every check, both placements.

Schemathesis reads ``/openapi.json`` and runs its four phases (examples,
coverage, fuzzing, and stateful sequences that follow the document's
links) with every check on: no 5xx, every status, header, content type
and body as documented, schema-valid input accepted and invalid input
refused, ``405`` with ``Allow``... Its settings, fixed and derandomized,
are in ``schemathesis.toml`` beside this file, so a developer runs the same
thing by hand (see its first lines).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")


def gateway_headers(state_dir: Path) -> dict[str, str]:
    """Headers every generated request carries: an admin's token from the app's dev issuer.

    An admin reaches every account, so a schema-valid order for any account is
    taken (or refused for a business rule the hooks allow); a customer's token
    would be refused on other accounts' orders, on purpose (tests/shop covers it).
    """
    from cleave.testing import token

    return {"Authorization": f"Bearer {token(state_dir, 'ops', 'admin', audience='shop')}"}


class Served:
    """An app's gateway on a real HTTP server on 127.0.0.1, run by a thread with its own loop."""

    def __init__(self, harness: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self.harness = harness
        self.url = ""
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="served-gateway", daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        if not self._ready.wait(60):
            raise AssertionError("the gateway did not start within 60 s")
        if self.error is not None:
            raise AssertionError(f"the gateway failed to start: {self.error!r}") from self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from cleave.runtime.http import HttpServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.harness() as h:
            server = HttpServer(h.asgi, "127.0.0.1", 0)
            await server.start()
            self.url = server.url
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.stop()


@pytest.fixture(params=["monolith", pytest.param("nats", marks=pytest.mark.nats)])
def shop_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from cleave.config import GatewaySettings, Plan
    from cleave.testing import Harness, NatsHarness
    from shop.app import app

    # No rate limit: the run sends its cases as fast as it can, and each must reach the route.
    plan = Plan(gateway=GatewaySettings(rate=0))
    if request.param == "monolith":
        served = Served(lambda: Harness(app, tmp_path, plan=plan))
    else:
        nats_url = request.getfixturevalue("nats_url")
        served = Served(lambda: NatsHarness(app, nats_url, tmp_path, plan=plan))
    with served:
        yield served.url, tmp_path


def test_the_gateway_keeps_every_promise_of_its_openapi_document(
    shop_url: tuple[str, Path],
) -> None:
    url, state_dir = shop_url
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color"]
    command += ["--config-file", str(CONFIG), "run", f"{url}/openapi.json"]
    for name, value in gateway_headers(state_dir).items():
        command += ["--header", f"{name}: {value}"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = run.stdout[run.stdout.find("SUMMARY") - 40 :] if "SUMMARY" in run.stdout else ""
    print(summary)  # the run's summary, for the record (pytest -s shows it)
    assert run.returncode == 0, f"schemathesis found failures:\n{run.stdout[-30000:]}{run.stderr}"
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts is not None, summary
    assert int(counts[1]) > 0, summary  # cases were run, and all passed
