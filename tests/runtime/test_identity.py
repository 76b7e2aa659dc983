"""The caller's identity travels with its calls and its events, in both placements.

A small app of its own: the gateway calls ``front.visit`` as the token's
subject; ``front`` calls ``back.whoami`` (which reports the identity it
sees) and publishes ``Visited``, whose handler in ``back`` records what its
context says: who caused the event, and whom the handler acts for (nobody:
the system).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import httpx
import msgspec
import pytest
import sqlalchemy as sa

import cleave
from cleave.transport.wire import request_decoder


class Ask(cleave.Message):
    pass


class Who(cleave.Message):
    subject: str | None
    scopes: tuple[str, ...] = ()
    #: What the next service saw.
    further: str | None = None


class Visited(cleave.Event):
    by: str


@cleave.contract("back", version=1)
class Back(Protocol):
    @cleave.readonly
    async def whoami(self, req: Ask) -> Who: ...


@cleave.contract("front", version=1, events=[Visited])
class Front(Protocol):
    async def visit(self, req: Ask) -> Who: ...


def _me() -> cleave.Identity | None:
    ctx = cleave.current()
    return None if ctx is None else ctx.identity


class BackService(cleave.Service, implements=Back):
    db = cleave.Database(sa.MetaData())
    handled: ClassVar[list[tuple[cleave.Identity | None, cleave.Identity | None]]] = []

    async def whoami(self, req: Ask) -> Who:
        me = _me()
        return Who(subject=None if me is None else me.subject)

    @cleave.subscribe(Visited)
    async def on_visited(self, event: Visited) -> None:
        ctx = cleave.current()
        assert ctx is not None
        self.handled.append((ctx.identity, ctx.caused_by))


class FrontService(cleave.Service, implements=Front):
    db = cleave.Database(sa.MetaData())
    back = cleave.use(Back)

    async def visit(self, req: Ask) -> Who:
        me = _me()
        further = await self.back.whoami(Ask())
        async with self.db.transaction() as tx:
            tx.publish(Visited(by="whoever the body says"))  # never trusted for identity
        return Who(
            subject=None if me is None else me.subject,
            scopes=() if me is None else me.scopes,
            further=further.subject,
        )


gateway = cleave.Gateway(title="Identity", version="1.0.0")
gateway.post("/visit", Front.visit)
gateway.get("/open", Front.visit, auth="public")
app = cleave.App("identity", services=[FrontService, BackService], gateway=gateway)


@pytest.fixture
def cleave_app() -> cleave.App:
    BackService.handled.clear()
    return app


async def test_the_identity_reaches_every_call_and_the_events_it_causes(placed: Any) -> None:
    transport = httpx.ASGITransport(app=placed.asgi)
    token = placed.token("acc-alice", "orders:write")
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        resp = await http.post("/visit", json={}, headers={"authorization": f"Bearer {token}"})
        anonymous = await http.get("/open")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "subject": "acc-alice",
        "scopes": ["orders:write"],
        "further": "acc-alice",
    }
    # A public route without a token: anonymous (an empty subject), not the system (None).
    assert anonymous.json()["subject"] == ""
    assert anonymous.json()["further"] == ""
    await placed.settle()
    alice = cleave.Identity("acc-alice", ("orders:write",))
    expected = [(None, alice), (None, cleave.Identity(""))]
    assert sorted(BackService.handled, key=repr) == sorted(expected, key=repr)


async def test_calls_of_the_system_carry_no_identity(placed: Any) -> None:
    who = await placed.client(Front).visit(Ask())
    assert (who.subject, who.further) == (None, None)
    await placed.settle()
    assert BackService.handled == [(None, None)]


def test_a_request_from_an_older_peer_without_identity_still_decodes() -> None:
    old = msgspec.msgpack.encode([1e10, "r-1", "gateway", "", {}])
    request = request_decoder(Ask).decode(old)
    assert request.identity is None
    assert request.request_id == "r-1"
