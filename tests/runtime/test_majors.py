"""Two majors of a contract served at once, in every placement: calls, retries, events.

The ledger serves v2 and, as an adapter onto it, v1; clients and the gateway call both.
Deposits publish ``Deposited`` v2, and v1 beside it while someone consumes v1.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from prometheus_client.registry import CollectorRegistry
from structlog.testing import capture_logs

import cleave
from cleave.context import CallContext, _current
from cleave.runtime.hostmetrics import HostCollector
from cleave.testing import Harness, NatsHarness
from cleave.transport.base import ConsumerPolicy
from cleave.types import Delivery


class Deposit(cleave.Message):
    account: str
    cents: int


class DepositV2(cleave.Message):
    account: str
    cents: int
    currency: str


class Look(cleave.Message):
    account: str


class Balance(cleave.Message):
    account: str
    cents: int


class Deposited(cleave.Event, topic="deposited"):
    account: str
    cents: int


class DepositedV2(cleave.Event, topic="deposited", version=2):
    account: str
    cents: int
    currency: str


@cleave.deprecated(reason="use ledger v2")
@cleave.contract("ledger", version=1, events=[Deposited])
class LedgerV1(Protocol):
    @cleave.idempotent
    async def deposit(self, req: Deposit) -> Balance: ...

    @cleave.readonly
    async def balance(self, req: Look) -> Balance: ...


@cleave.contract("ledger", version=2, events=[DepositedV2])
class Ledger(Protocol):
    @cleave.idempotent
    async def deposit(self, req: DepositV2) -> Balance: ...

    @cleave.readonly
    async def balance(self, req: Look) -> Balance: ...


class LedgerService(cleave.Service, implements=Ledger, also=[LedgerV1]):
    db = cleave.Database()
    executions = 0

    async def on_start(self) -> None:
        self.cents: dict[str, int] = {}

    async def deposit(self, req: DepositV2) -> Balance:
        async with self.db.transaction() as tx:
            type(self).executions += 1
            self.cents[req.account] = self.cents.get(req.account, 0) + req.cents
            cleave.publish_versions(
                tx,
                DepositedV2(account=req.account, cents=req.cents, currency=req.currency),
                Deposited(account=req.account, cents=req.cents),
            )
        return Balance(account=req.account, cents=self.cents[req.account])

    @cleave.adapts(LedgerV1.deposit)
    async def deposit_v1(self, req: Deposit) -> Balance:
        return await self.deposit(DepositV2(account=req.account, cents=req.cents, currency="EUR"))

    async def balance(self, req: Look) -> Balance:
        return Balance(account=req.account, cents=self.cents.get(req.account, 0))


class Seen(cleave.Message):
    v1: int
    v2: int


class Ask(cleave.Message):
    pass


@cleave.contract("audit", version=1)
class Audit(Protocol):
    async def seen(self, req: Ask) -> Seen: ...


class AuditService(cleave.Service, implements=Audit):
    """Consumes both versions (an old consumer and a moved one, say)."""

    db = cleave.Database()

    async def on_start(self) -> None:
        self.v1 = self.v2 = 0

    async def seen(self, req: Ask) -> Seen:
        return Seen(v1=self.v1, v2=self.v2)

    @cleave.subscribe(Deposited)
    async def on_v1(self, event: Deposited) -> None:
        self.v1 += 1

    @cleave.subscribe(DepositedV2)
    async def on_v2(self, event: DepositedV2) -> None:
        self.v2 += 1


class AuditV2Service(cleave.Service, implements=Audit):
    """Consumes v2 only: nobody in the app reads v1 any more."""

    db = cleave.Database()

    async def on_start(self) -> None:
        self.v2 = 0

    async def seen(self, req: Ask) -> Seen:
        return Seen(v1=0, v2=self.v2)

    @cleave.subscribe(DepositedV2)
    async def on_v2(self, event: DepositedV2) -> None:
        self.v2 += 1


gateway = cleave.Gateway(title="bank", version="1.0.0")
gateway.post("/v1/deposits", LedgerV1.deposit, auth="public")
gateway.post("/v2/deposits", Ledger.deposit, auth="public")
both = cleave.App("bank", services=[LedgerService, AuditService], gateway=gateway)
moved = cleave.App("bank", services=[LedgerService, AuditV2Service])


@pytest.fixture
def cleave_app() -> cleave.App:
    LedgerService.executions = 0
    return both


@pytest.fixture
def bank(cleave_harness: Any) -> Any:
    """The ledger app in each placement (the pytest plugin's harness)."""
    return cleave_harness


def _ledger_host(h: Any) -> Any:
    return h.host if isinstance(h, Harness) else h.hosts["ledger"]


async def _call_as(request_id: str, call: Any) -> Any:
    token = _current.set(CallContext(time.time() + 5, request_id, "teller"))
    try:
        return await call()
    finally:
        _current.reset(token)


async def test_both_majors_answer_with_one_state(bank: Any) -> None:
    old, new = bank.client(LedgerV1), bank.client(Ledger)
    assert await old.deposit(Deposit(account="a", cents=5)) == Balance(account="a", cents=5)
    assert await new.deposit(DepositV2(account="a", cents=7, currency="EUR")) == Balance(
        account="a", cents=12
    )
    # balance did not change between the majors: one method serves both.
    assert (await old.balance(Look(account="a"))).cents == 12
    assert (await new.balance(Look(account="a"))).cents == 12


async def test_a_retry_in_the_new_major_replays_the_first_answer(bank: Any) -> None:
    """A caller deployed onto v2 that retries its v1 predecessor's call does not act twice."""
    first = await _call_as(
        "r-1", lambda: bank.client(LedgerV1).deposit(Deposit(account="b", cents=3))
    )
    again = await _call_as(
        "r-1",
        lambda: bank.client(Ledger).deposit(DepositV2(account="b", cents=3, currency="EUR")),
    )
    assert first == again == Balance(account="b", cents=3)
    assert LedgerService.executions == 1
    with pytest.raises(cleave.Conflict, match="already used for a different request"):
        await _call_as(
            "r-1",
            lambda: bank.client(LedgerV1).deposit(Deposit(account="b", cents=4)),
        )


async def test_calls_of_a_deprecated_major_are_counted_and_logged_once(bank: Any) -> None:
    old = bank.client(LedgerV1, caller="teller")
    with capture_logs() as logs:
        for i in range(3):
            await old.balance(Look(account=f"x{i}"))
        await bank.client(Ledger, caller="teller").balance(Look(account="y"))
    host = _ledger_host(bank)
    assert host.deprecations.counts == {("method", "ledger", 1, "balance", "teller"): 3}
    warned = [e for e in logs if e["event"] == "deprecated method used"]
    assert len(warned) == 1, warned
    assert warned[0]["target"] == "ledger.v1.balance"
    assert warned[0]["reason"] == "use ledger v2"
    registry = CollectorRegistry()
    registry.register(HostCollector(host))
    value = registry.get_sample_value(
        "cleave_deprecated_calls_total",
        {
            "kind": "method",
            "service": "ledger",
            "version": "1",
            "name": "balance",
            "caller": "teller",
        },
    )
    assert value == 3


async def test_the_old_event_version_goes_on_while_it_is_consumed(bank: Any) -> None:
    await bank.client(Ledger).deposit(DepositV2(account="c", cents=1, currency="EUR"))
    await bank.settle()
    assert await bank.client(Audit).seen(Ask()) == Seen(v1=1, v2=1)
    status = await _ledger_host(bank).status()
    subjects = status["events"]["ledger"]
    assert subjects["cleave.evt.ledger.deposited.v1"] == ["audit-on-v1"]
    assert subjects["cleave.evt.ledger.deposited.v2"] == ["audit-on-v2"]
    assert status["majors"]["ledger"] == [2, 1]


@pytest.mark.parametrize("placement", ["monolith", pytest.param("nats", marks=pytest.mark.nats)])
async def test_without_a_consumer_only_the_new_version_is_published(
    request: pytest.FixtureRequest, tmp_path: Path, placement: str
) -> None:
    async def run(h: Any) -> None:
        host = _ledger_host(h)
        await h.client(Ledger).deposit(DepositV2(account="d", cents=1, currency="EUR"))
        await h.settle()
        assert host.relays["ledger"].published == 1  # v2 only
        assert await h.client(Audit).seen(Ask()) == Seen(v1=0, v2=1)

        # A durable consumer of v1, of old code running elsewhere: v1 is published again.
        stream, subject = "CLEAVE_LEDGER", "cleave.evt.ledger.deposited.v1"
        old: list[str] = []

        async def consume(d: Delivery) -> None:
            old.append(d.msg_id)
            await d.ack()

        sub = await host.broker.subscribe(stream, "old-audit", subject, consume, ConsumerPolicy())
        try:
            await host.audiences["ledger"].refresh(host.broker)
            await h.client(Ledger).deposit(DepositV2(account="d", cents=1, currency="EUR"))
            await h.settle()
            assert host.relays["ledger"].published == 3  # v2, then v2 and v1
            assert (await host.status())["events"]["ledger"][subject] == ["old-audit"]
            wait = time.monotonic() + 10
            while not old and time.monotonic() < wait:
                await asyncio.sleep(0.02)
            assert len(old) == 1
        finally:
            await sub.stop()

    if placement == "monolith":
        async with Harness(moved, tmp_path) as h:
            await run(h)
    else:
        async with NatsHarness(moved, request.getfixturevalue("nats_url"), tmp_path) as h:
            await run(h)


async def test_the_gateway_routes_onto_both_majors(bank: Any) -> None:
    transport = httpx.ASGITransport(app=bank.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://bank") as http:
        old = await http.post("/v1/deposits", json={"account": "g", "cents": 2})
        new = await http.post("/v2/deposits", json={"account": "g", "cents": 3, "currency": "EUR"})
        refused = await http.post("/v2/deposits", json={"account": "g", "cents": 3})
        doc = (await http.get("/openapi.json")).json()
    assert old.json() == {"account": "g", "cents": 2}
    assert new.json() == {"account": "g", "cents": 5}
    assert refused.status_code == 422
    assert "currency" in refused.text
    ids = sorted(op["operationId"] for path in doc["paths"].values() for op in path.values())
    assert ids == ["ledger_deposit", "ledger_deposit_v2"]
    assert doc["info"]["version"] == "1.0.0"  # one document for the public API's version
