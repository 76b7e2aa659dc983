"""A small app for Cleave's own tests: every feature, nothing else.

- ``greeter``: answers, fails on request in every way, sleeps, counts
  (idempotently, in its database) and publishes ``Greeted``.
- ``front``: calls greeter (nested calls, deadlines, request ids).
- ``audit``: consumes ``Greeted`` into its database; can be told to fail.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, ClassVar, Literal, Protocol

import msgspec
import sqlalchemy as sa

import cleave


class Greet(cleave.Message):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    times: Annotated[int, msgspec.Meta(ge=1, le=3)] = 1


class Greeting(cleave.Message):
    text: str
    request_id: str = ""
    caller: str = ""
    deadline_left: float = 0.0


class Fail(cleave.Message):
    how: Literal["not_found", "invalid", "conflict", "teapot", "crash", "wrong_type", "nested"]


class Sleep(cleave.Message):
    seconds: float


class Add(cleave.Message):
    key: str
    amount: int


class Total(cleave.Message):
    key: str
    total: int
    calls: int


class Wobble(cleave.Message):
    key: str
    fail_times: int = 0


class Greeted(cleave.Event):
    name: str


class Teapot(cleave.ServiceError):
    """Declared by the greeter contract: crosses the wire typed."""

    http_status = 418


class Undeclared(cleave.ServiceError):
    """Not declared by any contract: a caller sees RemoteError."""


@cleave.contract("greeter", version=1, events=[Greeted], errors=[Teapot])
class Greeter(Protocol):
    """Says hello."""

    async def greet(self, req: Greet) -> Greeting:
        """Greet someone and publish Greeted."""
        ...

    async def fail(self, req: Fail) -> Greeting: ...

    async def sleep(self, req: Sleep) -> Greeting: ...

    @cleave.idempotent
    async def add(self, req: Add) -> Total: ...

    @cleave.readonly
    async def wobble(self, req: Wobble) -> Greeting:
        """Fails (a crash) the first `fail_times` calls per key, then answers."""
        ...

    async def jolt(self, req: Wobble) -> Greeting:
        """Like wobble, but not safe to retry."""
        ...


class Hello(cleave.Message):
    name: str
    timeout: float = 0.0


@cleave.contract("front", version=1)
class Front(Protocol):
    """Calls the greeter."""

    async def hello(self, req: Hello) -> Greeting: ...

    async def twice(self, req: Hello) -> Greeting: ...


class Names(cleave.Message):
    pass


class NameList(cleave.Message):
    names: tuple[str, ...]


class SetFailures(cleave.Message):
    count: int


@cleave.contract("audit", version=1)
class Audit(Protocol):
    """Remembers who was greeted."""

    @cleave.readonly
    async def names(self, req: Names) -> NameList: ...

    async def set_failures(self, req: SetFailures) -> NameList: ...


greeter_meta = sa.MetaData()
totals = sa.Table(
    "totals",
    greeter_meta,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("calls", sa.Integer, nullable=False),
)


class GreeterService(cleave.Service, implements=Greeter):
    db = cleave.Database(greeter_meta)
    #: How many times ``add`` really ran (not replayed), across calls.
    executions = 0
    #: Calls seen per wobble/jolt key.
    seen: ClassVar[dict[str, int]] = {}

    async def wobble(self, req: Wobble) -> Greeting:
        seen = self.seen[req.key] = self.seen.get(req.key, 0) + 1
        if seen <= req.fail_times:
            raise RuntimeError(f"wobble {req.key} failed (call {seen})")
        return Greeting(text=f"steady after {seen}")

    async def jolt(self, req: Wobble) -> Greeting:
        return await self.wobble(req)

    async def greet(self, req: Greet) -> Greeting:
        ctx = cleave.current()
        async with self.db.transaction() as tx:
            for _ in range(req.times):
                tx.publish(Greeted(name=req.name))
        return Greeting(
            text=f"hello {req.name}",
            request_id=ctx.request_id if ctx else "",
            caller=ctx.caller if ctx else "",
            deadline_left=cleave.context.remaining() or 0.0,
        )

    async def fail(self, req: Fail) -> Greeting:
        if req.how == "not_found":
            raise cleave.NotFound("no such greeting")
        if req.how == "invalid":
            raise cleave.InvalidArgument("bad name")
        if req.how == "conflict":
            raise cleave.Conflict("already greeted")
        if req.how == "teapot":
            raise Teapot("I am a teapot")
        if req.how == "wrong_type":
            return "not a message"  # type: ignore[return-value]
        if req.how == "nested":
            raise Undeclared("not on the allow-list")
        raise KeyError("secret-internal-detail")

    async def sleep(self, req: Sleep) -> Greeting:
        await asyncio.sleep(req.seconds)
        return Greeting(text=f"slept {req.seconds}")

    async def add(self, req: Add) -> Total:
        type(self).executions += 1
        async with self.db.transaction() as tx:
            row = (await tx.execute(sa.select(totals).where(totals.c.key == req.key))).first()
            if row is None:
                await tx.execute(totals.insert().values(key=req.key, total=req.amount, calls=1))
                total, calls = req.amount, 1
            else:
                total, calls = row.total + req.amount, row.calls + 1
                await tx.execute(
                    totals.update().where(totals.c.key == req.key).values(total=total, calls=calls)
                )
        if req.amount < 0:
            raise cleave.InvalidArgument("negative amounts are refused (after the update!)")
        return Total(key=req.key, total=total, calls=calls)


class GreeterFallback:
    """Answers greet when the greeter cannot be reached."""

    async def greet(self, req: Greet) -> Greeting:
        return Greeting(text=f"hello {req.name} (from the fallback)")


class FrontService(cleave.Service, implements=Front):
    greeter = cleave.use(Greeter, fallback=GreeterFallback())

    async def hello(self, req: Hello) -> Greeting:
        if req.timeout:
            with cleave.timeout(req.timeout):
                return await self.greeter.greet(Greet(name=req.name))
        return await self.greeter.greet(Greet(name=req.name))

    async def twice(self, req: Hello) -> Greeting:
        first = await self.greeter.greet(Greet(name=req.name))
        second = await self.greeter.greet(Greet(name=req.name))
        return Greeting(text=f"{first.request_id} {second.request_id}")


audit_meta = sa.MetaData()
seen = sa.Table(
    "seen",
    audit_meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
)


class AuditService(cleave.Service, implements=Audit):
    db = cleave.Database(audit_meta)
    failures_left = 0

    async def names(self, req: Names) -> NameList:
        async with self.db.read() as tx:
            rows = (await tx.execute(sa.select(seen.c.name).order_by(seen.c.id))).all()
        return NameList(names=tuple(r.name for r in rows))

    async def set_failures(self, req: SetFailures) -> NameList:
        type(self).failures_left = req.count
        return await self.names(Names())

    @cleave.subscribe(Greeted)
    async def on_greeted(self, event: Greeted) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(seen.insert().values(name=event.name))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            raise RuntimeError("audit failed on purpose (after writing: must roll back)")


# Public routes: the sample app tests the gateway's mapping and the runtime; who may call
# what is tested on the shop (tests/gateway/test_auth.py, tests/shop/test_authorization.py).
gateway = cleave.Gateway(title="Sample", version="1.2.3")
gateway.post("/greet", Greeter.greet, status=201, auth="public")
gateway.get("/greet/{name}", Greeter.greet, auth="public")
gateway.post("/fail", Greeter.fail, auth="public")
gateway.post("/sleep", Greeter.sleep, auth="public")
gateway.post("/add", Greeter.add, idempotency_key=True, auth="public")
gateway.get("/hello", Front.hello, auth="public")
gateway.get("/audit", Audit.names, unwrap="names", auth="public")

app = cleave.App("sample", services=[GreeterService, FrontService, AuditService], gateway=gateway)
